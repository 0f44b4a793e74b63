#!/usr/bin/env bash
# The Autobahn WebSocket conformance suite (wstest, fuzzingclient mode) against
# examples/ws_echo.rs: FlightDeck's WebSocket stack (axum `ws` over tungstenite) behind an echo
# route. Not part of CI (it takes minutes and needs Python 2.7). Results: docs/autobahn.md.
#
# autobahntestsuite is Python 2 only: set PY2 to a Python 2.7 interpreter (default: pyenv's).
# It is installed once into a virtualenv under target/autobahn/ (AUTOBAHN_VENV to change).
set -euo pipefail
cd "$(dirname "$0")/.."

PY2="${PY2:-/root/.pyenv/versions/2.7.18/bin/python}"
VENV="${AUTOBAHN_VENV:-target/autobahn/venv}"
ADDR=127.0.0.1:9001

if [ ! -x "$VENV/bin/wstest" ]; then
    "$PY2" -m virtualenv --version >/dev/null 2>&1 || "$PY2" -m pip install --quiet 'virtualenv<20.22'
    "$PY2" -m virtualenv --quiet "$VENV"
    "$VENV/bin/pip" install --quiet autobahntestsuite
fi

cargo build --release --example ws_echo
target/release/examples/ws_echo "$ADDR" &
ECHO=$!
trap 'kill "$ECHO" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/${ADDR%:*}/${ADDR#*:}") 2>/dev/null && break
    sleep 0.1
done

rm -rf target/autobahn/reports
"$VENV/bin/wstest" -m fuzzingclient -s scripts/autobahn-fuzzingclient.json

# Summary per section: how many cases ended with each verdict.
python3 - target/autobahn/reports/index.json <<'PY'
import collections, json, sys
index = json.load(open(sys.argv[1]))
for agent, cases in index.items():
    sections = collections.defaultdict(collections.Counter)
    for case, result in cases.items():
        sections[int(case.split(".")[0])][result["behavior"]] += 1
    verdicts = sorted({v for c in sections.values() for v in c})
    print(f"agent {agent}: {len(cases)} cases")
    print("| section | " + " | ".join(verdicts) + " |")
    print("| --- |" + " --- |" * len(verdicts))
    for section in sorted(sections):
        print(f"| {section} | " + " | ".join(str(sections[section][v]) for v in verdicts) + " |")
    total = collections.Counter(v for c in sections.values() for v in c.elements())
    print("| all | " + " | ".join(str(total[v]) for v in verdicts) + " |")
    bad = sorted((c for c, r in cases.items() if r["behavior"] not in ("OK", "INFORMATIONAL", "NON-STRICT", "UNIMPLEMENTED")),
                 key=lambda c: [int(x) for x in c.split(".")])
    if bad:
        print("not passed: " + ", ".join(f"{c} ({cases[c]['behavior']})" for c in bad))
PY
