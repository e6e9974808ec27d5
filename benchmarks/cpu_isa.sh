#!/usr/bin/env bash
# The CPU measurements of docs/PERFORMANCE.md on this machine's own ISA and with oneDNN/ATen capped
# at AVX2 (what an AVX2-only CPU, e.g. a laptop or an older cloud VM, runs), in one call.
#   bash benchmarks/cpu_isa.sh [OUT_DIR]      (after `make install`; about 30 minutes on 2 cores,
# most of it the AVX2 bf16 steps: emulated bf16 is ~35x slower than fp32 there)
# Writes OUT_DIR/bench.jsonl (one `ancra bench` JSON per line, each with its "hardware" record)
# and OUT_DIR/reference-ISA.json (benchmarks/cpu_vs_reference.py), then prints a summary table.
# Run it on an idle machine: a second busy process on the same cores distorts every number.
set -euo pipefail
OUT=${1:-${OUT:-bench-cpu}}
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
mkdir -p "$OUT"
: > "$OUT/bench.jsonl"
DEMO=configs/fmnist-demo.toml
C10=configs/cifar10-resnet18-ancra-trades.toml
for isa in native avx2; do
  if [ $isa = avx2 ]; then export ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2; fi
  run() { echo "+ [$isa] ancra bench $*" >&2; timeout 900 "$PY" -m ancra bench "$@" --json | tee -a "$OUT/bench.jsonl"; }
  run --config $DEMO --batch 128 --steps 5
  run --config $DEMO --batch 128 --steps 5 --set train.channels_last=false
  run --config $DEMO --batch 128 --steps 3 --precision bf16
  run --config $C10 --batch 16 --steps 3
  run --config $C10 --batch 16 --steps 3 --set train.channels_last=false
  run --config $C10 --batch 16 --steps 3 --precision bf16
  echo "+ [$isa] cpu_vs_reference.py" >&2
  timeout 1200 "$PY" benchmarks/cpu_vs_reference.py --batch 16 --steps 3 --out "$OUT/reference-$isa.json" > /dev/null
done
unset ONEDNN_MAX_CPU_ISA ATEN_CPU_CAPABILITY
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for line in (out / "bench.jsonl").read_text().splitlines():
    r = json.loads(line)
    hw = r["hardware"]
    print(f"{hw['capability']:<7} {r['config']['model']:<14} {r['precision']:<5} channels_last={r['channels_last']!s:<5} "
          f"{r['images_per_s']:8.1f} img/s  peak {r['peak_source']} {r['peak_flops_per_s'] / 1e9:6.0f} GFLOP/s  "
          f"{100 * r['fraction_of_peak']:5.1f}% of it")
for f in sorted(out.glob("reference-*.json")):
    r = json.loads(f.read_text())
    print(f.stem, r["hardware"]["capability"], {k: round(v, 2) for k, v in r["speedup_vs_reference_like"].items()},
          {k: round(v, 2) for k, v in r["images_per_s"].items()})
PYEOF
