#!/usr/bin/env bash
# Five tasks, two arms: amplification (targets from Amplify(H, X) alone) and the supervised
# baseline (targets from the ground truth), with the same model, schedule and question
# distribution per task, in-process on this machine. Writes the runs to OUT (default
# runs/results), one plot per task to docs/results/, and prints the tables docs/results.md shows.
#
#   scripts/results.sh [OUT]          MINUTES=8 per run by default; SIZE=8
#
# Each run stops at 95% held-out accuracy (a report against the truth; it only ends the run) or
# after MINUTES of training, whichever comes first.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/results}
MINUTES=${MINUTES:-8}
SIZE=${SIZE:-8}
make setup >/dev/null
cargo build --release --quiet
HCH=target/release/hch
mkdir -p "$OUT" docs/results

# The schedule every run shares: a tiny model, 512 root questions (4 per instance) and 100 steps
# a round, the paper's 85% agreement to move on, an EMA teacher over at most 100 steps.
common=(--local --size "$SIZE" --start-size "$SIZE" --model tiny --roots 512
        --questions-per-instance 4 --descent 16 --steps 100 --heldout 256 --batch 64
        --replay-window 4096 --learning-rate 1e-3 --ema-horizon 100 --tolerance 0.05
        --advance-at 0.85 --seed 1 --until 0.95 --max-minutes "$MINUTES")

for domain in permutation wildcard assignments shortest-path union-find; do
    extra=()
    # Only these two show a question's difficulty in its text (the exponent, the stars).
    case $domain in permutation|wildcard) extra=(--difficulty-curriculum) ;; esac
    for arm in amplified supervised; do
        flags=()
        [[ $arm == supervised ]] && flags=(--supervised)
        dir="$OUT/$domain-$arm"
        rm -rf "$dir"
        echo "== $domain, $arm"
        "$HCH" train -d "$domain" "${common[@]}" "${extra[@]}" "${flags[@]}" --run "$dir" \
            2>&1 | grep -E '^ *g[0-9]+ ' | tail -n 3
    done
    "$HCH" report "$OUT/$domain-amplified" "$OUT/$domain-supervised" \
        --svg "docs/results/$domain.svg" >/dev/null
done

runs=()
for domain in permutation wildcard assignments shortest-path union-find; do
    runs+=("$OUT/$domain-amplified" "$OUT/$domain-supervised")
done
"$HCH" report "${runs[@]}" --svg "$OUT/all.svg" | sed -n '/^| task /,/^$/p'
