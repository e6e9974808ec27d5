#!/usr/bin/env bash
# Evaluation v2 of every study checkpoint: `ancra eval --suite full` on the first N test images
# (default 1000) in chunks of K = 100, with the suite of docs/EVALUATION.md as of the evaluation v2
# (saved adversarial inputs, deployed-model bookkeeping, measured budgets). Work goes chunk by
# chunk across all models (every model's first 100 images, then the next 100, ...), two processes
# with one thread each, so an interrupted run leaves every model evaluated on the same images;
# rerun the same command to continue (finished chunks are only merged).
#
# The chunk folders live in results/fmnist/eval-v2/NAME/chunk-A-B and are committed as they
# finish (their report.json, report.md, per_example.pt and adversarial.pt; AutoAttack's
# state, logs and plots are ignored by git), so the work survives the end of a session. After
# each step the merged report of the first n images is in results/fmnist/eval-v2/NAME/, which
# `ancra verify results/fmnist/eval-v2/NAME` re-checks.
#   bash results/fmnist/eval-v2.sh [N] [extra ancra eval flags, e.g. --device cuda]
#   K=... OUT=... MODELS="a b" bash results/fmnist/eval-v2.sh ...   (chunk size, target folder, models)
# RA models get the plain model of the same base method as their A6 transfer source.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-1000}; shift || true
export K=${K:-100} OUT=${OUT:-results/fmnist/eval-v2} EXTRA="$*"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
MODELS=${MODELS:-"standard pgd-at ancra-pgd trades ancra-trades mart ancra-mart trades-anc-only trades-ra-only"}
evaluate() {  # NAME N: evaluate the first N images of NAME (only its unfinished chunks run)
    local name=$1 n=$2 extra=()
    declare -A transfer=([ancra-pgd]=pgd-at [ancra-trades]=trades [ancra-mart]=mart [trades-ra-only]=trades)
    [ -n "${transfer[$name]:-}" ] && extra=(--transfer-from "results/fmnist/${transfer[$name]}.pt")
    mkdir -p "$OUT"
    # one process per model at a time: two workers must never write the same chunk
    flock "$OUT/.$name.lock" .venv/bin/ancra eval "results/fmnist/$name.pt" --suite full --n-examples "$n" \
        --chunk-size "$K" --threads 1 --out "$OUT/$name" "${extra[@]}" $EXTRA > "$OUT/$name.log.$n" 2>&1
    echo "$(date +%T) $name: first $n images done"
}
export -f evaluate
for ((n = K; n < N + K; n += K)); do
    for name in $MODELS; do echo "$name $(( n < N ? n : N ))"; done
done | xargs -P 2 -L 1 bash -c 'evaluate "$0" "$1"'
