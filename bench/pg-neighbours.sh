#!/usr/bin/env bash
# PostgreSQL manners (issue 13): what other sessions on the same database
# cost swarmd. For each neighbour, a fresh database and a fresh swarmd, then
# echo at 100 clients for DURATION seconds (default 30):
#   none       nothing else;
#   idle-tx    a session that opened a transaction, read `tasks` and sits
#              idle in it for the whole run (it holds back vacuum);
#   rr-readers two sessions running REPEATABLE READ transactions back to
#              back, each reading `tasks` and holding its snapshot for 1 s.
# Reported: throughput and p99 of the acknowledgement, and the dead row
# versions left in `tasks` at the end (what vacuum could not remove).
# Writes bench/results/pg-neighbours.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p swarmd
bin=target/release/swarmd
duration=${DURATION:-30}
pg_admin=${SWARMD_BENCH_PG_URL:-${SWARMD_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}}
url="${pg_admin%/*}/swarmd_neighbours"
port=${SWARMD_BENCH_PORT:-18971}
dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    psql -q "$pg_admin" -c "DROP DATABASE IF EXISTS swarmd_neighbours WITH (FORCE)" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
for neighbour in none idle-tx rr-readers; do
    echo "== $neighbour" >&2
    psql -q "$pg_admin" -c "DROP DATABASE IF EXISTS swarmd_neighbours WITH (FORCE)" -c "CREATE DATABASE swarmd_neighbours"
    "$bin" serve --listen "127.0.0.1:$port" --database-url "$url" > "$dir/serve-$neighbour.log" 2>&1 &
    pids=($!)
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" > /dev/null && break; sleep 0.1; done
    case "$neighbour" in
        idle-tx)
            (echo "BEGIN; SELECT txid_current(); SELECT count(*) FROM tasks;"; sleep $((duration + 30))) |
                psql -q "$url" > /dev/null &
            pids+=($!) ;;
        rr-readers)
            for _ in 1 2; do
                (while true; do
                    psql -q "$url" -c "BEGIN ISOLATION LEVEL REPEATABLE READ" \
                        -c "SELECT count(*) FROM tasks" -c "SELECT pg_sleep(1)" -c "COMMIT" > /dev/null 2>&1
                done) &
                pids+=($!)
            done ;;
    esac
    sleep 1
    "$bin" bench --name "neighbours-$neighbour" --server "http://127.0.0.1:$port" --type echo \
        --args '{"n":1}' --concurrency 100 --warmup 2s --duration "${duration}s" --out "$dir" --quiet > /dev/null 2>&1
    psql -qtA "$url" -c "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'tasks'" > "$dir/dead-$neighbour"
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
done
mkdir -p bench/results
python3 - "$dir" <<'PY' > bench/results/pg-neighbours.md
import json, sys
d = sys.argv[1]
print("| neighbour | acks/s | p50 ms | p99 ms | dead row versions in `tasks` at the end |")
print("|---|---|---|---|---|")
for n in ("none", "idle-tx", "rr-readers"):
    s = json.load(open(f"{d}/neighbours-{n}.json"))["steps"][0]
    dead = open(f"{d}/dead-{n}").read().strip() or "0"
    print(f"| {n} | {s['throughput']:,.0f} | {s['submit']['p50']:.1f} | {s['submit']['p99']:.1f} | {int(dead):,} |")
PY
cat bench/results/pg-neighbours.md
