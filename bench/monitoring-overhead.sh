#!/usr/bin/env bash
# What seeing inside costs: echo throughput at 100 clients with the monitor
# and metrics on (the default, plus a Prometheus-style scrape of /metrics
# every second) against metrics off and the monitor sampling once an hour.
# Runs alternate on/off for ROUNDS rounds (default 3) on fresh servers, so
# drift in the machine hits both sides alike. Writes
# bench/results/monitoring-on.* and monitoring-off.* (the last round of
# each) and bench/results/monitoring-overhead.md (every round and the means).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/swarmd
port=${SWARMD_BENCH_PORT:-18932}
url=http://127.0.0.1:$port
rounds=${ROUNDS:-3}
dir=$(mktemp -d)
pid=
scraper=
cleanup() {
    [ -n "$scraper" ] && kill "$scraper" 2>/dev/null || true
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
printf '[monitor]\nmetrics = true\ninterval_ms = 1000\n' > "$dir/on.toml"
printf '[monitor]\nmetrics = false\ninterval_ms = 3600000\n' > "$dir/off.toml"

run() { # mode round
    local mode=$1 round=$2 db="$dir/$1-$2.sqlite"
    "$bin" serve --config "$dir/$mode.toml" --listen "127.0.0.1:$port" \
        --database-url "sqlite://$db" > "$dir/$mode-$round.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -sf "$url/health" > /dev/null && break; sleep 0.1; done
    if [ "$mode" = on ]; then
        (while true; do curl -sf "$url/metrics" > /dev/null || true; sleep 1; done) &
        scraper=$!
    fi
    mkdir -p "$dir/out-$mode-$round"
    "$bin" bench --name "monitoring-$mode" --server "$url" --type echo --args '{"n":1}' \
        --concurrency 100 --warmup 2s --duration 10s --out "$dir/out-$mode-$round" --quiet > /dev/null
    if [ -n "$scraper" ]; then kill "$scraper" 2>/dev/null || true; wait "$scraper" 2>/dev/null || true; scraper=; fi
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
}
for round in $(seq "$rounds"); do
    run on "$round"
    run off "$round"
done
mkdir -p bench/results
for mode in on off; do
    cp "$dir/out-$mode-$rounds/monitoring-$mode".* bench/results/
done
python3 - "$dir" "$rounds" > bench/results/monitoring-overhead.md <<'PY'
import json, sys
d, rounds = sys.argv[1], int(sys.argv[2])
rows, tot = [], {"on": [], "off": []}
for r in range(1, rounds + 1):
    row = [str(r)]
    for mode in ("on", "off"):
        s = json.load(open(f"{d}/out-{mode}-{r}/monitoring-{mode}.json"))["steps"][0]
        tot[mode].append(s["throughput"])
        row += [f"{s['throughput']:,.0f}", f"{s['submit']['p99']:.2f}"]
    rows.append(row)
mean = {m: sum(v) / len(v) for m, v in tot.items()}
cost = (mean["off"] - mean["on"]) / mean["off"] * 100
print("| round | on: acks/s | on: p99 ms | off: acks/s | off: p99 ms |")
print("|---|---|---|---|---|")
for row in rows:
    print("| " + " | ".join(row) + " |")
print(f"| **mean** | **{mean['on']:,.0f}** | | **{mean['off']:,.0f}** | |")
print()
print(f"Cost of monitoring and metrics: **{cost:.1f}%** of throughput "
      f"(negative: on was faster, i.e. within noise).")
PY
cat bench/results/monitoring-overhead.md
