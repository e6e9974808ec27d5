#!/usr/bin/env bash
# NOTE: this produced the reports results/fmnist/NAME.json with the first version of the suite
# (code as of commit b04898a). Today's ancra runs the evaluation v2 here too; for v2 reports with
# saved adversarial inputs use results/fmnist/eval-v2.sh.
# Full-budget evaluation of every study checkpoint: `ancra eval --suite full` on the first N test
# images (default 1000), in chunks of K = 100 that are kept when finished. Work goes chunk by chunk
# across all models (every model's first 100 images, then the next 100, ...), two processes with one
# thread each, so an interrupted run leaves every model evaluated on the same images; rerun the same
# command to continue (finished chunks are only merged). After each step the merged report and its
# per-example results go to results/fmnist/NAME.json and NAME.per_example.pt.
#   bash results/fmnist/eval.sh [N] [extra ancra eval flags, e.g. --device cuda]
#   K=... OUT=... DEST=... bash results/fmnist/eval.sh ...   (chunk size, work folder, copy target)
# RA models get the plain model of the same base method as their A6 transfer source.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-1000}; shift || true
export K=${K:-100} OUT=${OUT:-runs/fmnist-study-eval-full} DEST=${DEST:-results/fmnist} EXTRA="$*"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
MODELS="standard pgd-at ancra-pgd trades ancra-trades mart ancra-mart trades-anc-only trades-ra-only"
evaluate() {  # NAME N: evaluate the first N images of NAME (only its unfinished chunks run)
    local name=$1 n=$2 extra=()
    declare -A transfer=([ancra-pgd]=pgd-at [ancra-trades]=trades [ancra-mart]=mart [trades-ra-only]=trades)
    [ -n "${transfer[$name]:-}" ] && extra=(--transfer-from "results/fmnist/${transfer[$name]}.pt")
    mkdir -p "$OUT" "$DEST"
    # one process per model at a time: two workers must never write the same chunk
    flock "$OUT/$name.lock" .venv/bin/ancra eval "results/fmnist/$name.pt" --suite full --n-examples "$n" \
        --chunk-size "$K" --threads 1 --out "$OUT/$name" "${extra[@]}" $EXTRA > "$OUT/$name.log.$n" 2>&1
    cp "$OUT/$name/report.json" "$DEST/$name.json"
    cp "$OUT/$name/per_example.pt" "$DEST/$name.per_example.pt"
    echo "$(date +%T) $name: first $n images done"
}
export -f evaluate
for ((n = K; n < N + K; n += K)); do
    for name in $MODELS; do echo "$name $(( n < N ? n : N ))"; done
done | xargs -P 2 -L 1 bash -c 'evaluate "$0" "$1"'
