#!/usr/bin/env bash
# Tasks stored per second by batch size (issue 17, part 3): 1 (the single
# POST /api/tasks), 10, 100 and 1,000 echo tasks per POST /api/tasks/batch,
# on SQLite and on PostgreSQL, in one run. A fresh swarmd per step
# (bench/scenarios/configs/batch.toml: a deep queue, no shedding, so every
# task is stored); bench/batch.py drives CONNS keep-alive connections in a
# closed loop and counts the items answered 202. The generator is Python:
# at batch size 1 it is the bottleneck (see the generator CPU column), which
# is exactly what batching removes.
# Writes bench/results/batch.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release/swarmd}
sizes=${SIZES:-1 10 100 1000}
conns=${CONNS:-8}
seconds=${SECONDS_PER_STEP:-10}
pg=${SWARMD_BENCH_PG_URL:-${SWARMD_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}}
port=18951
dir=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

for db in sqlite postgres; do
    for size in $sizes; do
        if [ "$db" = sqlite ]; then
            url="sqlite://$dir/b-$size.db"
        else
            name="swarmd_batch_${size}_$$_$RANDOM"
            psql "$pg" -qc "CREATE DATABASE $name" > /dev/null
            url="${pg%/*}/$name"
        fi
        SWARMD_DATABASE_URL="$url" "$bin" serve --config bench/scenarios/configs/batch.toml \
            --listen "127.0.0.1:$port" > "$dir/serve.log" 2>&1 &
        pid=$!
        for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" > /dev/null && break; sleep 0.1; done
        cpu0=$(awk '{print $14+$15}' /proc/$pid/stat)
        t0=$(date +%s.%N)
        /usr/bin/time -o "$dir/time" -f '%U %S' \
            python3 bench/batch.py 127.0.0.1 "$port" "$size" "$conns" "$seconds" > "$dir/line"
        cpu1=$(awk '{print $14+$15}' /proc/$pid/stat)
        t1=$(date +%s.%N)
        kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
        [ "$db" = postgres ] && psql "$pg" -qc "DROP DATABASE $name WITH (FORCE)" > /dev/null
        python3 - "$db" "$(cat "$dir/line")" "$cpu0" "$cpu1" "$(getconf CLK_TCK)" "$t0" "$t1" "$(cat "$dir/time")" \
            >> "$dir/rows.jsonl" <<'PY'
import json, sys
db, line, c0, c1, tck, t0, t1, gen = sys.argv[1:9]
d = json.loads(line)
wall = float(t1) - float(t0)
u, s = gen.split()
d.update(db=db, server_cores=(float(c1) - float(c0)) / float(tck) / wall,
         generator_cores=(float(u) + float(s)) / wall)
print(json.dumps(d))
PY
        tail -n1 "$dir/rows.jsonl" >&2
    done
done

python3 - "$dir/rows.jsonl" "$conns" "$seconds" "$(git rev-parse --short HEAD)" \
    "$(nproc) × $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" "$(date -u +%Y-%m-%dT%H:%MZ)" \
    > bench/results/batch.md <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
conns, seconds, commit, machine, when = sys.argv[2:7]
print("# Batch submit: tasks stored per second by batch size (issue 17)")
print()
print(f"`bench/batch.sh` (CONNS={conns}, {seconds} s per step after 1 s of warm-up, a fresh swarmd per step); "
      f"commit `{commit}`; {machine}; {when}.")
print()
print("| database | batch size | requests/s | tasks stored/s | refused | request p50 / p99 ms | swarmd cores | generator cores |")
print("|---|---|---|---|---|---|---|---|")
for d in rows:
    print(f"| {d['db']} | {d['size']:,} | {d['requests_per_s']:,.0f} | **{d['stored_per_s']:,.0f}** | {d['refused']} "
          f"| {d['p50_ms']:.1f} / {d['p99_ms']:.1f} | {d['server_cores']:.2f} | {d['generator_cores']:.2f} |")
PY
cat bench/results/batch.md
