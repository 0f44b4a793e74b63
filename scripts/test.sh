#!/usr/bin/env bash
# The whole test suite, on a fresh machine, as root or not: installs what the tests need, then runs
# every test against real PostgreSQL clusters that the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

have_postgres() {
    command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

if ! have_postgres; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing PostgreSQL server binaries (apt-get install postgresql)" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
        echo "PostgreSQL server binaries are missing: run 'apt-get install postgresql' as root" >&2
        exit 1
    fi
fi
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/false postgres
fi

# Tests wait on I/O (PostgreSQL, sockets, child processes) far more than on CPU.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-6}"
cargo test --locked --all-targets "$@"
cargo test --locked --doc

# Hostile input over HTTP: schemathesis against the real `flightdeck serve`, generating requests from
# the OpenAPI description it serves (about 2 minutes; see scripts/api-fuzz.sh).
bash scripts/api-fuzz.sh

# The JavaScript client (assets/flightdeck.js) in a real browser: Debian's Chromium driven by
# playwright-core against the real `flightdeck serve` (tests/browser/).
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing Chromium for the browser tests (apt-get install chromium)" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "Chromium is missing for the browser tests: run 'apt-get install chromium' as root" >&2
        exit 1
    fi
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing Node.js for the browser tests (apt-get install nodejs npm)" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    else
        echo "Node.js 18 or newer (node and npm) is needed for the browser tests" >&2
        exit 1
    fi
fi
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
cargo build --locked
timeout 900 node --test --test-concurrency=1 --test-timeout=300000 tests/browser/
