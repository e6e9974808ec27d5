#!/usr/bin/env bash
# Train every model of the Fashion-MNIST study (configs/fmnist-study/*.toml) into runs/fmnist-study/,
# two at a time with one thread each, and copy best.pt + metrics.jsonl into results/fmnist/.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
train() {
    local name=$1 out=runs/fmnist-study/$1
    if [ -f "$out/state.pt" ] || [ -f "$out/config.json" ]; then
        .venv/bin/ancra train --quiet --resume "$out"
    else
        .venv/bin/ancra train --quiet --config "configs/fmnist-study/$name.toml" --out "$out"
    fi
    cp "$out/best.pt" "results/fmnist/$name.pt"
    cp "$out/metrics.jsonl" "results/fmnist/$name.metrics.jsonl"
}
export -f train
ls configs/fmnist-study/*.toml | xargs -n1 basename | sed 's/\.toml$//' | xargs -P 2 -I{} bash -c 'train {}'
