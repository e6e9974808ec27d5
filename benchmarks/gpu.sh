#!/usr/bin/env bash
# Every GPU check and measurement of docs/PERFORMANCE.md in one call (about 8-10 minutes on an
# H100/H200; each step has its own time limit, so a hang is a named failure).
#   bash benchmarks/gpu.sh [OUT_DIR]      (needs `make install` or an environment with ancra)
# 1. the CUDA tests (tests/test_cuda.py: CPU/CUDA step equality, bf16 and compile, resume, CPU
#    tensors in checkpoints, no sync in the step loop, evaluation, NCCL) -> OUT_DIR/cuda-tests.txt
# 2. `ancra bench` of CIFAR-10 ResNet-18 ANCRA-TRADES training steps at batch 128 side by side:
#    fp32 (TF32 off), tf32, bf16, bf16 + torch.compile, the plain TRADES baseline in bf16 and the
#    evaluation attack -> OUT_DIR/bench.jsonl (one JSON per line), and the card -> OUT_DIR/gpu.txt
# 3. reference AutoAttack (standard) on 1000 CIFAR-shaped inputs -> OUT_DIR/autoattack.json
# The epoch time of a 50k-image CIFAR-10 epoch is 50000 / images_per_s (device-resident data).
set -euo pipefail
OUT=${1:-${OUT:-bench-gpu}}
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

echo "+ CUDA tests" >&2
timeout 420 "$PY" -m pytest -m cuda -q -rs -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/cuda-tests.txt" \
    || echo "CUDA tests FAILED (see $OUT/cuda-tests.txt); measuring anyway" >&2

CFG=configs/cifar10-resnet18-ancra-trades.toml
run() { echo "+ ancra bench $*" >&2; timeout 240 "$PY" -m ancra bench "$@" --device cuda --json | tee -a "$OUT/bench.jsonl"; }
run --config $CFG --batch 128 --steps 20 --precision fp32 --no-compile
run --config $CFG --batch 128 --steps 20 --precision tf32 --no-compile
run --config $CFG --batch 128 --steps 20 --precision bf16 --no-compile
run --config $CFG --batch 128 --steps 20 --precision bf16 --compile --warmup 3
run --config configs/cifar10-resnet18-trades.toml --batch 128 --steps 20 --precision bf16 --no-compile
run --config $CFG --batch 512 --steps 10 --precision fp32 --no-compile --eval --set objective.steps=20
"$PY" - "$OUT/bench.jsonl" <<'PYEOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    epoch = 50000 / r["images_per_s"] if r["mode"] == "train" else float("nan")
    mfu = 100 * r["fraction_of_peak"] if r["fraction_of_peak"] is not None else float("nan")
    print(f"{r['device_name']:<28} {r['mode']:<5} {r['config']['method']}/zeta={r['config']['zeta']:<4} "
          f"{r['precision']:<5} compile={r['compile']!s:<5} {r['images_per_s']:9.0f} img/s  "
          f"epoch(50k) {epoch:6.1f} s  MFU {mfu:5.1f}% of {r['peak_source']}")
PYEOF

echo "+ reference AutoAttack on 1000 CIFAR-shaped inputs" >&2
timeout 600 "$PY" - "$OUT/autoattack.json" <<'PYEOF'
# A randomly initialised ResNet-18 labelled with its own predictions: every input starts correct,
# so every attack runs on all 1000; a robust model costs more (more examples survive to the later,
# targeted attacks): this is a floor on AutoAttack's cost, not the cost for a trained model.
import json, sys, time
import torch
from ancra.evaluation.autoattack import run_autoattack
from ancra.models import create_model
torch.manual_seed(0)
net = create_model("resnet18", 10, 3, ra_blocks=0).cuda().eval()
x = torch.rand(1000, 3, 32, 32, device="cuda")
with torch.no_grad():
    y = net(x).argmax(1)
start = time.perf_counter()
r = run_autoattack(net, x, y, eps=8 / 255, version="standard", batch_size=500)
torch.cuda.synchronize()
seconds = time.perf_counter() - start
out = {"gpu": torch.cuda.get_device_name(), "n": 1000, "seconds": seconds, "robust_acc": r.robust.float().mean().item()}
print(json.dumps(out))
json.dump(out, open(sys.argv[1], "w"))
PYEOF
