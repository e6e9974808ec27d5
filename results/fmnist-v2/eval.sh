#!/usr/bin/env bash
# Evaluate the study v2 models (results/fmnist-v2/NAME-sS.pt, from train.sh) with
# results/eval-study.sh: chunks of 100 test images, two processes with one thread each, chunk by
# chunk across the models; rerun the same command to continue.
#   bash results/fmnist-v2/eval.sh full [N] [SEEDS]   --suite full at full budgets into eval-full/
#                                                      (the models with a transfer source, RA ones and
#                                                      TRADES + ANC, also --standalone); default seed 0
#   bash results/fmnist-v2/eval.sh quick [N] [SEEDS]  --quick budgets into eval-quick/; default 0 1 2
#   bash results/fmnist-v2/eval.sh eps0.2 [N]         full budgets at eps 0.2 for the ANC question
#                                                      (ANC-only, both TRADES, ANCRA-TRADES; seed 0)
#   EPOCHS=20 MODELS_V2="..." bash results/fmnist-v2/eval.sh quick N 0
#                                                      the convergence control (train.sh EPOCHS=20):
#                                                      results/fmnist-v2/e20/ into e20/eval-quick/
# N defaults to 1000. RA models and ANC-only get the plain model of the same base method and seed
# (TRADES: the CE-attack one, their matched baseline) as their A6 transfer source; at eps 0.2 the
# two TRADES models also get each other (is a high accuracy there masking?).
set -euo pipefail
here=$(dirname "$0")
what=${1:?full, quick or eps0.2}; N=${2:-1000}
MODELS_V2=${MODELS_V2:-"pgd-at ancra-pgd trades-ce ancra-trades trades-ra-only trades-anc-only trades-kl"}
case $what in
    full) seeds=${3:-0}; flags=(); export RA_FLAGS=--standalone ;;
    quick) seeds=${3:-0 1 2}; flags=(--quick) ;;
    eps0.2) seeds=0; flags=(--eps 0.2); MODELS_V2="trades-anc-only trades-ce trades-kl ancra-trades" ;;
    *) echo "unknown evaluation $what: choose full, quick or eps0.2" >&2; exit 2 ;;
esac
MODELS="" TRANSFER=""
for s in $seeds; do
    for m in $MODELS_V2; do MODELS+="$m-s$s "; done
    TRANSFER+="ancra-pgd-s$s=pgd-at-s$s ancra-trades-s$s=trades-ce-s$s trades-ra-only-s$s=trades-ce-s$s "
    TRANSFER+="trades-anc-only-s$s=trades-ce-s$s "
    [ "$what" = eps0.2 ] && TRANSFER+="trades-ce-s$s=trades-kl-s$s trades-kl-s$s=trades-ce-s$s "
done
SRC=results/fmnist-v2${EPOCHS:+/e$EPOCHS}
export SRC OUT=$SRC/eval-$what MODELS TRANSFER
exec bash "$here/../eval-study.sh" "$N" "${flags[@]}"
