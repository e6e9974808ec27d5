"""CPU benchmark: our ANCRA-TRADES training step against a reference-like step, in one process.

    python benchmarks/cpu_vs_reference.py [--batch 16] [--steps 3] [--model resnet18] [--out FILE]

Times, on the same synthetic 3x32x32 batch and the same model, (a) the reference-like step
(benchmarks/reference_like.py: fp32 eager NCHW, loops, separate attacks, logging forwards),
(b) ancra's step in fp32 (channels_last, one 2B attack batch, vectorised ANC/negatives, no extra
forwards) and (c) ancra's step with bf16 autocast + channels_last. Variants are interleaved
round-robin so that load changes on the machine hit all of them alike; medians and the ratios
to (a) are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_like import reference_like_step  # noqa: E402

from ancra.hardware import cpu_info  # noqa: E402
from ancra.models import create_model  # noqa: E402
from ancra.objectives import Objective, training_step  # noqa: E402
from ancra.precision import autocast_context  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    torch.manual_seed(0)
    obj = Objective(method="trades", zeta=3.0, attack_loss="ce")  # the CIFAR ANCRA-TRADES recipe
    x = torch.rand(args.batch, 3, 32, 32)
    y = torch.arange(args.batch) % 10
    base = create_model(args.model, 10, 3)

    def fresh(channels_last: bool):
        m = create_model(args.model, 10, 3)
        m.load_state_dict(base.state_dict())
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        return m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

    variants = {}
    m_ref, o_ref = fresh(False)
    rng = random.Random(0)
    variants["reference_like_fp32"] = lambda: reference_like_step(m_ref, o_ref, x, y, obj, rng)
    m32, o32 = fresh(True)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    variants["ancra_fp32"] = lambda: training_step(m32, o32, x_cl, y, obj)
    m16, o16 = fresh(True)

    def bf16_step():
        with autocast_context(torch.device("cpu"), "bf16"):
            training_step(m16, o16, x_cl, y, obj)

    variants["ancra_bf16"] = bf16_step
    for fn in variants.values():  # warm-up
        fn()
    times = {k: [] for k in variants}
    for _ in range(args.steps):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    ref = med["reference_like_fp32"]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "hardware": cpu_info(),
        "torch": torch.__version__,
        "model": args.model,
        "batch": args.batch,
        "steps": args.steps,
        "step_s": med,
        "images_per_s": {k: args.batch / v for k, v in med.items()},
        "speedup_vs_reference_like": {k: ref / v for k, v in med.items()},
        "all_step_s": times,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
