#!/usr/bin/env bash
# A provider with a hard request quota (issue 16, part 2): sim-backend
# answers 429 past RPM requests per window (fixed windows, x-ratelimit-*
# headers on every answer). swarmd's `openai` department (fixed limit 16,
# task retries up to 10 attempts) gets a backlog of N tasks, twice in one
# run: obeying the provider's signals (the default: starts pause until the
# reset once what is left would not cover the calls in flight), and with
# `obey_rate_limits = false` (back-pressure and Retry-After on retries
# only). Throughput is tasks succeeded per second from the first submit to
# the last finish, against the quota's RPM/window; 429s are the provider's
# own count (/stats rate_limited) over every request it received.
# Writes bench/results/ratelimit.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release/swarmd}
n=${TASKS:-1000}
rpm=${RPM:-100}
window=${WINDOW_MS:-2000}
port=18961
sim_port=18962
dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT
quota=$(python3 -c "print(round($rpm / ($window / 1000), 2))")
rows=""
for obey in true false; do
    "$bin" sim-backend --listen "127.0.0.1:$sim_port" --latency-ms 20 --rpm "$rpm" \
        --window-ms "$window" > "$dir/sim.log" 2>&1 &
    sim=$!
    pids+=("$sim")
    cat > "$dir/cfg.toml" <<CFG
[pools.llm]
agent = "openai"
concurrency = 16
obey_rate_limits = $obey
[pools.llm.queue]
capacity = 1000000
target_delay_ms = 0
[pools.llm.retry_task]
max_attempts = 10
backoff_ms = 100
max_backoff_ms = 2000
budget_ratio = 1.0
budget_min_per_sec = 1000
[pools.llm.openai]
base_url = "http://127.0.0.1:$sim_port/v1"
model = "sim"
max_tokens = 8
CFG
    SWARMD_DATABASE_URL="sqlite://$dir/r-$obey.db" "$bin" serve --config "$dir/cfg.toml" \
        --listen "127.0.0.1:$port" > "$dir/serve.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$port/ready" > /dev/null && curl -sf "http://127.0.0.1:$sim_port/health" > /dev/null && break
        sleep 0.1
    done
    line=$(python3 bench/ratelimit.py 127.0.0.1 "$port" "$sim_port" "$n")
    echo "obey_rate_limits=$obey $line"
    rows+=$(python3 - "$obey" "$quota" "$line" <<'PY'
import json, sys
obey, quota, r = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])
rate = r["succeeded"] / r["elapsed_s"]
share = 100.0 * r["rate_limited"] / max(1, r["received"])
print(f"| {'obey (default)' if obey == 'true' else 'ignore'} | {r['succeeded']}/{r['tasks']} | {r['elapsed_s']:.1f} | "
      f"{rate:.1f} | {100 * rate / quota:.1f}% | {r['received']} | {r['rate_limited']} | {share:.2f}% | "
      f"{r['provider_pauses']} | {r['retries']} |")
PY
)
    rows+=$'\n'
    kill "$pid" "$sim"; wait "$pid" "$sim" 2>/dev/null || true
    pids=()
done
{
    echo "# A provider's hard request quota (issue 16, part 2)"
    echo
    echo "\`bench/ratelimit.sh\` ($(date -u +%Y-%m-%d), $(nproc) cores, $(basename "$bin") at $bin): sim-backend"
    echo "with --rpm $rpm --window-ms $window (a quota of $quota requests/s), 20 ms per call;"
    echo "a backlog of $n openai tasks, fixed limit 16, up to 10 attempts each."
    echo
    echo "| signals | succeeded | elapsed s | tasks/s | of quota | requests | 429s | 429 share | pauses | retries |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    printf "%s" "$rows"
} > bench/results/ratelimit.md
cat bench/results/ratelimit.md
