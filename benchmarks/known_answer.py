"""Known-answer test of the adaptive evaluation on a study checkpoint (docs/EVALUATION.md, "Known-answer test").

    python benchmarks/known_answer.py --checkpoint results/fmnist/pgd-at.pt --n 300 --out runs/known-answer

Takes an adversarially trained *plain* checkpoint and builds its argmax-gated twin
(:func:`argmax_gated`): an RA network with one RA block and the same weights, whose logits are
``scale * onehot(argmax(last aux head))``. Its last aux head IS the plain model, so every decision
is the plain model's, but the output has no gradient at all (RA's hard gate taken to the limit).
The right answer for the gated model is therefore known: the plain model's AutoAttack accuracy.

On the first ``--n`` test images the script runs ``evaluate(suite="standard")`` on the plain model
(the reference AutoAttack accuracy) and ``evaluate(suite="full")`` on the gated one: its PGD-20 and
AutoAttack accuracies must overestimate (they see no gradient), and its worst case (standard +
AutoAttack + adaptive A1-A6) must come back to the reference, within 1 point. It prints and writes
``OUT/known_answer.json`` (and the two reports in ``OUT/ungated`` and ``OUT/gated``).

Full budgets take about 15 CPU-minutes at ``--n 300`` (narrow ResNet, one thread); ``--quick``
(reduced budgets on both sides, never a result) only checks that the script runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ancra.checkpoint import load_checkpoint
from ancra.data import load_dataset
from ancra.evaluation import evaluate, load_per_example
from ancra.models.ra import RAOutput
from ancra.models.resnet import ResNet

#: the known-answer tolerance: |gated worst case - ungated AutoAttack| <= 1 point
TOLERANCE = 0.01


class ArgmaxGatedResNet(ResNet):
    """A ResNet with one RA block whose logits are ``scale * onehot(argmax(last aux head))``.

    Loaded with a plain ResNet's state dict (same keys), its last aux head, ``fc(pool(z))`` of the
    last block before any mask, is exactly the plain model's output: the gate changes no decision
    and leaves no gradient (the pattern RA's hard gate produces, taken to the extreme)."""

    scale: float = 10.0

    def forward_with_aux(self, x, labels=None, mask_fn=None):
        out = super().forward_with_aux(x, labels, mask_fn)
        aux = out.aux_logits[-1]
        j = aux.argmax(1) if labels is None else labels
        return RAOutput(self.scale * F.one_hot(j, aux.shape[1]).to(aux.dtype), out.aux_logits, out.features)


def argmax_gated(plain: nn.Module) -> ArgmaxGatedResNet:
    """The argmax-gated twin of a plain (``ra_blocks=0``) :class:`ResNet`, with its weights, in eval mode."""
    if type(plain) is not ResNet or plain.ra_blocks != 0:
        raise ValueError(f"argmax_gated needs a plain ResNet (ra_blocks=0), got {type(plain).__name__}")
    stages = [m for name, m in plain.named_children() if name.startswith("layer")]
    gated = ArgmaxGatedResNet(
        [len(s) for s in stages],
        [s[0].conv1.out_channels for s in stages],
        num_classes=plain.fc.out_features,
        in_channels=plain.conv1.in_channels,
        ra_blocks=1,
        pool_size=plain.pool_size,
    )
    gated.load_state_dict(plain.state_dict())  # strict: same keys, so the same network
    return gated.to(next(plain.parameters()).device).eval()


def check_twin(plain: nn.Module, gated: nn.Module, x: torch.Tensor, batch_size: int = 256) -> None:
    """The gated twin's last aux head equals the plain model and its decisions are the plain ones."""
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            xb = x[s : s + batch_size]
            ref = plain(xb)
            aux = gated.forward_with_aux(xb).aux_logits[-1]
            if not torch.allclose(aux, ref, rtol=1e-5, atol=1e-5) or not torch.equal(
                gated(xb).argmax(1), ref.argmax(1)
            ):
                raise AssertionError("the gated twin does not reproduce the plain model's decisions")


def standard_worst_case(report: dict, out_dir: Path) -> float:
    """Per-example worst case over the standard-suite attacks of a report (AutoAttack included)."""
    pe = load_per_example(out_dir)["tensors"]
    names = [k for k, v in report["attacks"].items() if v["group"] == "standard" and v["in_worst_case"]]
    return torch.stack([pe[f"robust/{k}"] for k in names]).all(0).float().mean().item()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("results/fmnist/pgd-at.pt"))
    ap.add_argument("--n", type=int, default=300, help="first N test images (default 300: 1 point = 3 images)")
    ap.add_argument("--out", type=Path, default=Path("runs/known-answer"))
    ap.add_argument("--eps", type=float, default=None, help="default: the checkpoint's training eps")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="reduced budgets on both sides (a smoke test, not a result)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    ckpt = load_checkpoint(args.checkpoint)
    plain = ckpt.model.eval()
    dataset = ckpt.dataset(flag=None)
    eps = ckpt.eps(args.eps)
    gated = argmax_gated(plain)
    splits = load_dataset(dataset, ckpt.data_dir(args.data_dir), download=True)
    n = min(args.n, len(splits.test_x))
    x = splits.test_x[:n].float().div_(255)
    y = splits.test_y[:n]
    check_twin(plain, gated, x, args.batch_size)

    common = dict(
        eps=eps,
        batch_size=args.batch_size,
        seed=args.seed,
        quick=args.quick,
        dataset=dataset,
        subset=f"first {n} test examples",
        progress=True,
    )
    t0 = time.time()
    ungated = evaluate(
        plain, x, y, suite="standard", out_dir=args.out / "ungated", meta={"checkpoint": str(args.checkpoint)}, **common
    )
    t1 = time.time()
    masked = evaluate(
        gated,
        x,
        y,
        suite="full",
        out_dir=args.out / "gated",
        meta={"checkpoint": str(args.checkpoint), "model": "argmax-gated twin (benchmarks/known_answer.py)"},
        **common,
    )
    t2 = time.time()

    a = masked["attacks"]
    reference = ungated["autoattack_acc"]
    worst = masked["worst_case_acc"]
    result = {
        "checkpoint": str(args.checkpoint),
        "n_examples": n,
        "eps": eps,
        "quick": args.quick,
        "seed": args.seed,
        "clean_acc": ungated["clean_acc"],
        "gated_clean_acc": masked["clean_acc"],
        "ungated_autoattack_acc": reference,
        "ungated_worst_case_acc": ungated["worst_case_acc"],
        "gated_pgd20_acc": a["pgd-20"]["acc"],
        "gated_autoattack_acc": masked["autoattack_acc"],
        "gated_standard_worst_case_acc": standard_worst_case(masked, args.out / "gated"),
        "gated_worst_case_acc": worst,
        "difference_pt": round(100 * (worst - reference), 3),
        "tolerance_pt": 100 * TOLERANCE,
        "within_tolerance": abs(worst - reference) <= TOLERANCE + 1e-9,
        "broken_by": {k: v["info"]["broken"] for k, v in a.items() if v.get("cascade") and "broken" in v["info"]},
        "flags_gated": masked["flags"],
        "seconds": {"ungated": round(t1 - t0, 1), "gated": round(t2 - t1, 1), "total": round(t2 - t0, 1)},
        "threads": args.threads,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "known_answer.json").write_text(json.dumps(result, indent=2) + "\n")
    quick = " (QUICK budgets: not a result)" if args.quick else ""
    print(f"\nknown-answer test on {args.checkpoint}, first {n} test images, eps {eps:g}{quick}")
    print(f"  clean                          {100 * result['clean_acc']:6.2f}%")
    print(f"  ungated AutoAttack (answer)    {100 * reference:6.2f}%")
    print(f"  gated PGD-20                   {100 * result['gated_pgd20_acc']:6.2f}%")
    print(f"  gated AutoAttack               {100 * result['gated_autoattack_acc']:6.2f}%")
    print(f"  gated worst case (full suite)  {100 * worst:6.2f}%")
    print(
        f"  difference                     {result['difference_pt']:+6.2f} pt "
        f"({'within' if result['within_tolerance'] else 'OUTSIDE'} +-{result['tolerance_pt']:g} pt)"
    )
    print(f"  seconds: ungated {result['seconds']['ungated']}, gated {result['seconds']['gated']}")
    print(f"  written to {args.out / 'known_answer.json'}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["within_tolerance"] else 1)
