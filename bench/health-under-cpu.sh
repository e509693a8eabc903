#!/usr/bin/env bash
# /health latency of one swarmd, first idle, then while CPU-heavy `sim`
# tasks (cpu_ms) keep its CPU pool saturated. Writes
# bench/results/health-idle.* and bench/results/health-cpu-load.*.
# The burns run on the bounded CPU pool ([cpu_pool], cores - 1 threads),
# never on the async workers, so /health should not notice them.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/swarmd
port=${SWARMD_BENCH_PORT:-18931}
url=http://127.0.0.1:$port
dir=$(mktemp -d)
"$bin" serve --listen "127.0.0.1:$port" --database-url "sqlite://$dir/db.sqlite" > "$dir/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -sf "$url/health" > /dev/null && break; sleep 0.1; done
health() {
    "$bin" bench --name "$1" --raw --server "$url" --method GET --path /health \
        --rate 200 --warmup 2s --duration 10s --out bench/results --quiet > /dev/null
}
health health-idle
# 40 tasks/s burning 40 ms each: 1.6 cores of demand, more than the pool's
# threads, so the pool stays busy (and queued) for the whole measurement.
"$bin" bench --name cpu-load --server "$url" --type sim --args '{"latency_ms":1,"cpu_ms":40}' \
    --rate 40 --warmup 0s --duration 16s --out "$dir" --quiet > /dev/null &
load=$!
sleep 3
curl -s "$url/api/status" | python3 -c 'import json,sys; c=json.load(sys.stdin)["cpu_pool"]; print("cpu pool during load:", c)' >&2
health health-cpu-load
wait $load
