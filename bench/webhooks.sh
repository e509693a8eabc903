#!/usr/bin/env bash
# Completion webhooks (issue 17, part 4): how soon after a task ends its
# webhook arrives, and how many a node delivers per second. N echo tasks
# with a callback_url to a local receiver (bench/webhooks.py, Python's
# threaded http.server answering 204), on SQLite and on PostgreSQL, one
# fresh swarmd each. The lag is the receiver's arrival time minus the
# task's finished_at. Writes bench/results/webhooks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release/swarmd}
n=${TASKS:-2000}
pg=${SWARMD_BENCH_PG_URL:-${SWARMD_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}}
port=18971
recv=18972
dir=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
cat > "$dir/cfg.toml" <<CFG
[webhooks]
allow_hosts = ["127.0.0.1"]
secret = "whsec_$(head -c 32 /dev/urandom | base64)"
[pools.echo.queue]
capacity = 1000000
target_delay_ms = 0
CFG
rows=""
for db in sqlite postgres; do
    if [ "$db" = sqlite ]; then
        url="sqlite://$dir/w.db"
    else
        name="swarmd_webhooks_$$_$RANDOM"
        psql "$pg" -qc "CREATE DATABASE $name" > /dev/null
        url="${pg%/*}/$name"
    fi
    SWARMD_DATABASE_URL="$url" "$bin" serve --config "$dir/cfg.toml" --listen "127.0.0.1:$port" \
        > "$dir/serve.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" > /dev/null && break; sleep 0.1; done
    line=$(python3 bench/webhooks.py "$port" "$recv" "$n")
    echo "$db $line"
    rows+=$(python3 -c "import json,sys; r=json.loads(sys.argv[2]); print(f\"| {sys.argv[1]} | {r['received']}/{r['tasks']} | {r['duplicates']} | {r['lag_p50_ms']} | {r['lag_p99_ms']} | {r['lag_max_ms']} | {r['deliveries_per_s']} |\")" "$db" "$line")
    rows+=$'\n'
    kill "$pid"; wait "$pid" 2>/dev/null || true
    pid=
    [ "$db" = postgres ] && psql "$pg" -qc "DROP DATABASE $name" > /dev/null
done
{
    echo "# Completion webhooks (issue 17, part 4)"
    echo
    echo "\`bench/webhooks.sh\` ($(date -u +%Y-%m-%d), $(nproc) cores, $bin): $n echo tasks with a callback_url"
    echo "to a local receiver; defaults of [webhooks] (concurrency 16, a 200 ms poll)."
    echo
    echo "| database | delivered | duplicates | lag p50 ms | lag p99 ms | lag max ms | deliveries/s |"
    echo "|---|---|---|---|---|---|---|"
    printf "%s" "$rows"
} > bench/results/webhooks.md
cat bench/results/webhooks.md
