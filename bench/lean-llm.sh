#!/usr/bin/env bash
# What swarmd adds to a streamed LLM call (issue 16, part 5). One
# sim-backend (bench/scenarios/configs/lean-llm-sim.toml: 20 ms to the
# first token, 16 tokens, no knee) serves two callers in turn, at the same
# open-loop rates, in one run:
#   direct  - `swarmd bench --raw` POSTs the streamed chat completion to
#             sim-backend and reads the whole stream;
#   swarmd  - the same request as a task of an `openai` department
#             (bench/scenarios/configs/lean-llm.toml), submitted with
#             wait_ms, so the answer is the finished task;
#   echo    - echo tasks at the same rate: the cost of a task without a call.
# Rounds alternate direct / swarmd / echo so drift in the machine hits all
# alike. Added latency is swarmd's end-to-end percentile minus the direct
# one of the same round. swarmd's CPU per task comes from /proc (the bench
# launches a fresh swarmd per step and reads its CPU time).
# Writes bench/results/lean-llm.md (and the per-step JSON beside it under
# bench/results/lean-llm/).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release/swarmd}
rates=${RATES:-500 1000 2000}
rounds=${ROUNDS:-2}
warmup=${WARMUP:-2s}
duration=${DURATION:-10s}
port=18941
out=bench/results/lean-llm
dir=$(mktemp -d)
sim=
cleanup() {
    [ -n "$sim" ] && kill "$sim" 2>/dev/null && wait "$sim" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

"$bin" sim-backend --listen "127.0.0.1:$port" --config bench/scenarios/configs/lean-llm-sim.toml \
    > "$dir/sim.log" 2>&1 &
sim=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" > /dev/null && break; sleep 0.1; done

body='{"model":"sim","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"hello"}]}'
common=(--warmup "$warmup" --duration "$duration" --quiet)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq "$rounds"); do
    for rate in $rates; do
        mkdir -p "$dir/$round"
        "$bin" bench --name "direct-$rate" --server "http://127.0.0.1:$port" --raw --method POST \
            --path /v1/chat/completions --body "$body" --rate "$rate" "${common[@]}" \
            --out "$dir/$round" > /dev/null
        "$bin" bench --name "swarmd-$rate" --launch swarmd \
            --config bench/scenarios/configs/lean-llm.toml --type llm \
            --args '{"prompt":"hello","max_tokens":64}' --wait-ms 5000 --rate "$rate" \
            "${common[@]}" --out "$dir/$round" > /dev/null
        "$bin" bench --name "echo-$rate" --launch swarmd --type echo --args '{"n":1}' \
            --wait-ms 5000 --rate "$rate" "${common[@]}" --out "$dir/$round" > /dev/null
    done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
rm -rf "$out" && mkdir -p "$out"
cp -r "$dir"/[0-9]* "$out"/

python3 - "$out" "$rounds" "$rates" "$load_before" "$load_after" > bench/results/lean-llm.md <<'PY'
import json, sys
d, rounds, rates = sys.argv[1], int(sys.argv[2]), [int(r) for r in sys.argv[3].split()]
load_before, load_after = sys.argv[4], sys.argv[5]
def step(r, name):
    return json.load(open(f"{d}/{r}/{name}.json"))
first = step(1, f"direct-{rates[0]}")
print("# Streamed LLM calls: direct to sim-backend vs through swarmd (issue 16)")
print()
print("`bench/lean-llm.sh`; per-step results in `bench/results/lean-llm/<round>/`; "
      "the reading is in BENCHMARKS.md, \"A lean LLM path\".")
print()
m = first["machine"]
print(f"Commit `{first['commit']}`; {m['cores']} × {m['cpu']} ({m['memory_gib']:.0f} GiB), "
      f"Linux {m['kernel']}; started {first['started_at']}; "
      f"load average before {load_before}, after {load_after}.")
print()
print("| round | rate/s | direct p50 / p99 ms | swarmd p50 / p99 ms | added p50 / p99 ms "
      "| swarmd ok/s | swarmd CPU µs/task | echo CPU µs/task | generator cores | machine busy |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in range(1, rounds + 1):
    for rate in rates:
        a = step(r, f"direct-{rate}")["steps"][0]
        b = step(r, f"swarmd-{rate}")["steps"][0]
        e = step(r, f"echo-{rate}")["steps"][0]
        da, db = a["submit"], b["e2e"]
        us = b["server_cores"] * 1e6 / max(b["goodput"], 1e-9)
        ue = e["server_cores"] * 1e6 / max(e["goodput"], 1e-9)
        print(f"| {r} | {rate:,} | {da['p50']:.1f} / {da['p99']:.1f} | {db['p50']:.1f} / {db['p99']:.1f} "
              f"| **{db['p50'] - da['p50']:+.2f} / {db['p99'] - da['p99']:+.2f}** "
              f"| {b['goodput']:,.0f} | **{us:.0f}** | {ue:.0f} "
              f"| {b['generator_cores']:.2f} | {b['machine_busy']:.2f} |")
PY
cat bench/results/lean-llm.md
