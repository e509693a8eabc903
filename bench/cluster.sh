#!/usr/bin/env bash
# The cluster on PostgreSQL (issue 14), in one run on this machine:
#   echo      echo at 100 clients, end to end: SQLite, PostgreSQL with one
#             group commit at a time (write_pipeline = 1) and with the
#             default pipeline (4); beside them pgbench's simple-update
#             (`-N`, 100 clients) on the same server, the database's own
#             ceiling. ROUNDS rounds each (default 3), the median reported.
#   scaling   1, 2 and 3 nodes on one database with a latency-bound
#             department (sim, LATENCY ms (200), 32 at once per node), an
#             open loop at RATE/s (600)
#             above three nodes' capacity: once submitting to the first
#             node only (the others must claim its backlog), once spread
#             over all nodes. Completions per second in a steady window,
#             counted in the database.
#   burndown  BURN tasks (default 1,000,000) inserted as queued beforehand,
#             then one node starts and drains them (echo); tasks/s.
# Failover after kill -9 is measured by the cluster test itself
# (`cargo test -p swarmd --test cluster kill_nine -- --nocapture`).
# Writes bench/results/cluster.md.
#
#   bench/cluster.sh                 # all three
#   bench/cluster.sh echo scaling    # some
#   BIN=/tmp/swarmd-old BURN=300000 bench/cluster.sh burndown
set -euo pipefail
cd "$(dirname "$0")/.."
# BIN=path runs another build (e.g. an older one, side by side).
if [ -n "${BIN:-}" ]; then bin=$BIN; else
    cargo build --release -q -p swarmd
    bin=$PWD/target/release/swarmd
fi
rounds=${ROUNDS:-3}
burn=${BURN:-1000000}
pg_admin=${SWARMD_BENCH_PG_URL:-${SWARMD_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}}
export SWARMD_BENCH_PG_URL=$pg_admin
url="${pg_admin%/*}/swarmd_cluster"
dir=$(mktemp -d)
pids=()
out=bench/results/cluster.md
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(echo scaling burndown)
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    psql -q "$pg_admin" -c "DROP DATABASE IF EXISTS swarmd_cluster WITH (FORCE)" 2>/dev/null || true
    psql -q "$pg_admin" -c "DROP DATABASE IF EXISTS swarmd_pgbench WITH (FORCE)" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
fresh_db() {
    psql -q "$pg_admin" -c "DROP DATABASE IF EXISTS swarmd_cluster WITH (FORCE)" -c "CREATE DATABASE swarmd_cluster" -c CHECKPOINT
}
now_ms() { date +%s%3N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
start_node() { # id port config
    "$bin" serve --listen "127.0.0.1:$2" --database-url "$url" --node-id "$1" --config "$3" --log warn \
        > "$dir/$1.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 200); do curl -sf "http://127.0.0.1:$2/ready" > /dev/null && return; sleep 0.05; done
    echo "node $1 did not start:" >&2; cat "$dir/$1.log" >&2; exit 1
}
stop_nodes() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}
sql() { psql -qtA "$url" -c "$1"; }

{
echo "Machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB; PostgreSQL $(psql -qtA "$pg_admin" -c 'SHOW server_version'),"
echo "\`synchronous_commit = $(psql -qtA "$pg_admin" -c 'SHOW synchronous_commit')\`, \`max_wal_size = $(psql -qtA "$pg_admin" -c 'SHOW max_wal_size')\`; load generator, nodes and database share the machine."
echo
} > "$out"

