#!/usr/bin/env bash
# Fuzzes every target in fuzz/ with libFuzzer (cargo-fuzz) and prints the executions per target.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     SECONDS per target (60 by default); all targets by
#                                             default: text coordinator_call worker_call tokens
#                                             certificate
#
# The corpora in fuzz/corpus/<target>/ are read and grown (new interesting inputs are added;
# `cargo fuzz cmin TARGET` shrinks one); `cargo test` replays them (tests/fuzz_corpus.rs). A
# failing input lands in fuzz/artifacts/<target>/ and the script exits non-zero.
#
# cargo-fuzz needs a nightly compiler's -Z flags (the sanitizer); the one toolchain here is
# stable, which RUSTC_BOOTSTRAP=1 lets use them. cargo-fuzz is installed on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(text coordinator_call worker_call tokens certificate)
fi

if ! command -v cargo-fuzz > /dev/null; then
    echo "fuzz: installing cargo-fuzz (once)"
    cargo install cargo-fuzz --locked --quiet
fi
export RUSTC_BOOTSTRAP=1

# The seeds (valid inputs made by the library) go into the corpora first.
cargo test --quiet --test fuzz_corpus -- --ignored write_seeds > /dev/null

cargo fuzz build --release --debug-assertions
mkdir -p fuzz/logs
status=0
for target in "${targets[@]}"; do
    log=fuzz/logs/$target.log
    if cargo fuzz run --release --debug-assertions "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=4096 \
        > "$log" 2>&1; then
        outcome=ok
    else
        outcome=FAILED
        status=1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    corpus=$(ls "fuzz/corpus/$target" | wc -l)
    printf 'fuzz: %-18s %-6s %12s executions in %ss, corpus %s inputs (log: %s)\n' \
        "$target" "$outcome" "${runs:-?}" "$seconds" "$corpus" "$log"
    if [ $outcome = FAILED ]; then
        tail -40 "$log"
    fi
done
exit $status
