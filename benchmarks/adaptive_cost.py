"""Cost and strength of the adaptive cascade alone, on a study checkpoint's committed results.

Takes the examples that survived the standard attacks and AutoAttack in a committed report
(``results/fmnist/eval-v2/NAME/per_example.pt``), runs today's adaptive cascade on them with the
full budgets, and prints per attack its time and breaks, and how the cascade's worst case
compares with the committed one on the same images. A development tool for choosing budgets:
the benchmark of record is the whole ``ancra eval --suite full`` (docs/PERFORMANCE.md).

    python benchmarks/adaptive_cost.py NAME [--n 300] [--transfer-from NAME] [--set field=value ...]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ancra.checkpoint import load_model
from ancra.data import load_dataset
from ancra.evaluation import EvalConfig, run_adaptive
from ancra.evaluation.common import worst_case
from ancra.evaluation.report import load_per_example


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("name")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--transfer-from")
    p.add_argument("--set", nargs="*", default=[], help="EvalConfig overrides, e.g. a4_targets=9")
    a = p.parse_args()
    torch.set_num_threads(1)
    old = load_per_example(f"results/fmnist/eval-v2/{a.name}/per_example.pt")
    t, attacks = old["tensors"], old["attacks"]
    pre = [k for k, m in attacks.items() if m["in_worst_case"] and not m.get("cascade")]
    alive = torch.stack([t[f"robust/{k}"] for k in pre]).all(0)[: a.n]
    old_wc = worst_case(t, attacks)[: a.n]
    model = load_model(f"results/fmnist/{a.name}.pt")
    tm = load_model(f"results/fmnist/{a.transfer_from}.pt") if a.transfer_from else None
    d = load_dataset("fmnist", download=False)
    x, y = d.test_x[: a.n].float() / 255, d.test_y[: a.n]
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
    cfg = EvalConfig.make(0.1, suite="full", echo=print, **overrides)
    t0 = time.perf_counter()
    res = run_adaptive(model, x, y, alive=alive, cfg=cfg, transfer_model=tm)
    total = time.perf_counter() - t0
    new_wc = res[-1].robust if res else alive
    print(
        json.dumps(
            {
                "name": a.name,
                "n": a.n,
                "survivors": int(alive.sum()),
                "seconds": round(total, 1),
                "old_worst": int(old_wc.sum()),
                "new_worst": int(new_wc.sum()),
                "old_only_broken": (~old_wc & new_wc).nonzero().squeeze(1).tolist(),
                "new_only_broken": (old_wc & ~new_wc).nonzero().squeeze(1).tolist(),
                "per_attack": {r.name: [r.info["broken"], round(r.seconds, 1)] for r in res},
            }
        )
    )


if __name__ == "__main__":
    main()
