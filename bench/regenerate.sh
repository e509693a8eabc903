#!/usr/bin/env bash
# Regenerates BENCHMARKS.md: runs every scenario in bench/scenarios/ with a
# release build, writes JSON, Markdown and SVG into bench/results/, and
# assembles BENCHMARKS.md from bench/BENCHMARKS.head.md plus one table per
# scenario (throughput also as a ratio to the hello-world ceiling).
#
#   bench/regenerate.sh                 # all scenarios
#   bench/regenerate.sh echo-sqlite     # just these (others keep their last results)
#   bench/regenerate.sh report          # run nothing, only reassemble BENCHMARKS.md
#
# Run it on an otherwise idle machine: the generator and the server share it.
# PostgreSQL scenarios use SWARMD_BENCH_PG_URL (default: the local test server).
set -euo pipefail
cd "$(dirname "$0")/.."
export SWARMD_BENCH_PG_URL="${SWARMD_BENCH_PG_URL:-${SWARMD_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}}"
cargo build --release -q -p swarmd -p swarm-hello
bin=target/release/swarmd
# The order of the sections in BENCHMARKS.md.
order=(
    hello-ceiling
    echo-sqlite
    echo-postgres
    communications-sqlite
    communications-100-wait
    communications-100-wait-pg
    sim-backend-knee
    limit-nolimit
    limit-fixed
    limit-aimd
    limit-gradient2
    limit-vegas
    recover-nolimit
    recover-fixed
    recover-aimd
    recover-gradient2
    recover-vegas
    fairness-solo
    fairness-mixed
    health-idle
    health-cpu-load
    monitoring-on
    monitoring-off
    balancing
    flood
    chaos
    retention
    neighbours
    cluster
    lean-llm
)
selected=("$@")
[ ${#selected[@]} -eq 0 ] && selected=("${order[@]}")
mkdir -p bench/results
for name in "${selected[@]}"; do
    echo "== $name" >&2
    case "$name" in
        # One script measures both, on one server.
        health-idle) bench/health-under-cpu.sh ;;
        health-cpu-load) ;;
        report) ;;
        monitoring-on) ROUNDS=8 bench/monitoring-overhead.sh > /dev/null ;;
        monitoring-off) ;;
        # Four sim-backends and a swarmd per policy: a side-by-side table, not a scenario result.
        balancing) bench/balancing.sh > /dev/null ;;
        # Issue 13: side-by-side tables of their own, not scenario results.
        flood) bench/flood.sh > /dev/null ;;
        chaos) bench/chaos.sh > /dev/null ;;
        retention) bench/retention-soak.sh > /dev/null ;;
        neighbours) bench/pg-neighbours.sh > /dev/null ;;
        # Issue 14: its own tables (echo beside pgbench, 1-2-3 nodes, the burn-down).
        cluster) bench/cluster.sh > /dev/null ;;
        # Issue 16: direct calls beside calls through swarmd, one table.
        lean-llm) bench/lean-llm.sh > /dev/null ;;
        *) "$bin" bench --scenario "bench/scenarios/$name.toml" --out bench/results --quiet > /dev/null ;;
    esac
done
results=()
for name in "${order[@]}"; do
    case "$name" in balancing | flood | chaos | retention | neighbours | cluster | lean-llm) continue ;; esac # tables shown below
    [ -f "bench/results/$name.json" ] && results+=("bench/results/$name.json")
done
{
    cat bench/BENCHMARKS.head.md
    echo
    "$bin" bench-report --ceiling bench/results/hello-ceiling.json --charts bench/results "${results[@]}"
    if [ -f bench/results/monitoring-overhead.md ]; then
        echo
        echo "### Monitoring overhead, side by side (\`bench/monitoring-overhead.sh\`)"
        echo
        cat bench/results/monitoring-overhead.md
    fi
    if [ -f bench/results/balancing.md ]; then
        echo
        echo "### Balancing over instances, side by side (\`bench/balancing.sh\`)"
        echo
        cat bench/results/balancing.md
    fi
    for part in "flood:A flood of submissions, side by side (\`bench/flood.sh\`)" \
        "chaos:Database faults under load (\`bench/chaos.sh\`, the chaos tests)" \
        "retention-soak:Retention keeps the tables flat (\`bench/retention-soak.sh\`)" \
        "pg-neighbours:Other sessions on the same PostgreSQL (\`bench/pg-neighbours.sh\`)" \
        "cluster:The cluster on PostgreSQL, in one run (\`bench/cluster.sh\`)" \
        "slow-readers:Slow readers of large list pages, issue 15 (\`bench/slow-readers.sh\`)" \
        "lean-llm:Streamed LLM calls, direct and through swarmd, issue 16 (\`bench/lean-llm.sh\`)"; do
        if [ -f "bench/results/${part%%:*}.md" ]; then
            echo
            echo "### ${part#*:}"
            echo
            cat "bench/results/${part%%:*}.md"
        fi
    done
} > BENCHMARKS.md
echo "wrote BENCHMARKS.md" >&2
