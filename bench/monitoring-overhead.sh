#!/usr/bin/env bash
# What seeing inside costs: echo at 100 clients with monitoring and metrics
# on (bench/scenarios/monitoring-on.toml) against metrics off and the
# monitor sampling once an hour (monitoring-off.toml). Runs alternate
# on/off for ROUNDS rounds (default 4), each on a fresh server, so drift in
# the machine hits both sides alike. Compared: throughput, and server CPU
# per acknowledged task (steadier than throughput when the generator shares
# the machine). Also times a /metrics scrape on a loaded server.
# Writes bench/results/monitoring-{on,off}.* (the last round of each) and
# bench/results/monitoring-overhead.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/swarmd
rounds=${ROUNDS:-4}
dir=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
for round in $(seq "$rounds"); do
    for mode in on off; do
        mkdir -p "$dir/$mode-$round"
        "$bin" bench --scenario "bench/scenarios/monitoring-$mode.toml" \
            --out "$dir/$mode-$round" --quiet > /dev/null 2>&1
    done
done
mkdir -p bench/results
for mode in on off; do
    cp "$dir/$mode-$rounds/monitoring-$mode".* bench/results/
done

# The cost of one scrape, on a server with every pool's series populated.
port=${SWARMD_BENCH_PORT:-18932}
"$bin" serve --config bench/scenarios/configs/monitoring-on.toml --listen "127.0.0.1:$port" \
    --database-url "sqlite://$dir/scrape.sqlite" > "$dir/scrape.log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" > /dev/null && break; sleep 0.1; done
"$bin" bench --name warm --server "http://127.0.0.1:$port" --type echo --args '{"n":1}' \
    --concurrency 10 --warmup 0s --duration 2s --out "$dir" --quiet > /dev/null 2>&1
for _ in $(seq 30); do
    curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$port/metrics"
done > "$dir/scrape.times"
lines=$(curl -s "http://127.0.0.1:$port/metrics" | wc -l)

python3 - "$dir" "$rounds" "$lines" > bench/results/monitoring-overhead.md <<'PY'
import json, statistics, sys
d, rounds, lines = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows, tput, cpu = [], {"on": [], "off": []}, {"on": [], "off": []}
for r in range(1, rounds + 1):
    row = [str(r)]
    for mode in ("on", "off"):
        s = json.load(open(f"{d}/{mode}-{r}/monitoring-{mode}.json"))["steps"][0]
        us = s["server_cores"] * 1e6 / s["throughput"]
        tput[mode].append(s["throughput"])
        cpu[mode].append(us)
        row += [f"{s['throughput']:,.0f}", f"{s['submit']['p99']:.1f}", f"{us:.1f}"]
    rows.append(row)
print("| round | on: acks/s | on: p99 ms | on: server CPU µs/task "
      "| off: acks/s | off: p99 ms | off: server CPU µs/task |")
print("|---|---|---|---|---|---|---|")
for row in rows:
    print("| " + " | ".join(row) + " |")
m = {k: statistics.mean(v) for k, v in tput.items()}
c = {k: statistics.mean(v) for k, v in cpu.items()}
print(f"| **mean** | **{m['on']:,.0f}** | | **{c['on']:.1f}** "
      f"| **{m['off']:,.0f}** | | **{c['off']:.1f}** |")
print()
print(f"- Throughput with monitoring on: **{(m['on'] / m['off'] - 1) * 100:+.1f}%** "
      f"against off (round to round spread: on {min(tput['on']):,.0f}–{max(tput['on']):,.0f}, "
      f"off {min(tput['off']):,.0f}–{max(tput['off']):,.0f}).")
print(f"- Server CPU per task with monitoring on: **{(c['on'] / c['off'] - 1) * 100:+.1f}%**.")
t = sorted(float(x) * 1e3 for x in open(f"{d}/scrape.times"))
print(f"- One `/metrics` scrape ({lines} lines): median {statistics.median(t):.2f} ms, "
      f"max {t[-1]:.2f} ms at the client; at one scrape a second that is "
      f"{statistics.median(t) / 10:.2f}% of a core at most.")
PY
cat bench/results/monitoring-overhead.md
