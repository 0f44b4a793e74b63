#!/usr/bin/env bash
# How long each thread of FlightDeck, its bench client and PostgreSQL ran and waited for a core.
#
#   scripts/thread-waits.sh [SECONDS] [PATTERN]    # default 5 s, processes matching "flightdeck|postgres:"
#
# Reads /proc/<pid>/task/<tid>/schedstat (time on a CPU, time runnable but waiting on the run
# queue, number of times scheduled) at the start and end of the interval and prints, per thread
# that ran at least 20 ms: run ms, wait ms, times scheduled, mean wait per scheduling, thread and
# process name. Run it while a benchmark runs (docs/benchmarks.md, session 6).
set -euo pipefail
SECS=${1:-5}
PATTERN=${2:-flightdeck|postgres:}
snap() {
    for p in $(pgrep -f "$PATTERN"); do
        for t in /proc/"$p"/task/*; do
            [ -r "$t/schedstat" ] || continue
            printf '%s %s %s %s\n' "${t##*/}" "$(cat "$t/schedstat" 2>/dev/null)" "$(tr ' ' _ 2>/dev/null < "$t/comm")" \
                "$(tr '\0' ' ' 2>/dev/null < /proc/"$p"/cmdline | cut -c1-30 | tr ' ' _)"
        done
    done | sort -k1,1
}
A=$(mktemp)
B=$(mktemp)
trap 'rm -f "$A" "$B"' EXIT
snap > "$A"
sleep "$SECS"
snap > "$B"
echo "  run ms   wait ms  scheduled  wait/scheduling  thread  process"
join "$A" "$B" | awk '{ r=($7-$2)/1e6; w=($8-$3)/1e6; n=$9-$4;
    if (r > 20) printf "%8.0f  %8.0f  %9d  %12.1f us  %s  %s\n", r, w, n, (n > 0 ? w * 1000 / n : 0), $5, $6 }' | sort -nr
