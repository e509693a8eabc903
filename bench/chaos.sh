#!/usr/bin/env bash
# The chaos tests (crates/swarmd/tests/chaos.rs) on a release build, with
# their figures collected into bench/results/chaos.md: for each fault, the
# tasks acknowledged (all succeeded, each with exactly one stored outcome),
# refusals, the share of the baseline acceptance rate kept during the fault
# and how long acceptance took to recover. Runs as root (PostgreSQL's own
# server runs as `postgres`; the SQLite disk-full case mounts a tmpfs).
# PROFILE=dev runs the debug build the suite already compiled.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/results
out=$(mktemp)
trap 'rm -f "$out"' EXIT
SWARMD_TEST_REQUIRE_ALL=1 cargo test --profile "${PROFILE:-release}" -q -p swarmd --test chaos -- --nocapture --test-threads=1 2>&1 | tee "$out" | grep -oE "CHAOS .*|test result.*" >&2
{
    echo "| fault | acknowledged | refused (503/429) | unreachable | 5xx | baseline/s | kept during the fault | recovered to 90% in |"
    echo "|---|---|---|---|---|---|---|---|"
    # With --nocapture a figure can follow a test's name on the same line.
    grep -oE "CHAOS .*" "$out" | sed -nE 's/^CHAOS (.*): ([0-9]+) acknowledged \(([0-9]+) stored.*\), ([0-9]+) refused with 503\/429, ([0-9]+) unreachable, ([0-9]+) errors; baseline ([0-9]+)\/s, ([0-9]+)% of it kept during the fault; recovered to 90% in (.*)$/| \1 | \2 | \4 | \5 | \6 | \7 | \8% | \9 |/p'
} > bench/results/chaos.md
cat bench/results/chaos.md
