#!/usr/bin/env bash
# Evaluate a study's checkpoints with `ancra eval` on the first N test images in chunks of K = 100,
# work going chunk by chunk across all models (every model's first 100 images, then the next 100,
# ...), two processes with one thread each (PROCESSES=1 for one, e.g. beside a training run), so an
# interrupted run leaves every model evaluated on the same images; rerun the same command to
# continue (finished chunks are only merged). Each model's chunks and merged report (report.json,
# report.md, per_example.pt, adversarial.pt, which `ancra verify OUT/NAME` re-checks) live in
# OUT/NAME.
#   SRC=DIR OUT=DIR MODELS="a b ..." [TRANSFER="ra=plain ..."] [RA_FLAGS="..."] [K=100] \
#       [PROCESSES=2] bash results/eval-study.sh N [flags for every model: --quick, --device cuda]
# SRC/NAME.pt is each model; TRANSFER gives an RA model the plain model of the same base method as
# its A6 transfer source (and RA_FLAGS, e.g. --standalone, to those models only). The per-study
# scripts (results/fmnist/eval-v2.sh, results/fmnist-v2/eval.sh) say which.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:?the number of test images}; shift
: "${SRC:?SRC: the checkpoints folder}" "${OUT:?OUT: the reports folder}" "${MODELS:?MODELS: the model names}"
export SRC OUT TRANSFER=${TRANSFER:-} RA_FLAGS=${RA_FLAGS:-} K=${K:-100} EXTRA="$*"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
evaluate() {  # NAME N: evaluate the first N images of NAME (only its unfinished chunks run)
    local name=$1 n=$2 extra=() pair
    for pair in $TRANSFER; do
        # shellcheck disable=SC2206  # RA_FLAGS is a list of flags
        [ "${pair%%=*}" = "$name" ] && extra=(--transfer-from "$SRC/${pair#*=}.pt" $RA_FLAGS)
    done
    mkdir -p "$OUT"
    # one process per model at a time: two workers must never write the same chunk
    flock "$OUT/.$name.lock" .venv/bin/ancra eval "$SRC/$name.pt" --suite full --n-examples "$n" \
        --chunk-size "$K" --threads 1 --out "$OUT/$name" "${extra[@]}" $EXTRA > "$OUT/$name.log.$n" 2>&1 ||
        { echo "$name, first $n images: failed, see $OUT/$name.log.$n"; return 1; }
    echo "$(date +%T) $name: first $n images done"
}
export -f evaluate
for ((n = K; n < N + K; n += K)); do
    for name in $MODELS; do echo "$name $(( n < N ? n : N ))"; done
done | xargs -P "${PROCESSES:-2}" -L 1 bash -c 'evaluate "$0" "$1"'
