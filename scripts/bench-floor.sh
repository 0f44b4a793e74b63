#!/usr/bin/env bash
# The fan-out floor of this machine (issue 3's latency target), beside FlightDeck itself.
#
#   scripts/bench-floor.sh             # about 5 minutes; Markdown on stdout, progress on stderr
#
# `flightdeck bench floor` writes a ready-made frame 1,000 times a second to 100 loopback TCP
# connections from a separate process (one task per connection, as the SSE streams) and reads
# them: send→client latency with no HTTP, JSON or database in the way. Whatever FlightDeck does
# comes on top of that. The script runs, in turn, BENCH_ROUNDS times:
#   alone    the floor on an otherwise idle machine;
#   beside   the floor while `flightdeck bench delivery` POSTs 1,000 events/s, one per request, to
#            a `flightdeck serve` (embedded PostgreSQL) with one SSE subscriber: the appends the
#            latency target is about, without their fan-out to 100 streams;
#   insert   each frame waits for an autocommit INSERT of its own into that server's PostgreSQL
#            (`--database`): commit→client for a "server" that only appends and fans out;
#   minimal  each frame's event is POSTed to a minimal HTTP server inside the floor's writer
#            (`--minimal-http`: parse the JSON, INSERT, write the frame, answer 201): what any
#            server that takes events over HTTP must do per event, on this machine;
#   ingest   each frame's event is POSTed to the server (`--ingest-url`) and the frame goes out on
#            the 201: FlightDeck's ingestion followed by a fan-out that costs nothing extra;
#   FlightDeck  `bench delivery` with 100 SSE subscribers at 1,000 events/s.
# commit→client comes from PostgreSQL's commit timestamps, as in scripts/bench-delivery.sh.
#
# Environment: BENCH_ROUNDS (default 3), BENCH_SECONDS (timed seconds per floor run, default 8),
# BENCH_PORT (default 18090), FLIGHTDECK_BIN (default target/release/flightdeck, built if missing or
# BENCH_BUILD=1). Needs curl. Everything started is stopped and the scratch directory removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${BENCH_ROUNDS:-3}
SECS=${BENCH_SECONDS:-8}
PORT=${BENCH_PORT:-18090}
BIN=${FLIGHTDECK_BIN:-target/release/flightdeck}
URL="http://127.0.0.1:$PORT"

command -v curl >/dev/null || { echo "bench-floor.sh needs curl" >&2; exit 1; }
# shellcheck source=scripts/bench-server.sh
. scripts/bench-server.sh
prepare_bench

WORK=$(mktemp -d /tmp/flightdeck-floor.XXXXXX)
chmod 755 "$WORK" # the embedded PostgreSQL runs as `postgres` when root and must reach its data
DATA="$WORK/data"
LOAD_PID=""
cleanup() {
    [ -z "$LOAD_PID" ] || kill "$LOAD_PID" 2>/dev/null || true
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), kernel \
$(uname -r); load average before the run: $(cut -d' ' -f1-3 /proc/loadavg). Checkout \
$(git rev-parse --short HEAD 2>/dev/null || echo unknown); binary $BIN, built $(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC')."
echo

# Commit timestamps on, for the real case's commit→client.
start_with_commit_times floor

# floor LABEL [--no-header]
floor() { "$BIN" bench floor --subscribers 100 --rate 1000 --seconds "$SECS" --warmup 1 --label "$@"; }

echo "### The floor: 100 connections × 1,000 frames/s, ${SECS} s timed per run"
echo
for round in $(seq "$ROUNDS"); do
    echo "== round $round: alone" >&2
    if [ "$round" = 1 ]; then floor alone; else floor alone --no-header; fi
    echo "== round $round: beside 1,000 appends/s" >&2
    "$BIN" bench delivery --url "$URL" --subscribers 1 --rate 1000 --seconds $((SECS + 4)) --warmup 1 \
        --commit-times-url "$COMMIT_TIMES" >"$WORK/load-$round.md" 2>/dev/null &
    LOAD_PID=$!
    sleep 2
    floor beside --no-header
    wait "$LOAD_PID"
    LOAD_PID=""
    echo "== round $round: behind an INSERT each" >&2
    floor insert --no-header --database "$COMMIT_TIMES"
    echo "== round $round: behind a minimal HTTP server" >&2
    floor minimal --no-header --database "$COMMIT_TIMES" --minimal-http
    echo "== round $round: behind FlightDeck's ingestion" >&2
    floor ingest --no-header --database "$COMMIT_TIMES" --ingest-url "$URL"
    echo "== round $round: FlightDeck, 100 SSE subscribers × 1,000 events/s" >&2
    "$BIN" bench delivery --url "$URL" --subscribers 100 --rate 1000 --seconds "$SECS" --warmup 1 \
        --commit-times-url "$COMMIT_TIMES" >"$WORK/flightdeck-$round.md" 2>/dev/null
done
echo
echo "### The load beside it: \`bench delivery\`, 1 subscriber × 1,000 events/s, $((SECS + 4)) s timed"
echo
grep -m 2 -E '^\|' "$WORK/load-1.md"
cat "$WORK"/load-*.md | grep -E '^\| [0-9]'
echo
echo "### FlightDeck: \`bench delivery\`, 100 SSE subscribers × 1,000 events/s, $SECS s timed, one run per round"
echo
grep -m 2 -E '^\|' "$WORK/flightdeck-1.md"
cat "$WORK"/flightdeck-*.md | grep -E '^\| [0-9]'