for part in "${parts[@]}"; do
case "$part" in
echo)
    printf '[database]\nwrite_pipeline = 1\n' > "$dir/p1.toml"
    printf '[database]\nwrite_pipeline = 4\n' > "$dir/p4.toml"
    : > "$dir/echo.txt"
    for r in $(seq "$rounds"); do
        for t in sqlite pg-1 pg-4; do
            case $t in
                sqlite) a=(--database sqlite) ;;
                pg-1) a=(--database postgres --config "$dir/p1.toml") ;;
                pg-4) a=(--database postgres --config "$dir/p4.toml") ;;
            esac
            # Each run starts from a checkpoint (and `bench --launch` takes
            # another after creating its database): the WAL of the last run,
            # or the template copy of a new database, would otherwise be
            # flushed at a different moment of each run.
            psql -q "$pg_admin" -c CHECKPOINT
            line=$("$bin" bench --launch swarmd "${a[@]}" --type echo --concurrency 100 --duration 10s 2>/dev/null | grep '^| 100 ' || true)
            echo "$t $(echo "$line" | awk -F'|' '{gsub(/ /,"",$4); gsub(/ /,"",$6); gsub(/ /,"",$9); print $4, $6, $9}')" >> "$dir/echo.txt"
            echo "round $r $t: $line" >&2
        done
        psql -q "$pg_admin" -c "DROP DATABASE IF EXISTS swarmd_pgbench WITH (FORCE)" -c "CREATE DATABASE swarmd_pgbench"
        pgb="${pg_admin%/*}/swarmd_pgbench"
        pgbench -q -i -s 10 "$pgb" > /dev/null 2>&1
        psql -q "$pg_admin" -c CHECKPOINT
        tps=$(pgbench -c 100 -j 2 -T 10 -N "$pgb" 2>/dev/null | awk '/^tps/ {printf "%d", $3}')
        echo "pgbench $tps - -" >> "$dir/echo.txt"
        echo "round $r pgbench: $tps tps" >&2
    done
    {
        echo "**Echo end to end at 100 clients, beside the database's own ceiling.**"
        echo
        echo "Median of $rounds rounds of 10 s (\`swarmd bench --launch swarmd --type echo --concurrency 100\`;"
        echo "pgbench \`-N -c 100 -j 2 -T 10\`, scale 10). A task is three writes (stored, started, finished),"
        echo "each acknowledged after its commit; a pgbench transaction is three updates, an insert and a commit."
        echo "Every run starts from a \`CHECKPOINT\`."
        echo
        echo "| target | tasks/s (median) | all rounds | p99 submit ms (median) |"
        echo "|---|---|---|---|"
        for t in sqlite pg-1 pg-4 pgbench; do
            vals=$(awk -v t=$t '$1==t {print $2}' "$dir/echo.txt")
            p99=$(awk -v t=$t '$1==t {print $4}' "$dir/echo.txt" | median)
            name=$t
            case $t in
                sqlite) name="swarmd, SQLite" ;;
                pg-1) name="swarmd, PostgreSQL, \`write_pipeline = 1\`" ;;
                pg-4) name="swarmd, PostgreSQL, \`write_pipeline = 4\` (default)" ;;
                pgbench) name="pgbench \`-N\` (transactions/s)"; p99="–" ;;
            esac
            echo "| $name | $(echo "$vals" | median) | $(echo $vals | tr ' ' ',') | $p99 |"
        done
        echo
    } >> "$out"
    ;;
scaling)
    cat > "$dir/scale.toml" <<'EOF'
