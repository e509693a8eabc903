#!/usr/bin/env bash
# Fuzzes a live swarmd against its own OpenAPI document with schemathesis
# (https://schemathesis.readthedocs.io), twice: without API keys, then with
# `[[tenants]]` keys (requests carry an admin key; schemathesis also tries
# them without). Every check runs, stateful links included; the run fails on
# any 5xx, any response the document does not allow, and any refused valid
# or accepted invalid request (see .ci/schemathesis.toml for the one
# narrowing).
#
# Usage: .ci/schemathesis.sh            (builds swarmd if needed)
# Settings (environment):
#   SCHEMATHESIS_MAX_TIME  seconds per mode (default 75)
#   SCHEMATHESIS_EXAMPLES  test cases per operation (default 40)
#   SCHEMATHESIS_SEED      random seed (default 1, so CI is repeatable)
#   SWARMD                 the swarmd binary (default: built by cargo)
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_TIME="${SCHEMATHESIS_MAX_TIME:-75}"
EXAMPLES="${SCHEMATHESIS_EXAMPLES:-40}"
SEED="${SCHEMATHESIS_SEED:-1}"

if ! command -v schemathesis >/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check schemathesis
fi
if [[ -z "${SWARMD:-}" ]]; then
    cargo build --quiet -p swarmd
    SWARMD="${CARGO_TARGET_DIR:-target}/debug/swarmd"
fi

config="$PWD/.ci/schemathesis.toml"
work="$(mktemp -d)"
pid=""
stop() {
    if [[ -n "$pid" ]]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=""
    fi
}
trap 'stop; rm -rf "$work"' EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

sha256() {
    printf '%s' "$1" | sha256sum | cut -d' ' -f1
}

# One mode: $1 names it, $2 is extra TOML, the rest goes to schemathesis.
run_mode() {
    local mode="$1" extra="$2"
    shift 2
    local port
    port="$(free_port)"
    cat >"$work/$mode.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
# Waits and task deadlines short, so a fuzzed body cannot hold a request
# (or an event stream) for minutes.
max_wait_ms = 2000

[database]
url = "sqlite://$work/$mode.db"

# Two replicas, so the instance API has something it may change.
[pools.echo]
replicas = 2

[pools.sim]
max_timeout_ms = 5000
default_timeout_ms = 5000
# Batches of up to 1,000 fuzzed tasks build real queues; without shedding
# and with room to run them, a later request is judged on its own input,
# not refused 503 for the load an earlier batch left.
concurrency = 2000
[pools.sim.queue]
capacity = 1000000
target_delay_ms = 0
[pools.echo.queue]
capacity = 1000000
target_delay_ms = 0

$extra
TOML
    "$SWARMD" serve --config "$work/$mode.toml" --log warn >"$work/$mode.log" 2>&1 &
    pid=$!
    local base="http://127.0.0.1:$port"
    for _ in $(seq 1 100); do
        curl -fsS "$base/health" >/dev/null 2>&1 && break
        kill -0 "$pid" 2>/dev/null || { cat "$work/$mode.log"; return 1; }
        sleep 0.1
    done
    echo "== schemathesis: $mode ($base)"
    local rc=0
    # From the scratch folder, so schemathesis's cache stays out of the tree.
    (cd "$work" && schemathesis --config-file "$config" run "$base/api/openapi.json" \
        --checks all \
        --max-examples "$EXAMPLES" \
        --max-time "$MAX_TIME" \
        --seed "$SEED" \
        --request-timeout 30 \
        --exclude-operation-id cpu_profile \
        --no-color \
        "$@") || rc=$?
    stop
    if [[ $rc -ne 0 ]]; then
        echo "schemathesis failed in mode $mode; server log:"
        tail -n 50 "$work/$mode.log"
        return "$rc"
    fi
}

# The CPU profile (`/debug/pprof/profile`) is left out: each call samples
# for 1-60 s and only one runs at a time, so fuzzing it is mostly waiting.
# Its parameters are checked by its unit test and `tests/profile.rs`.

run_mode no-keys ""

client_key="client-$RANDOM$RANDOM"
admin_key="admin-$RANDOM$RANDOM"
run_mode keys "
[[tenants]]
name = \"acme\"
role = \"client\"
key_sha256 = \"$(sha256 "$client_key")\"

[[tenants]]
name = \"ops\"
role = \"admin\"
key_sha256 = \"$(sha256 "$admin_key")\"
" -H "Authorization: Bearer $admin_key"

echo "schemathesis: both modes passed"
