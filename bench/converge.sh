#!/usr/bin/env bash
# Convergence from any start, through the real server (issue 16, part 1):
# `swarmd sim-backend` with a knee of KNEE in flight at BASE ms (latency
# base × in_flight / knee past it), one swarmd department (`http` agent)
# with an adaptive limit starting at 0.1×, 1× and 10× the knee, a closed
# loop of 8× the knee submitters for SECONDS (bench/converge.py). A fixed
# limit at the knee is the reference. The unloaded p99 is the provider's
# own latency at one call at a time. Writes bench/results/converge.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release/swarmd}
knee=${KNEE:-50}
base=${BASE:-100}
secs=${SECONDS_RUN:-20}
laws=${LAWS:-aimd}
port=18971
sim_port=18972
dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT
"$bin" sim-backend --listen "127.0.0.1:$sim_port" --latency-ms "$base" --jitter-ms $((base / 10)) \
    --capacity "$knee" --hard-limit 1000000 > "$dir/sim.log" 2>&1 &
pids+=("$!")
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$sim_port/health" > /dev/null && break; sleep 0.1; done
# The provider unloaded: 50 calls, one at a time.
unloaded=$(python3 - "$sim_port" <<'PY'
import http.client, json, sys, time
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
xs = []
for _ in range(50):
    t = time.time()
    c.request("POST", "/work", b'{"prompt":"x"}', {"content-type": "application/json"})
    c.getresponse().read()
    xs.append((time.time() - t) * 1000)
xs.sort()
print(round(xs[int(0.99 * (len(xs) - 1))], 1))
PY
)
rows=""
run() { # law start_factor
    local law=$1 f=$2 initial
    initial=$(python3 -c "print(max(1, round($knee * $f)))")
    if [ "$law" = fixed ]; then
        limit="algorithm = \"fixed\"\ninitial = $knee"
    else
        limit="algorithm = \"$law\"\ninitial = $initial\nmax = 10000"
    fi
    printf '[pools.provider]\nagent = "http"\n[pools.provider.limit]\n%b\n[pools.provider.queue]\ncapacity = 1000000\ntarget_delay_ms = 0\n[pools.provider.http]\nurls = ["http://127.0.0.1:%s/work"]\n' \
        "$limit" "$sim_port" > "$dir/cfg.toml"
    SWARMD_DATABASE_URL="sqlite://$dir/c-$law-$f.db" "$bin" serve --config "$dir/cfg.toml" \
        --listen "127.0.0.1:$port" > "$dir/serve.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" > /dev/null && break; sleep 0.1; done
    local line
    line=$(python3 bench/converge.py 127.0.0.1 "$port" $((8 * knee)) "$secs" "$knee" "$base")
    echo "$law from ${f}x: $line" >&2
    rows+=$(python3 - "$law" "$f" "$unloaded" "$line" <<'PY'
import json, sys
law, f, unloaded, r = sys.argv[1], sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4])
ratio = r["p99_run_ms"] / unloaded if r["p99_run_ms"] else float("nan")
fmt = lambda v: "never" if v is None else v
print(f"| {law} | {f}× | {fmt(r['rounds_to_band'])} | {fmt(r['rounds_settled'])} | {r['p99_run_ms']} | {ratio:.2f} | "
      f"{r['goodput_per_s']} | {r['limit_min']}–{r['limit_max']} (end {r['limit_end']}) | {r['path']} | {r['errors']} |")
PY
)
    rows+=$'\n'
    kill "$pid"; wait "$pid" 2>/dev/null || true
}
run fixed 1
for law in $laws; do
    for f in 0.1 1 10; do run "$law" "$f"; done
done
{
    echo "# Convergence from any start, through swarmd (issue 16, part 1)"
    echo
    echo "\`bench/converge.sh\` ($(date -u +%Y-%m-%d), $(nproc) cores, $bin): sim-backend with a knee of"
    echo "$knee in flight at $base ms (jitter $((base / 10)) ms; latency grows in proportion past the knee),"
    echo "one \`http\` department, a closed loop of $((8 * knee)) submitters (8× the knee) for $secs s."
    echo "Unloaded p99 (the provider alone, one call at a time): $unloaded ms. Rounds are base round trips"
    echo "($base ms) from the first submission; p99 is the provider's latency (run_ms) of calls started after"
    echo "round trip 3; the path is the limit at round trips 0-10."
    echo
    echo "| law | start | rounds to ±20% | settled in band after | p99 ms | ÷ unloaded | tasks/s | limit range | path | errors |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    printf "%s" "$rows"
} > bench/results/converge.md
cat bench/results/converge.md
