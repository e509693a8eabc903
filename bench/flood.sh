#!/usr/bin/env bash
# Completions before admissions (issue 13): wrk floods a default SQLite
# server with echo submissions at 100, 1,000 and 10,000 connections for
# DURATION seconds (default 6). For each run, on a fresh server:
#   - accepted and refused answers, and wrk's latency percentiles (at high
#     connection counts nearly all answers are refusals, so they are the
#     refusals' latency);
#   - goodput: tasks that *finished* during the load (`succeeded` in
#     /api/status the moment wrk ends, over DURATION);
#   - the backlog left when the load stopped and how long it took to drain.
# With OLD=path/to/an/older/swarmd, each step runs that binary too, right
# after this one, for a side-by-side table. ROUNDS (default 3) alternates
# the binaries; the table shows medians. Writes bench/results/flood.md.
#
#   bench/flood.sh                         # this build
#   OLD=/tmp/old/swarmd bench/flood.sh     # side by side
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "wrk is needed (Debian: apt-get install wrk)" >&2; exit 1; }
cargo build --release -q -p swarmd
new=target/release/swarmd
old=${OLD:-}
rounds=${ROUNDS:-3}
duration=${DURATION:-6}
conns=${CONNS:-"100 1000 10000"}
# 10,000 connections need as many descriptors on each side.
ulimit -n "$(ulimit -Hn)"
dir=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
port=${SWARMD_BENCH_PORT:-18941}
status_field() { # $1 = field of the echo pool
    curl -s "http://127.0.0.1:$port/api/status" |
        python3 -c "import json,sys; p=[p for p in json.load(sys.stdin)['pools'] if p['name']=='echo'][0]; print(p['$1'])"
}
run() { # $1 = label, $2 = binary, $3 = connections, $4 = round
    local out="$dir/$1-$3-$4"
    rm -f "$dir/db.sqlite"*
    "$2" serve --listen "127.0.0.1:$port" --database-url "sqlite://$dir/db.sqlite" > "$out.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" > /dev/null && break; sleep 0.1; done
    wrk -t2 -c"$3" -d"${duration}s" --timeout 10s -s bench/flood.lua "http://127.0.0.1:$port/api/tasks" > "$out.wrk" 2>&1 || true
    local done_at_end
    done_at_end=$(status_field succeeded)
    # The server's own handling time of refused submissions (from the
    # moment the handler runs, so without the wait for a worker thread that
    # a closed loop of thousands of connections adds): their histogram.
    curl -s "http://127.0.0.1:$port/metrics" | grep '^swarmd_http_request_duration_seconds_bucket' |
        grep 'route="/api/tasks"' | grep 'method="POST"' | grep 'status="503"' > "$out.hist" || true
    local t0 left
    t0=$(date +%s.%N)
    left=$(( $(status_field queued) + $(status_field running) ))
    echo "$left" > "$out.left"
    for _ in $(seq 600); do
        [ $(( $(status_field queued) + $(status_field running) )) -eq 0 ] && break
        sleep 0.1
    done
    python3 -c "import time; print(f'{time.time() - $t0:.1f}')" > "$out.drain"
    echo "$done_at_end" > "$out.done"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    pid=
}
for round in $(seq "$rounds"); do
    for c in $conns; do
        echo "== round $round, $c connections" >&2
        run new "$new" "$c" "$round"
        [ -n "$old" ] && run old "$old" "$c" "$round"
    done
done
mkdir -p bench/results
python3 - "$dir" "$rounds" "$duration" "$conns" "${old:+old}" > bench/results/flood.md <<'PY'
import statistics, sys
d, rounds, duration, conns, has_old = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4].split(), sys.argv[5] == "old"
labels = ["new"] + (["old"] if has_old else [])
def read(label, c, r):
    base = f"{d}/{label}-{c}-{r}"
    st, lat, err = {}, (0, 0, 0), (0, 0, 0)
    for line in open(base + ".wrk"):
        p = line.split()
        if p[:1] == ["status"]:
            st[int(p[1])] = int(p[2])
        elif p[:1] == ["latency"]:
            lat = tuple(float(x) for x in p[1:4])
        elif p[:1] == ["errors"]:
            err = tuple(int(x) for x in p[1:4])
    acc = sum(v for k, v in st.items() if k < 300)
    ref = sum(v for k, v in st.items() if k in (429, 503))
    other = sum(v for k, v in st.items() if k >= 300 and k not in (429, 503))
    done = int(open(base + ".done").read())
    buckets = []
    for line in open(base + ".hist"):
        le = line.split('le="')[1].split('"')[0]
        buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    buckets.sort()
    def q(p):
        total = buckets[-1][1] if buckets else 0
        for le, n in buckets:
            if total and n >= p * total:
                return le * 1000
        return None
    return dict(acc=acc, ref=ref, other=other, lat=lat, err=sum(err), goodput=done / duration,
                left=int(open(base + ".left").read()), drain=float(open(base + ".drain").read()),
                handled=(q(0.5), q(0.99)))
med = lambda xs: statistics.median(xs)
def fmt(xs):
    xs = [x for x in xs if x is not None]
    return f"{med(xs):g}" if xs else "–"
print("| connections | build | accepted/s | refused/s | goodput during the load (finished/s) | p50 / p99 answer ms (wrk) | refusals: p50 / p99 server handling ms (at most) | left when the load stopped | drained in s | other answers, socket errors |")
print("|---|---|---|---|---|---|---|---|---|---|")
for c in conns:
    for label in labels:
        rs = [read(label, c, r) for r in range(1, rounds + 1)]
        print(f"| {int(c):,} | {label} | {med([x['acc'] for x in rs]) / duration:,.0f} | {med([x['ref'] for x in rs]) / duration:,.0f} "
              f"| **{med([x['goodput'] for x in rs]):,.0f}** | {med([x['lat'][0] for x in rs]):.1f} / {med([x['lat'][2] for x in rs]):.1f} "
              f"| {fmt([x['handled'][0] for x in rs])} / {fmt([x['handled'][1] for x in rs])} "
              f"| {med([x['left'] for x in rs]):,.0f} | {med([x['drain'] for x in rs]):.1f} | {med([x['other'] for x in rs]):,.0f}, {med([x['err'] for x in rs]):,.0f} |")
PY
cat bench/results/flood.md
