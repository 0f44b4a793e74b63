# Sourced by the benchmark scripts: check what they need, then start and stop one
# `flightdeck serve` on loopback with the embedded PostgreSQL in a scratch data directory.
# Needs PORT, URL and BIN set, and for start_server also WORK (a scratch directory) and DATA (the
# data directory); keeps the running server's pid in SERVER_PID.
# shellcheck shell=bash

SERVER_PID=""

# prepare_bench: builds the release binary if $BIN is missing (or BENCH_BUILD=1), and refuses to
# run over something already listening on $URL.
prepare_bench() {
    if [ ! -x "$BIN" ] || [ "${BENCH_BUILD:-0}" = 1 ]; then
        echo "building the release binary" >&2
        cargo build --release --quiet
    fi
    if curl -s -o /dev/null "$URL/healthz"; then
        echo "something already listens on $URL; set BENCH_PORT" >&2
        exit 1
    fi
}

# stop_server: SIGTERM, then SIGKILL after 30 s; nothing if no server runs.
stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 300); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

# start_server NAME [serve flags…]: starts a server logging to $WORK/server-NAME.log and waits
# until it is ready; exits the script if it does not get there.
start_server() {
    local log="$WORK/server-$1.log"
    shift
    env -u DATABASE_URL FLIGHTDECK_ADDR="127.0.0.1:$PORT" FLIGHTDECK_DATA_DIR="$DATA" FLIGHTDECK_LOG=warn \
        "$BIN" serve --insecure-no-auth "$@" >"$log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 600); do
        curl -sf -o /dev/null "$URL/readyz" && return 0
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "the server exited:" >&2
            tail -n 20 "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "the server was not ready within 60 s" >&2
    exit 1
}

# start_with_commit_times NAME: starts a server whose PostgreSQL has track_commit_timestamp on
# (creating the cluster first if needed: the setting takes effect at a start), and
# track_wal_io_timing so that the bench reports how long the WAL flushes took, and sets
# COMMIT_TIMES, the connection string `bench delivery --commit-times-url` needs. The embedded
# cluster listens only on a Unix socket: its directory and port are lines 5 and 4 of postmaster.pid.
start_with_commit_times() {
    if [ ! -d "$DATA/postgres/data" ]; then
        start_server init
        stop_server
    fi
    printf 'track_commit_timestamp = on\ntrack_wal_io_timing = on\n' >>"$DATA/postgres/data/postgresql.auto.conf"
    start_server "$1"
    local socket port
    socket=$(sed -n 5p "$DATA/postgres/data/postmaster.pid")
    port=$(sed -n 4p "$DATA/postgres/data/postmaster.pid")
    COMMIT_TIMES="host=$socket port=$port user=postgres dbname=postgres"
}
