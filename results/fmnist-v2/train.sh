#!/usr/bin/env bash
# Train the models of the Fashion-MNIST study v2 (configs/fmnist-study-v2/NAME.toml) for each seed
# into runs/fmnist-study-v2/NAME-sS/, two runs at a time with one thread each, and copy best.pt and
# metrics.jsonl to results/fmnist-v2/NAME-sS.pt and NAME-sS.metrics.jsonl. Seed by seed (every
# model's seed 0, then seed 1, ...), so an interrupted run leaves whole seeds. Rerun the same
# command to continue: finished runs are only copied, an interrupted one resumes from its last
# finished epoch (--auto-resume; exact on a CPU with the same thread count).
#   bash results/fmnist-v2/train.sh [SEEDS...]          (default: 0 1 2)
#   MODELS="a b" bash results/fmnist-v2/train.sh 0       (a subset of the models)
#   EPOCHS=20 MODELS="ancra-pgd pgd-at trades-ce" bash results/fmnist-v2/train.sh 0
#       the convergence control: the same protocol for EPOCHS epochs (ANC warm-up EPOCHS/10, as
#       1 of 10 in the configs) into results/fmnist-v2/eEPOCHS/NAME-sS.pt
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
SEEDS=${*:-0 1 2}
MODELS=${MODELS:-"pgd-at ancra-pgd trades-ce ancra-trades trades-ra-only trades-anc-only trades-kl"}
EPOCHS=${EPOCHS:-}
SUB=${EPOCHS:+e$EPOCHS/}
export EPOCHS SUB
train() {  # NAME SEED
    local name=$1 seed=$2 out=runs/fmnist-study-v2/$SUB$1-s$2 dest=results/fmnist-v2/$SUB$1-s$2
    local sets=(--set "train.seed=$seed")
    [ -n "$EPOCHS" ] && sets+=(--set "train.epochs=$EPOCHS" --set "objective.warmup=$((EPOCHS / 10))")
    .venv/bin/ancra train --quiet --auto-resume --config "configs/fmnist-study-v2/$name.toml" \
        "${sets[@]}" --out "$out" > "$out.log" 2>&1 || { echo "$name seed $seed failed: see $out.log"; return 1; }
    cp "$out/best.pt" "$dest.pt"
    cp "$out/metrics.jsonl" "$dest.metrics.jsonl"
    echo "$(date +%T) $name seed $seed done"
}
export -f train
mkdir -p "runs/fmnist-study-v2/$SUB" "results/fmnist-v2/$SUB"
for seed in $SEEDS; do
    for name in $MODELS; do echo "$name $seed"; done
done | xargs -P 2 -L 1 bash -c 'train "$0" "$1"'
