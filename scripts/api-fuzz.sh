#!/usr/bin/env bash
# Hostile input over HTTP: schemathesis generates requests from the OpenAPI description the server
# serves (/api/openapi.json) and sends them to a real `flightdeck serve` (embedded PostgreSQL in a
# scratch directory) on a loopback port. Every answer must be no 5xx, a documented status, the
# documented content type and headers, and a body matching the documented schema; a request that
# breaks the description must be refused with a 4xx; a wrong method gets 405 with `Allow`.
#
#   bash scripts/api-fuzz.sh            # about 2 minutes; API_FUZZ_SECONDS, API_FUZZ_EXAMPLES,
#                                       # API_FUZZ_SEED (default: fixed, for a repeatable CI run)
#
# The two Server-Sent Events streams (GET /api/events, GET /api/stats/stream) are left out: a valid
# request opens a stream that never ends, which schemathesis can only report as a timeout. Their
# query parsers are fuzzed in-process instead (fuzz/, target sse_query) and their 400s are tested in
# tests/http.rs. The WebSocket route is included: schemathesis sends plain GETs, which must be
# refused with a JSON 400.
#
# The server runs as users run it, with tokens required: schemathesis sends a token for every site
# that subscribes and publishes (`flightdeck token create` on the same data directory) as
# `Authorization: Bearer`, and its `ignored_auth` check holds the protected routes to a 401
# without it.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${API_FUZZ_SECONDS:-100}"
examples="${API_FUZZ_EXAMPLES:-150}"
seed="${API_FUZZ_SEED:-6}"
venv="${API_FUZZ_VENV:-target/api-fuzz/venv}"

# schemathesis, pinned, in a venv of its own.
if [ ! -x "$venv/bin/schemathesis" ] || ! cmp -s tests/api/requirements.txt "$venv/requirements.txt"; then
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then
            echo "installing python3-venv (apt-get install python3-venv)" >&2
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        else
            echo "python3 with venv is needed: run 'apt-get install python3-venv' as root" >&2
            exit 1
        fi
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/api/requirements.txt
    cp tests/api/requirements.txt "$venv/requirements.txt"
fi

cargo build --locked --quiet
binary="target/debug/flightdeck"

# A scratch data directory the `postgres` user can reach when we run as root.
scratch="$(mktemp -d "${TMPDIR:-/tmp}/flightdeck-api-fuzz-XXXXXX")"
chmod 755 "$scratch"
log="$scratch/serve.log"
pid=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    if [ "${API_FUZZ_KEEP:-}" = "" ]; then rm -rf "$scratch"; else echo "kept $scratch" >&2; fi
}
trap cleanup EXIT

env -u DATABASE_URL -u FLIGHTDECK_PG_BIN_DIR FLIGHTDECK_ADDR=127.0.0.1:0 FLIGHTDECK_LOG=info NO_COLOR=1 \
    "$binary" serve --data-dir "$scratch/data" 2>"$log" >/dev/null &
pid=$!
base=""
for _ in $(seq 1 600); do
    base="$(grep -o 'listening on http://[0-9.:]*' "$log" | head -1 | sed 's/listening on //')" || true
    [ -n "$base" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "flightdeck serve exited before listening" >&2; exit 1; }
    sleep 0.1
done
[ -n "$base" ] || { cat "$log" >&2; echo "flightdeck serve did not start listening" >&2; exit 1; }
for _ in $(seq 1 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/readyz")" = 200 ] && break
    sleep 0.1
done
token="$(env -u DATABASE_URL "$binary" token create --data-dir "$scratch/data" --site '*' --subscribe --publish --ttl 1h)"
echo "api-fuzz: schemathesis against $base (seed $seed, at most $examples examples per operation, ${seconds}s)" >&2

# Every check but positive_data_acceptance ("a request the description allows is accepted"): the
# description cannot say all the rules (no \u0000 in event data, the fields each tracker event type
# needs, a stats range of at most 31 days, a WebSocket handshake's headers), so some requests it
# allows are rightly refused with a 400. negative_data_rejection holds: whatever breaks the
# description is refused with a 4xx. API_FUZZ_CHECKS=a,b,c runs just those.
if [ -n "${API_FUZZ_CHECKS:-}" ]; then
    checks=(--checks "$API_FUZZ_CHECKS")
else
    checks=(--checks all --exclude-checks positive_data_acceptance)
fi
# One worker: with two, schemathesis's threads hit a CPython 3.11 bug ("AST constructor recursion
# depth mismatch") and report it as errors; one also keeps the load on a 2-core machine low.
# Run from the scratch directory: schemathesis keeps its replay cache (.schemathesis/) in the
# current directory.
schemathesis="$(cd "$venv" && pwd)/bin/schemathesis"
config="$PWD/tests/api/schemathesis.toml"
status=0
(cd "$scratch" && "$schemathesis" --config-file "$config" run "$base/api/openapi.json" \
    "${checks[@]}" \
    -H "Authorization: Bearer $token" \
    --exclude-operation-id streamEvents --exclude-operation-id statsStream \
    --max-examples "$examples" --max-time "$seconds" --seed "$seed" \
    --workers 1 --request-timeout 10 --suppress-health-check all \
    --report junit --report-dir "$scratch/report") || status=$?

if [ "$status" != 0 ]; then
    echo "api-fuzz: schemathesis failed (exit $status); the server's log:" >&2
    tail -n 50 "$log" >&2
fi

# Whatever was stored must also have been delivered: an event that the log reader cannot read back
# would stall real-time delivery for every subscriber while each request still looks fine.
metric() { curl -s "$base/metrics" | awk -v name="$1" '$1 == name { print $2 }'; }
appended="" delivered=""
for _ in $(seq 1 100); do
    appended="$(metric flightdeck_events_appended_total)"
    delivered="$(metric flightdeck_events_delivered_total)"
    [ -n "$appended" ] && [ "$appended" = "$delivered" ] && break
    sleep 0.1
done
echo "api-fuzz: $appended events appended, $delivered delivered" >&2
if [ -z "$appended" ] || [ "$appended" != "$delivered" ]; then
    echo "api-fuzz: not every appended event was delivered" >&2
    status=1
fi
# Whatever schemathesis says, the server must not have panicked or logged a problem.
if grep -qE 'panicked| WARN | ERROR ' "$log"; then
    grep -nE -A3 'panicked| WARN | ERROR ' "$log" | head -n 40 >&2
    echo "api-fuzz: the server panicked or logged warnings/errors (above)" >&2
    status=1
fi
exit "$status"
