#!/usr/bin/env bash
# Balancing over instances, side by side (issue 6): four `swarmd
# sim-backend` instances, one five times slower, behind one `agent = "http"`
# pool; p2c (classic cost, and with `slots = 8`, the instances' knee)
# against round robin against least-outstanding.
#
# The four instances run for the whole script (ports 31001-31004, as in
# bench/scenarios/configs/balancing-<policy>.toml; 31004 is the slow one).
# For each round, rate and policy, in that nesting (policies interleaved,
# so drift in the machine hits all three alike), a fresh swarmd is launched
# by `swarmd bench --scenario bench/scenarios/balancing.toml` with that
# policy's config and the same open-loop load. Each instance's /stats is read
# before and after the run: the slow instance's share of the requests the
# instances received (warm-up included) is the share of work sent to it.
# From the bench: end-to-end p50/p99 of the tasks, goodput (tasks that
# succeeded per second) and errors (tasks that did not succeed, refusals
# included).
#
#   bench/balancing.sh                    # ROUNDS=3, RATES="90 300"
#   ROUNDS=1 RATES=300 bench/balancing.sh
#   POLICIES="p2c p2c-slowdecay" OUT=/tmp/lb bench/balancing.sh   # other configs
#
# POLICIES names configs bench/scenarios/configs/balancing-<name>.toml.
# Writes $OUT/balancing/runs.json (every run, and the medians; in a
# directory of its own, as it is not a `swarmd bench` result) and
# $OUT/balancing.md (the table for BENCHMARKS.md); OUT is bench/results
# by default.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/swarmd
rounds=${ROUNDS:-3}
read -r -a rates <<< "${RATES:-90 300}"
read -r -a policies <<< "${POLICIES:-p2c p2c_slots round_robin least_outstanding}"
out=${OUT:-bench/results}
ports=(31001 31002 31003 31004)
slow=3
scenario=bench/scenarios/balancing.toml
configs=bench/scenarios/configs

[ -x "$bin" ] || { echo "$bin not found: cargo build --release -p swarmd" >&2; exit 1; }
for policy in "${policies[@]}"; do
    [ -f "$configs/balancing-$policy.toml" ] || { echo "no $configs/balancing-$policy.toml" >&2; exit 1; }
