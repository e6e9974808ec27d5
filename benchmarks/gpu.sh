#!/usr/bin/env bash
# Every GPU measurement of docs/PERFORMANCE.md in one call (about 5-8 minutes on an H100).
#   bash benchmarks/gpu.sh [OUT_DIR]      (needs `make install` or an environment with ancra)
# Writes OUT_DIR/gpu.txt (the card) and OUT_DIR/bench.jsonl (one `ancra bench` JSON per line):
# CIFAR-10 ResNet-18 ANCRA-TRADES training steps at batch 128 in fp32 (TF32), bf16, bf16 +
# torch.compile, the plain TRADES baseline, and the evaluation attack. The epoch time of a
# 50k-image CIFAR-10 epoch is 50000 / images_per_s (the data path is device-resident).
set -euo pipefail
OUT=${1:-${OUT:-bench-gpu}}
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
CFG=configs/cifar10-resnet18-ancra-trades.toml
run() { echo "+ ancra bench $*" >&2; timeout 240 "$PY" -m ancra bench "$@" --device cuda --json | tee -a "$OUT/bench.jsonl"; }
run --config $CFG --batch 128 --steps 20 --precision fp32
run --config $CFG --batch 128 --steps 20 --precision bf16
run --config $CFG --batch 128 --steps 20 --precision bf16 --compile --warmup 3
run --config configs/cifar10-resnet18-trades.toml --batch 128 --steps 20 --precision bf16
run --config $CFG --batch 512 --steps 10 --precision fp32 --eval --set objective.steps=20
"$PY" - "$OUT/bench.jsonl" <<'PYEOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    epoch = 50000 / r["images_per_s"] if r["mode"] == "train" else float("nan")
    print(f"{r['device_name']:<28} {r['mode']:<5} {r['config']['method']}/zeta={r['config']['zeta']:<4} "
          f"{r['precision']:<5} compile={r['compile']!s:<5} {r['images_per_s']:9.0f} img/s  "
          f"epoch(50k) {epoch:6.1f} s  MFU {100 * r['fraction_of_peak']:5.1f}%")
PYEOF
