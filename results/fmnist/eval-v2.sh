#!/usr/bin/env bash
# Evaluation v2 of every checkpoint of the 2-epoch study: `ancra eval --suite full` on the first N
# test images (default 1000) in chunks of 100, with the suite of docs/EVALUATION.md as of the
# evaluation v2 (saved adversarial inputs, deployed-model bookkeeping, measured budgets), through
# results/eval-study.sh (two processes with one thread each, chunk by chunk across the models;
# rerun the same command to continue).
#
# The chunk folders live in results/fmnist/eval-v2/NAME/chunk-A-B and are committed as they
# finish (their report.json, report.md, per_example.pt and adversarial.pt; AutoAttack's
# state, logs and plots are ignored by git), so the work survives the end of a session. After
# each step the merged report of the first n images is in results/fmnist/eval-v2/NAME/, which
# `ancra verify results/fmnist/eval-v2/NAME` re-checks.
#   bash results/fmnist/eval-v2.sh [N] [extra ancra eval flags, e.g. --device cuda]
#   OUT=... MODELS="a b" bash results/fmnist/eval-v2.sh ...   (target folder, models)
#   OUT=results/fmnist/quick-v2 bash results/fmnist/eval-v2.sh 1000 --quick   (the quick budgets)
#   OUT=results/fmnist/eval-eps0.2 MODELS="trades-anc-only trades-ce" \
#       TRANSFER="trades-anc-only=trades-ce trades-ce=trades" bash results/fmnist/eval-v2.sh 500 --eps 0.2
#       (the eps-0.2 question of issue 21 on the 2-epoch models where it was first seen)
# RA models get the plain model of the same base method as their A6 transfer source (TRANSFER=...
# to choose other pairs).
set -euo pipefail
here=$(dirname "$0")
export SRC=results/fmnist OUT=${OUT:-results/fmnist/eval-v2}
export MODELS=${MODELS:-"standard pgd-at ancra-pgd trades ancra-trades mart ancra-mart trades-anc-only trades-ra-only"}
export TRANSFER=${TRANSFER:-"ancra-pgd=pgd-at ancra-trades=trades ancra-mart=mart trades-ra-only=trades"}
exec bash "$here/../eval-study.sh" "${1:-1000}" "${@:2}"
