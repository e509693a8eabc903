#!/usr/bin/env bash
# Retention soak (issue 13): echo tasks flow at RATE/s (default 400) for
# DURATION seconds (default 180) while `[database] retention` is RETAIN
# (default 30s), and the tasks table is sampled every SAMPLE seconds (15):
# its rows and its size on disk. The same flow then runs with retention
# "0" (keep everything) for comparison. SQLite and PostgreSQL
# (SWARMD_BENCH_PG_URL, default the local test server). Writes
# bench/results/retention-soak.md.
#
#   bench/retention-soak.sh
#   DURATION=60 RETAIN=15s bench/retention-soak.sh    # quicker
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p swarmd
bin=target/release/swarmd
rate=${RATE:-400}
duration=${DURATION:-180}
sample=${SAMPLE:-15}
retain=${RETAIN:-30s}
pg_admin=${SWARMD_BENCH_PG_URL:-${SWARMD_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}}
port=${SWARMD_BENCH_PORT:-18961}
dir=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    psql -q "$pg_admin" -c "DROP DATABASE IF EXISTS swarmd_soak WITH (FORCE)" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

measure() { # $1 = backend, $2 = db url; prints "rows bytes"
    case "$1" in
        sqlite) sqlite3 "${2#sqlite://}" \
            "SELECT (SELECT count(*) FROM tasks), (SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size())" |
            tr '|' ' ' ;;
        postgres) psql -qtA -F ' ' "$2" -c "SELECT count(*), pg_total_relation_size('tasks') FROM tasks" ;;
    esac
}

soak() { # $1 = backend, $2 = retention; writes $dir/$1-$2.tsv
    local url
    case "$1" in
        sqlite) rm -f "$dir/soak.sqlite"*; url="sqlite://$dir/soak.sqlite" ;;
        postgres)
            psql -q "$pg_admin" -c "DROP DATABASE IF EXISTS swarmd_soak WITH (FORCE)" -c "CREATE DATABASE swarmd_soak"
            url="${pg_admin%/*}/swarmd_soak" ;;
    esac
    printf '[database]\nretention = "%s"\n' "$2" > "$dir/soak.toml"
    "$bin" serve --config "$dir/soak.toml" --listen "127.0.0.1:$port" --database-url "$url" > "$dir/serve.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" > /dev/null && break; sleep 0.1; done
    "$bin" bench --name soak --server "http://127.0.0.1:$port" --type echo --args '{"n":1}' \
        --rate "$rate" --warmup 0s --duration "${duration}s" --out "$dir" --quiet > /dev/null 2>&1 &
    local load=$!
    : > "$dir/$1-$2.tsv"
    for t in $(seq 0 "$sample" "$duration"); do
        echo "$t $(measure "$1" "$url")" >> "$dir/$1-$2.tsv"
        sleep "$sample"
    done
    wait "$load" || true
    curl -s "http://127.0.0.1:$port/api/status" |
        python3 -c "import json,sys; r=json.load(sys.stdin)['database']['retention']; print(r['deleted_tasks'])" > "$dir/$1-$2.deleted"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    pid=
}

for backend in sqlite postgres; do
    echo "== $backend, retention $retain" >&2
    soak "$backend" "$retain"
    echo "== $backend, keep everything" >&2
    soak "$backend" 0
done
mkdir -p bench/results
python3 - "$dir" "$retain" "$rate" <<'PY' > bench/results/retention-soak.md
import sys
d, retain, rate = sys.argv[1], sys.argv[2], sys.argv[3]
def rows(f):
    return [tuple(int(x) for x in l.split()) for l in open(f) if l.strip()]
for backend in ("sqlite", "postgres"):
    a, b = rows(f"{d}/{backend}-{retain}.tsv"), rows(f"{d}/{backend}-0.tsv")
    deleted = open(f"{d}/{backend}-{retain}.deleted").read().strip()
    print(f"**{backend}** ({rate} echo tasks/s; retention {retain} deleted {int(deleted):,} tasks):\n")
    print(f"| s | rows, retention {retain} | MiB, retention {retain} | rows, keep all | MiB, keep all |")
    print("|---|---|---|---|---|")
    for (t, r1, s1), (_, r2, s2) in zip(a, b):
        print(f"| {t} | {r1:,} | {s1 / 2**20:.1f} | {r2:,} | {s2 / 2**20:.1f} |")
    print()
PY
cat bench/results/retention-soak.md