[pools.llm]
agent = "sim"
concurrency = 32
[pools.llm.queue]
capacity = 1000000
target_delay_ms = 0
EOF
    latency=${LATENCY:-200}
    rate=${RATE:-600}
    body="{\"type\":\"sim\",\"agent\":\"llm\",\"args\":{\"latency_ms\":$latency},\"timeout_ms\":600000}"
    per_node=$((32 * 1000 / latency))
    {
        echo "**1, 2 and 3 nodes, a latency-bound department.**"
        echo
        echo "Each node runs \`sim\` tasks of $latency ms, 32 at once ($per_node/s per node at most). An open"
        echo "loop offers $rate/s for 20 s, more than three nodes finish; completions are counted in the"
        echo "database between 5 s and 20 s."
        echo
        echo "| nodes | submitted to | completed/s | × one node | ran per node |"
        echo "|---|---|---|---|---|"
    } >> "$out"
    for entry in ${ENTRIES:-first spread}; do
        base=""
        for n in 1 2 3; do
            fresh_db
            for i in $(seq 1 "$n"); do start_node "n$i" $((18960 + i)) "$dir/scale.toml"; done
            t0=$(now_ms)
            gens=()
            if [ "$entry" = first ]; then
                "$bin" bench --raw --server http://127.0.0.1:18961 --method POST --path /api/tasks \
                    --body "$body" --rate "$rate" --duration 20s --quiet > /dev/null 2>&1 &
                gens+=($!)
            else
                for i in $(seq 1 "$n"); do
                    "$bin" bench --raw --server "http://127.0.0.1:$((18960 + i))" --method POST --path /api/tasks \
                        --body "$body" --rate $((rate / n)) --duration 20s --quiet > /dev/null 2>&1 &
                    gens+=($!)
                done
            fi
            wait "${gens[@]}"
            done_s=$(sql "SELECT count(*) FROM tasks WHERE finished_at BETWEEN $((t0 + 5000)) AND $((t0 + 20000))")
            per_s=$((done_s / 15))
            per_node=$(sql "SELECT string_agg(n || ' ' || c, ', ' ORDER BY n) FROM (SELECT split_part(nodes, ',', 1) AS n, count(*) AS c FROM tasks WHERE finished_at BETWEEN $((t0 + 5000)) AND $((t0 + 20000)) GROUP BY 1) x")
            [ -z "$base" ] && base=$per_s
            ratio=$(awk -v a="$per_s" -v b="$base" 'BEGIN {printf "%.2f", a / b}')
            to=$([ "$entry" = first ] && echo "n1 only" || echo "all nodes")
            echo "| $n | $to | $per_s | $ratio | $per_node |" >> "$out"
            echo "scaling $entry $n: $per_s/s ($ratio×) $per_node" >&2
            stop_nodes
        done
    done
    echo >> "$out"
    ;;
burndown)
    fresh_db
    printf '[pools.echo.queue]\ncapacity = 2000000\n' > "$dir/burn.toml"
    # The schema, then the backlog as one node's leftovers.
    start_node b1 18970 "$dir/burn.toml"
    stop_nodes
    sql "INSERT INTO tasks (id, tenant, type, status, priority, department, agent, args, timeout_ms, deadline_at, created_at, owner, timings)
         SELECT gen_random_uuid()::text, 'default', 'echo', 'queued', 2, 'echo', 'echo', '{\"i\":' || g || '}', 86400000,
                (extract(epoch from now()) * 1000)::bigint + 86400000, (extract(epoch from now()) * 1000)::bigint, 'b1', '{}'
         FROM generate_series(1, $burn) g" > /dev/null
    sql "VACUUM ANALYZE tasks" > /dev/null
    t0=$(now_ms)
    start_node b1 18970 "$dir/burn.toml"
    # Ready once it has taken its leftovers back (the tasks left running
    # requeued, the queued ones read) and queued them.
    t_ready=$(now_ms)
    while :; do
        left=$(sql "SELECT count(*) FROM tasks WHERE owner IS NOT NULL")
        [ "$left" = 0 ] && break
        sleep 1
    done
    t1=$(now_ms)
    rss=$(ps -o rss= -p "${pids[0]}" | awk '{printf "%d", $1 / 1024}')
    stop_nodes
    ms=$((t1 - t0))
    back=$((t_ready - t0))
    drain=$((t1 - t_ready))
    {
        echo "**Burn-down: $burn tasks queued beforehand.**"
        echo "One node starts on a database holding $burn queued echo tasks it owns (inserted by SQL, then"
        echo "\`VACUUM ANALYZE\`), takes them back and runs them all (River's benchmark shape)."
        echo
        echo "| tasks | taken back and queued | then drained in | drain tasks/s | start to last outcome, tasks/s | node RSS after |"
        echo "|---|---|---|---|---|---|"
        echo "| $burn | $((back / 1000)).$(((back % 1000) / 100)) s | $((drain / 1000)).$(((drain % 1000) / 100)) s | $((burn * 1000 / drain)) | $((burn * 1000 / ms)) | $rss MiB |"
        echo
    } >> "$out"
    echo "burndown: $burn in $ms ms" >&2
    ;;
*) echo "unknown part $part" >&2; exit 2 ;;
esac
done
cat "$out"
