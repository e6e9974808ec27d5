#!/usr/bin/env bash
# Evaluate every study checkpoint with `ancra eval --suite full` on the first N test images (default
# 1000) into runs/fmnist-study-eval/NAME and copy each report.json to results/fmnist/NAME.json.
#   bash results/fmnist/eval.sh [N] [extra ancra eval flags, e.g. --quick or --device cuda]
# RA models get the plain model of the same base method as their A6 transfer source.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-1000}; shift || true
declare -A TRANSFER=([ancra-pgd]=pgd-at [ancra-trades]=trades [ancra-mart]=mart [trades-ra-only]=trades)
for ckpt in results/fmnist/*.pt; do
    name=$(basename "$ckpt" .pt)
    extra=()
    [ -n "${TRANSFER[$name]:-}" ] && extra=(--transfer-from "results/fmnist/${TRANSFER[$name]}.pt")
    .venv/bin/ancra eval "$ckpt" --suite full --n-examples "$N" --out "runs/fmnist-study-eval/$name" "${extra[@]}" "$@"
    cp "runs/fmnist-study-eval/$name/report.json" "results/fmnist/$name.json"
done