done
dir=$(mktemp -d)
sims=()
bench_pid=
cleanup() {
    # The bench runs in its own process group, with the swarmd it launched.
    [ -n "$bench_pid" ] && kill -- "-$bench_pid" 2>/dev/null || true
    for p in ${sims[@]+"${sims[@]}"}; do kill "$p" 2>/dev/null || true; done
    for p in ${sims[@]+"${sims[@]}"}; do wait "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

stats() { curl -sf --max-time 5 "http://127.0.0.1:$1/stats"; }

for i in "${!ports[@]}"; do
    port=${ports[$i]}
    if curl -s --max-time 1 -o /dev/null "http://127.0.0.1:$port/"; then
        echo "port $port is taken; bench/scenarios/configs/balancing-*.toml expect it free" >&2
        exit 1
    fi
    kind=fast
    [ "$i" -eq "$slow" ] && kind=slow
    "$bin" sim-backend --listen "127.0.0.1:$port" --config "$configs/balancing-$kind.toml" \
        > "$dir/sim-$port.log" 2>&1 &
    sims+=($!)
done
for port in "${ports[@]}"; do
    for _ in $(seq 100); do
        curl -sf --max-time 1 -o /dev/null "http://127.0.0.1:$port/health" && break
        sleep 0.1
    done
    curl -sf --max-time 1 -o /dev/null "http://127.0.0.1:$port/health" || {
        echo "sim-backend on $port did not start:" >&2
        cat "$dir/sim-$port.log" >&2
        exit 1
    }
done

# Waits until no instance has a request in flight (the previous run's
# server is gone, and with it its connections).
idle() {
    for _ in $(seq 300); do
        busy=0
        for port in "${ports[@]}"; do
            n=$(stats "$port" | python3 -c 'import json,sys; print(json.load(sys.stdin)["inflight"])')
            [ "$n" -eq 0 ] || busy=1
        done
        [ "$busy" -eq 0 ] && return 0
        sleep 0.1
    done
    echo "instances still busy after 30 s" >&2
    return 1
}

for round in $(seq "$rounds"); do
    for rate in "${rates[@]}"; do
        for policy in "${policies[@]}"; do
            run="$dir/r$round-$rate-$policy"
            mkdir -p "$run"
            echo "round $round/$rounds, $rate/s, $policy" >&2
            idle
            for port in "${ports[@]}"; do stats "$port" > "$run/before-$port.json"; done
            setsid "$bin" bench --scenario "$scenario" --name balancing \
                --config "$configs/balancing-$policy.toml" --rate "$rate" \
                --out "$run" --quiet > "$run/bench.log" 2>&1 &
            bench_pid=$!
            if ! wait "$bench_pid"; then
                bench_pid=
                echo "swarmd bench failed:" >&2
                cat "$run/bench.log" >&2
                exit 1
            fi
            bench_pid=
            idle
            for port in "${ports[@]}"; do stats "$port" > "$run/after-$port.json"; done
        done
    done
done

mkdir -p "$out"
python3 - "$dir" "$rounds" "${ports[*]}" "$slow" "${rates[*]}" "${policies[*]}" "$out" \
    > "$out/balancing.md" <<'PY'
import json, os, statistics, sys

d, rounds = sys.argv[1], int(sys.argv[2])
ports = sys.argv[3].split()
slow = int(sys.argv[4])
rates = [int(float(r)) if float(r).is_integer() else float(r) for r in sys.argv[5].split()]
policies = sys.argv[6].split()
out_dir = sys.argv[7]
label = {"p2c": "p2c", "p2c_slots": "p2c, slots = 8", "round_robin": "round robin", "least_outstanding": "least outstanding"}

def load(p):
    with open(p) as f:
        return json.load(f)

def delta(run, port, key):
    return load(f"{run}/after-{port}.json")[key] - load(f"{run}/before-{port}.json")[key]

runs = []
for r in range(1, rounds + 1):
    for rate in rates:
        for policy in policies:
            run = f"{d}/r{r}-{rate}-{policy}"
            res = load(f"{run}/balancing.json")
            s = res["steps"][0]
            received = [delta(run, p, "received") for p in ports]
            served = [delta(run, p, "served") for p in ports]
            e2e = s.get("e2e") or {}
            ok = s.get("outcomes", {}).get("succeeded", 0)
            runs.append({
                "round": r, "rate": rate, "policy": policy,
                "received": received, "served": served,
                "slow_share": received[slow] / max(1, sum(received)),
                "p50_ms": e2e.get("p50"), "p99_ms": e2e.get("p99"),
                "goodput": ok / s["window_s"],
                "sent": s["sent"], "succeeded": ok,
                "not_succeeded": s["sent"] - ok,
                "outcomes": s.get("outcomes", {}), "codes": s.get("codes", {}),
                "generator_cores": s.get("generator_cores"),
                "server_cores": s.get("server_cores"),
                "machine_busy": s.get("machine_busy"),
            })
            machine, commit = res.get("machine"), res.get("commit")

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

summary = []
for rate in rates:
    for policy in policies:
        rs = [x for x in runs if x["rate"] == rate and x["policy"] == policy]
        summary.append({
            "rate": rate, "policy": policy, "rounds": len(rs),
            "slow_share": med([x["slow_share"] for x in rs]),
            "slow_share_range": [min(x["slow_share"] for x in rs), max(x["slow_share"] for x in rs)],
            "p50_ms": med([x["p50_ms"] for x in rs]),
            "p99_ms": med([x["p99_ms"] for x in rs]),
            "p99_range": [min(x["p99_ms"] or 0 for x in rs), max(x["p99_ms"] or 0 for x in rs)],
            "goodput": med([x["goodput"] for x in rs]),
            "error_pct": med([100 * x["not_succeeded"] / max(1, x["sent"]) for x in rs]),
        })

by = {(x["rate"], x["policy"]): x for x in summary}
out = {
    "name": "balancing",
    "description": "4 sim-backends (one 5x slower) behind an http pool: p2c (and p2c with slots = 8) vs round robin vs least outstanding",
    "command": f"ROUNDS={rounds} RATES=\"{' '.join(map(str, rates))}\" "
               f"POLICIES=\"{' '.join(policies)}\" bench/balancing.sh",
    "commit": commit, "machine": machine,
    "capacity_per_s": 3 * 8 / 0.055 + 8 / 0.275,
    "summary": summary, "runs": runs,
}
os.makedirs(f"{out_dir}/balancing", exist_ok=True)
with open(f"{out_dir}/balancing/runs.json", "w") as f:
    json.dump(out, f, indent=2)

cap = out["capacity_per_s"]
print(f"Medians of {rounds} interleaved rounds (each run: a fresh swarmd, 5 s warm-up, "
      f"15 s measured; the share counts warm-up too). Aggregate capacity "
      f"{cap:.0f} requests/s; the slow instance alone serves at most 29/s.")
print()
print("| offered | policy | share to slow (range) | p50 ms | p99 ms (range) | goodput/s | not succeeded |")
print("|---|---|---|---|---|---|---|")
for x in summary:
    lo, hi = x["slow_share_range"]
    plo, phi = x["p99_range"]
    print(f"| {x['rate']}/s ({100 * x['rate'] / cap:.0f}%) | {label.get(x['policy'], x['policy'])} "
          f"| {100 * x['slow_share']:.1f}% ({100 * lo:.1f}–{100 * hi:.1f}) "
          f"| {x['p50_ms']:.0f} | {x['p99_ms']:.0f} ({plo:.0f}–{phi:.0f}) "
          f"| {x['goodput']:.0f} | {x['error_pct']:.1f}% |")
print()
for rate in rates:
    for name in ("p2c", "p2c_slots"):
        p, rr = by.get((rate, name)), by.get((rate, "round_robin"))
        if not (p and rr and p["p99_ms"]):
            continue
        met = p["slow_share"] < 0.10 and rr["p99_ms"] >= 2 * p["p99_ms"]
        print(f"- {rate}/s: {label[name]} sends the slow instance {100 * p['slow_share']:.1f}% of the work "
              f"(target < 10%) and its p99 is {rr['p99_ms'] / p['p99_ms']:.1f}× lower than round "
              f"robin's (target ≥ 2×): **{'met' if met else 'missed'}**.")
PY
cat "$out/balancing.md"
