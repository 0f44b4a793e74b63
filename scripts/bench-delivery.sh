#!/usr/bin/env bash
# Delivery and ingestion benchmarks (issue 3), measured by a client outside the server process.
#
#   scripts/bench-delivery.sh            # about 4 minutes; Markdown on stdout, progress on stderr
#
# 1. Ingestion over HTTP (`flightdeck bench ingest`, 64 clients, one event per request) against
#    four server configurations, each run in its own `flightdeck serve` process, in the order
#    on, on+SSE, off, seed, seed, off, on+SSE, on, twice (so drift on a shared machine favours none):
#      on      `serve` (FlightDeck's design: group commit, coalesced NOTIFY), no subscriber
#      on+SSE  the same, with one SSE subscriber reading every event
#      off     `serve --no-delivery` (stores, never delivers)
#      seed    `serve --append-mode seed` (one transaction per append with a pg_notify carrying
#              the event, as the original sketch)
# 2. Delivery (`flightdeck bench delivery`) against a normal server: 100 SSE subscribers at 1,000
#    events/s, then 10,000 subscribers at 10 events/s. For this part only, the cluster runs with
#    `track_commit_timestamp = on` and `track_wal_io_timing = on` (written into
#    postgresql.auto.conf while it is stopped), and the bench reads PostgreSQL's commit timestamps
#    to report commit→client, and pg_stat_wal to report the WAL flushes' mean time (the disk's
#    part of it); the ingestion runs keep the defaults (off), so they compare what they always
#    compared.
#
# Every server uses FlightDeck's embedded, durable PostgreSQL in one scratch data directory (one
# initdb), listens on loopback only, and is stopped with SIGTERM. Everything this script started
# is stopped and the scratch directory removed on exit, however it exits.
#
# Environment: BENCH_SECONDS (timed seconds per ingestion run, default 8), BENCH_ROUNDS (default 2),
# BENCH_DELIVERY_SECONDS (timed seconds per delivery case, default 10), BENCH_CLIENTS (default 64),
# BENCH_PORT (default 18080), FLIGHTDECK_BIN (default target/release/flightdeck, built if missing
# or BENCH_BUILD=1). Needs curl and jq. Runs as root or not.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${BENCH_SECONDS:-8}
ROUNDS=${BENCH_ROUNDS:-2}
DELIVERY_SECS=${BENCH_DELIVERY_SECONDS:-10}
PORT=${BENCH_PORT:-18080}
CLIENTS=${BENCH_CLIENTS:-64}
BIN=${FLIGHTDECK_BIN:-target/release/flightdeck}
URL="http://127.0.0.1:$PORT"
BIG=10000

for tool in curl jq; do
    command -v "$tool" >/dev/null || { echo "bench-delivery.sh needs $tool" >&2; exit 1; }
done
# shellcheck source=scripts/bench-server.sh
. scripts/bench-server.sh
prepare_bench

# 10,000 SSE streams need 10,000 sockets in the client and in the server (both inherit this).
ulimit -n 30000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((BIG + 500)) ]; then
    echo "open-files limit $(ulimit -n) is too low for $BIG subscribers: the 10,000 case will be skipped" >&2
    BIG=0
fi

WORK=$(mktemp -d /tmp/flightdeck-bench.XXXXXX)
chmod 755 "$WORK" # the embedded PostgreSQL runs as `postgres` when root and must reach its data
DATA="$WORK/data"
cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# snapshot FILE: CPU ticks (1/100 s) of the server ("server") and of PostgreSQL's processes.
snapshot() {
    local postmaster pids
    postmaster=$(head -n 1 "$DATA/postgres/data/postmaster.pid" 2>/dev/null || true)
    pids="$postmaster $(ps -o pid= --ppid "${postmaster:-0}" 2>/dev/null | tr '\n' ' ')"
    {
        awk -v g=server -v p="$SERVER_PID" '{ sub(/^.*\) /, ""); print g, p, $12 + $13 }' "/proc/$SERVER_PID/stat"
        for p in $pids; do
            [ -r "/proc/$p/stat" ] && awk -v g=postgres -v p="$p" '{ sub(/^.*\) /, ""); print g, p, $12 + $13 }' "/proc/$p/stat"
        done
    } >"$1" 2>/dev/null || true
}

# cores BEFORE AFTER SECONDS: average cores used by each group between two snapshots, as JSON.
cores() {
    awk -v secs="$3" 'FNR == NR { before[$2] = $3; next }
        { used[$1] += $3 - ($2 in before ? before[$2] : 0) }
        END { printf "{\"serverCores\":%.2f,\"pgCores\":%.2f}\n", used["server"] / 100 / secs, used["postgres"] / 100 / secs }' \
        "$1" "$2"
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { print b - a }'; }

echo "== machine" >&2
{
    echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), \
$(free -g | awk '/Mem:/ { print $2 }') GiB RAM, kernel $(uname -r); load average before the run: \
$(cut -d' ' -f1-3 /proc/loadavg). Checkout $(git rev-parse --short HEAD 2>/dev/null || echo unknown)\
$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)'); binary $BIN, built \
$(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC'). Server, PostgreSQL and client share the machine."
    echo
} | tee "$WORK/facts.md" >&2

