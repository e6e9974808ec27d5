"""Standard suite, docs/EVALUATION.md, "Standard suite": clean, FGSM, PGD-k and CW-inf with our own attack code.

These are the attacks papers report. They use :func:`ancra.attacks.pgd` (the code that also trains
the models), on the model's own output ``model(x)``: for an RA model that is the hard-gated,
predicted-label forward, so any gradient masking of the gate shows here and is exposed by the
adaptive suite (:mod:`ancra.evaluation.adaptive`). Each attack runs on every example (not as a
cascade), so their individual accuracies are comparable across papers and usable by the sanity
checks (FGSM >= PGD >= APGD, PGD <= clean).
"""

from __future__ import annotations

import torch
from torch import nn

from ..attacks import fgsm, pgd
from ..data.registry import find_dataset
from .common import AttackResult, Timer, batches, generator, predict


def default_step(eps: float, dataset: str) -> float:
    """PGD step of docs/EVALUATION.md, "Standard suite": 2/255 on CIFAR-like data, eps/4 otherwise.

    The rule is the registry's :meth:`~ancra.data.registry.DatasetInfo.eval_pgd_step`; a name the
    registry does not know (an old report, a caller's string) gets eps/4."""
    info = find_dataset(dataset)
    return info.eval_pgd_step(eps) if info is not None else eps / 4


def clean(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256) -> AttackResult:
    """Clean accuracy of ``model(x)`` in eval mode."""
    with Timer() as t:
        correct = predict(model, x, batch_size) == y
    return AttackResult(
        "clean",
        correct.clone(),
        correct.clone(),
        t.seconds,
        "standard",
        "clean",
        in_worst_case=True,
        info={},
        x_adv=None,
    )


def _finish(name, model, x, y, x_adv, clean_correct, batch_size, seconds, info) -> AttackResult:
    correct = predict(model, x_adv, batch_size) == y
    if clean_correct is None:
        clean_correct = predict(model, x, batch_size) == y
    return AttackResult(name, clean_correct & correct, correct, seconds, "standard", "whitebox", info=info, x_adv=x_adv)


def fgsm_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    batch_size: int = 256,
    clean_correct: torch.Tensor | None = None,
    name: str = "fgsm",
) -> AttackResult:
    """FGSM: one signed step of size ``eps`` from the clean input, no random start."""
    with Timer() as t:
        x_adv = torch.cat([fgsm(model, x[s], y[s], eps=eps) for s in batches(len(x), batch_size)])
    return _finish(
        name,
        model,
        x,
        y,
        x_adv,
        clean_correct,
        batch_size,
        t.seconds,
        {"eps": eps, "step_size": eps, "steps": 1, "random_start": "none"},
    )


def pgd_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int = 20,
    step_size: float | None = None,
    restarts: int = 1,
    loss: str = "ce",
    seed: int = 0,
    batch_size: int = 256,
    clean_correct: torch.Tensor | None = None,
    name: str | None = None,
    dataset: str = "fmnist",
    device=None,
) -> AttackResult:
    """PGD-``steps`` on ``loss`` (``ce``; ``cw`` is CW-inf), uniform random start in the eps-ball.

    The random start is drawn from a generator seeded with ``seed``, so PGD runs with the same
    seed share their start: PGD-20 and PGD-40 differ only by the number of steps (the steps
    curve of the sanity checks relies on this)."""
    step_size = default_step(eps, dataset) if step_size is None else step_size
    name = name or (f"pgd-{steps}" if loss == "ce" else f"{loss}-{steps}")
    gen = generator(seed, x.device if device is None else device)
    with Timer() as t:
        x_adv = torch.cat(
            [
                pgd(
                    model,
                    x[s],
                    y[s],
                    eps=eps,
                    step_size=step_size,
                    steps=steps,
                    loss=loss,
                    random_start="uniform",
                    restarts=restarts,
                    generator=gen,
                )
                for s in batches(len(x), batch_size)
            ]
        )
    info = {
        "eps": eps,
        "step_size": step_size,
        "steps": steps,
        "loss": loss,
        "restarts": restarts,
        "random_start": "uniform",
    }
    return _finish(name, model, x, y, x_adv, clean_correct, batch_size, t.seconds, info)


def cw_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int = 30, **kw) -> AttackResult:
    """CW-inf: PGD on the margin loss ``max_{j!=y} z_j - z_y``, 30 steps."""
    kw.setdefault("name", f"cw-{steps}")
    return pgd_attack(model, x, y, eps=eps, steps=steps, loss="cw", **kw)
