#!/usr/bin/env bash
# The figure behind BENCHMARKS.md "100 concurrent communications tasks":
# starts a release swarmd on a fresh database, then runs `swarmd bench`
# twice with 100 concurrent clients: once holding each response until the
# task ends (wait_ms), once acknowledging at once and following the tasks.
#
#   bench/communications.sh            # SQLite file in a temp dir
#   bench/communications.sh postgres   # fresh database on $SWARMD_TEST_PG_URL
set -euo pipefail
cd "$(dirname "$0")/.."
backend="${1:-sqlite}"
cargo build --release -q -p swarmd
bin="$PWD/target/release/swarmd"
work="$(mktemp -d)"
port=18765
case "$backend" in
    sqlite) url="sqlite://$work/bench.db" ;;
    postgres)
        admin="${SWARMD_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
        name="swarmd_bench_$$"
        psql "$admin" -q -c "CREATE DATABASE $name"
        url="${admin%/*}/$name"
        ;;
    *) echo "usage: $0 [sqlite|postgres]" >&2; exit 2 ;;
esac
"$bin" serve --listen "127.0.0.1:$port" --database-url "$url" --log warn &
server=$!
cleanup() {
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    rm -rf "$work"
    if [ "$backend" = postgres ]; then psql "$admin" -q -c "DROP DATABASE IF EXISTS $name WITH (FORCE)"; fi
}
trap cleanup EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done

args='{"to":"ops@example.com","subject":"Outage","body":"db down, eta 1h"}'
echo "## $backend, $(nproc) cores, commit $(git rev-parse --short HEAD)"
echo "### with wait_ms (response = finished task)"
"$bin" bench --server "http://127.0.0.1:$port" --concurrency 100 --requests 100 \
    --type communications --args "$args" --wait-ms 30000
echo "### without wait (response = acknowledgement)"
"$bin" bench --server "http://127.0.0.1:$port" --concurrency 100 --requests 100 \
    --type communications --args "$args"