echo "== ingestion: $CLIENTS clients, one event per request, $SECS s per run" >&2
declare -A FLAGS=([on]="" [on-sse]="" [off]="--no-delivery" [seed]="--append-mode seed")
declare -A SUBS=([on]=0 [on-sse]=1 [off]=0 [seed]=0)
for mode in $(for _ in $(seq "$ROUNDS"); do echo on on-sse off seed seed off on-sse on; done); do
    # shellcheck disable=SC2086 # FLAGS holds separate words
    start_server "$mode" ${FLAGS[$mode]}
    snapshot "$WORK/before"
    t0=$(now)
    result=$("$BIN" bench ingest --url "$URL" --clients "$CLIENTS" --seconds "$SECS" --warmup 2 \
        --subscribers "${SUBS[$mode]}" --label "$mode" --json)
    t1=$(now)
    snapshot "$WORK/after"
    cpu=$(cores "$WORK/before" "$WORK/after" "$(elapsed "$t0" "$t1")")
    echo "$result" | jq -c --arg mode "$mode" --argjson cpu "$cpu" '. + {mode: $mode} + $cpu' | tee -a "$WORK/ingest.jsonl" >&2
    stop_server
done

echo "== delivery" >&2
# Commit timestamps for commit→client (the ingestion runs kept PostgreSQL's default).
start_with_commit_times delivery
delivery_case() {
    snapshot "$WORK/before"
    t0=$(now)
    "$BIN" bench delivery --url "$URL" --subscribers "$1" --rate "$2" --seconds "$DELIVERY_SECS" --warmup 1 \
        --commit-times-url "$COMMIT_TIMES" >"$WORK/delivery-$1.md"
    t1=$(now)
    snapshot "$WORK/after"
    echo "$1 × $2/s, server and PostgreSQL over the whole case (opening streams included): \
$(cores "$WORK/before" "$WORK/after" "$(elapsed "$t0" "$t1")")" >>"$WORK/delivery-$1.md"
}
delivery_case 100 1000
[ "$BIG" = 0 ] || delivery_case "$BIG" 10
stop_server

# The report.
cat "$WORK/facts.md"
echo "### Ingestion over HTTP ($CLIENTS clients, one event per request, $SECS s per run)"
echo
if [ ! -s "$WORK/ingest.jsonl" ]; then
    echo "Not run (BENCH_ROUNDS=$ROUNDS)."
else
jq -rs '
  def mean(f): (map(f) | add / length);
  def fmt: (. * 100 | round / 100 | tostring);
  def verdict(ok): if ok then "met" else "NOT met" end;
  (group_by(.mode) | map({key: .[0].mode, value: .}) | from_entries) as $g
  | ($g.off | mean(.eventsPerSecond)) as $off
  | ($g.seed | mean(.eventsPerSecond)) as $seed
  | "| server | runs, events/s | mean events/s | × off | × seed | POST p50 / p99 ms (mean of runs) "
    + "| cores: server / PostgreSQL / client | log reads / NOTIFY wake-ups per event | SSE delivered |",
    "|---|---|---:|---:|---:|---|---|---|---|",
    (["on", "on-sse", "off", "seed"][] as $m | $g[$m] | select(.) | mean(.eventsPerSecond) as $eps
      | "| \($m) | \(map(.eventsPerSecond | tostring) | join(", ")) | \($eps | round) "
        + "| \($eps / $off | fmt)x | \($eps / $seed | fmt)x | \(mean(.p50Ms | tonumber) | fmt) / \(mean(.p99Ms | tonumber) | fmt) "
        + "| \(mean(.serverCores) | fmt) / \(mean(.pgCores) | fmt) / \(mean(.clientCores // 0) | fmt) "
        + "| \(if .[0].logReadsPerEvent then "\(mean(.logReadsPerEvent) | fmt) / \(mean(.notifyWakeupsPerEvent) | fmt)" else "–" end) "
        + "| \(map(.delivered | select(. != "")) | join("; ") | if . == "" then "–" else . end) |"),
    "",
    (["on", "on-sse"][] as $m | $g[$m] | select(.) | mean(.eventsPerSecond) as $eps
      | "Targets for \($m): ≥ 0.8× off: \($eps / $off | fmt)x, \(verdict($eps >= 0.8 * $off)); "
        + "≥ 3× seed: \($eps / $seed | fmt)x, \(verdict($eps >= 3 * $seed)).")
' "$WORK/ingest.jsonl"
fi
echo
echo "### Delivery (SSE, $DELIVERY_SECS s timed per case)"
echo
for f in "$WORK"/delivery-*.md; do
    cat "$f"
    echo
done
