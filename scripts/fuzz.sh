#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for a bounded time, one after the other.
#
#   bash scripts/fuzz.sh                 # 60 s per target (5 targets: about 6 minutes with the build)
#   bash scripts/fuzz.sh 600 ingest      # 10 minutes of one target
#
# Needs the nightly toolchain (`rustup toolchain install nightly`) and cargo-fuzz (installed here
# with `cargo install cargo-fuzz --locked` if missing). Each run starts from the committed seeds
# (fuzz/corpus/<target>/, never written to) plus what earlier runs on this machine found
# (target/fuzz-corpus/<target>/). A crash stops with the failing input in fuzz/artifacts/<target>/:
# fix it, then keep the input as a unit test in the library (reproduce with
# `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/crash-…`). Not part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(position filter sse_query ws_protocol ingest)

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "the nightly toolchain is needed: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
    cargo install cargo-fuzz --locked
fi

cargo +nightly fuzz build
summary=""
status=0
for target in "${targets[@]}"; do
    work="target/fuzz-corpus/$target"
    mkdir -p "$work"
    log="target/fuzz-corpus/$target.log"
    echo "fuzz: $target for ${seconds}s" >&2
    if cargo +nightly fuzz run "$target" "$work" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -dict=fuzz/flightdeck.dict -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        result="ok"
    else
        result="FAILED (see $log and fuzz/artifacts/$target/)"
        status=1
        tail -n 40 "$log" >&2
    fi
    runs="$(awk '/stat::number_of_executed_units/ { print $NF }' "$log" | tail -1)"
    cov="$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -1)"
    summary+="$(printf '%-12s %10s runs  %-34s %s' "$target" "${runs:-?}" "${cov:-}" "$result")"$'\n'
done
printf '\n%s' "$summary"
exit "$status"
