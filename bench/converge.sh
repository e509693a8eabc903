#!/usr/bin/env bash
# Convergence from any start, through the real server (issue 16, part 1):
# for each knee in KNEES, `swarmd sim-backend` with that knee in flight at
# BASE ms (latency base × in_flight / knee past it), one swarmd department
# (`http` agent) with an adaptive limit starting at 0.1×, 1× and 10× the
# knee, a closed loop of 8× the knee submitters for SECONDS_RUN
# (bench/converge.py). A fixed limit at the knee is the reference. The
# unloaded p99 is the provider's own latency at one call at a time.
# Writes bench/results/converge.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release/swarmd}
knees=${KNEES:-50 10}
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

unloaded_p99() { # 50 calls to the provider, one at a time
    python3 - "$sim_port" <<'PY'
import http.client, sys, time
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
}

row() { # knee law start unloaded json
    python3 - "$@" <<'PY'
import json, sys
knee, law, f, unloaded, r = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), json.loads(sys.argv[5])
ratio = r["p99_run_ms"] / unloaded if r["p99_run_ms"] else float("nan")
fmt = lambda v: "never" if v is None else v
print(f"| {knee} | {law} | {f}× | {fmt(r['rounds_to_band'])} | {fmt(r['rounds_settled'])} | {r['p99_run_ms']} | "
      f"{ratio:.2f} | {r['goodput_per_s']} | {r['limit_min']}–{r['limit_max']} (end {r['limit_end']}) | "
      f"{r['path']} | {r['errors']} |")
PY
}

rows=""
unloaded_all=""
run() { # knee law start_factor unloaded
    local knee=$1 law=$2 f=$3 unloaded=$4 initial limit
    initial=$(python3 -c "print(max(1, round($knee * $f)))")
    if [ "$law" = fixed ]; then
        limit="algorithm = \"fixed\"\ninitial = $knee"
    else
        limit="algorithm = \"$law\"\ninitial = $initial\nmax = 10000"
    fi
    printf '[pools.provider]\nagent = "http"\n[pools.provider.limit]\n%b\n[pools.provider.queue]\ncapacity = 1000000\ntarget_delay_ms = 0\n[pools.provider.http]\nurls = ["http://127.0.0.1:%s/work"]\n' \
        "$limit" "$sim_port" > "$dir/cfg.toml"
    SWARMD_DATABASE_URL="sqlite://$dir/c-$knee-$law-$f.db" "$bin" serve --config "$dir/cfg.toml" \
        --listen "127.0.0.1:$port" > "$dir/serve.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" > /dev/null && break; sleep 0.1; done
    local line
    line=$(python3 bench/converge.py 127.0.0.1 "$port" $((8 * knee)) "$secs" "$knee" "$base")
    echo "knee $knee, $law from ${f}x: $line" >&2
    rows+=$(row "$knee" "$law" "$f" "$unloaded" "$line")
    rows+=$'\n'
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

for knee in $knees; do
    "$bin" sim-backend --listen "127.0.0.1:$sim_port" --latency-ms "$base" --jitter-ms $((base / 10)) \
        --capacity "$knee" --hard-limit 1000000 > "$dir/sim.log" 2>&1 &
    sim=$!
    pids=("$sim")
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$sim_port/health" > /dev/null && break; sleep 0.1; done
    unloaded=$(unloaded_p99)
    unloaded_all+="knee $knee: $unloaded ms; "
    run "$knee" fixed 1 "$unloaded"
    for law in $laws; do
        for f in 0.1 1 10; do run "$knee" "$law" "$f" "$unloaded"; done
    done
    kill "$sim"; wait "$sim" 2>/dev/null || true
    pids=()
done
{
    echo "# Convergence from any start, through swarmd (issue 16, part 1)"
    echo
    echo "\`bench/converge.sh\` ($(date -u +%Y-%m-%d), $(nproc) cores, $bin): sim-backend with a knee"
    echo "of KNEE in flight at $base ms (jitter $((base / 10)) ms; latency grows in proportion past the knee), one"
    echo "\`http\` department, a closed loop of 8× the knee submitters for $secs s. Unloaded p99 (the provider"
    echo "alone, one call at a time): ${unloaded_all%; }. Rounds are base round trips ($base ms) from the first"
    echo "submission; p99 is the provider's latency (run_ms) of calls started after round trip 3; the path"
    echo "is the limit at round trips 0-10."
    echo
    echo "| knee | law | start | rounds to ±20% | settled in band after | p99 ms | ÷ unloaded | tasks/s | limit range | path | errors |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    printf "%s" "$rows"
} > bench/results/converge.md
cat bench/results/converge.md
