"""Our PGD with the deployed model as judge: :func:`judged_pgd`, the workhorse of the adaptive suite.

Fixed-sign steps with a decaying step size (eps/4, eps/8, eps/16 over 50/25/25 % of the steps) on
*any* objective (an aux head, a soft or BPDA gate, a transfer source), while every iterate is
judged on the deployed model: an example leaves the batch with the first iterate that fools it.
That is the bookkeeping the reference APGD gets through
:class:`~ancra.evaluation.wrappers.RAView`'s ``deployed_values``; here the objective keeps the
surrogate's own values, so the two kinds of attack complement each other.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def step_schedule(eps: float, steps: int) -> list[float]:
    """eps/4 for the first half of the steps, eps/8 for the next quarter, eps/16 for the rest."""
    a, b = steps // 2, steps // 4
    return [eps / 4] * a + [eps / 8] * b + [eps / 16] * (steps - a - b)


def judged_pgd(
    objective: Callable,
    judge: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    restarts: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sign-gradient ascent of ``objective`` in the L-inf ball, success judged on ``judge``.

    Args:
        objective: ``objective(x_adv, idx) -> value (B,)`` to *ascend*, or ``(value, logits)``
            when the forward already computes the real model's logits (exact-forward BPDA), which
            saves the judge's forward. ``idx`` indexes the rows of ``x``/``y`` in ``x_adv`` (for
            per-example targets); examples leave the batch as soon as they are fooled.
        judge: real model; an input is a success when ``judge(x).argmax(1) != y``.
        y: true labels.
    Returns ``(x_found, fooled)``: per example the first iterate that fooled the judge (else the
    clean input), and whether one did.
    """
    x = x.detach()
    n = len(x)
    fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    found = x.clone()
    sched = step_schedule(eps, steps)

    def check(idx, xa, logits=None):
        if logits is None:
            with torch.no_grad():
                logits = judge(xa)
        bad = logits.argmax(1) != y[idx]
        if bad.any():
            found[idx[bad]] = xa[bad].detach()
            fooled[idx[bad]] = True
        return ~bad

    with torch.enable_grad():
        for _ in range(restarts):
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xs = x[idx]
            noise = torch.rand(xs.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
            xa = (xs + eps * noise).clamp(0, 1)
            keep = check(idx, xa)
            idx, xs, xa = idx[keep], xs[keep], xa[keep]
            for k in range(steps):
                if idx.numel() == 0:
                    break
                xa = xa.detach().requires_grad_(True)
                res = objective(xa, idx)
                value, logits = res if isinstance(res, tuple) else (res, None)
                (grad,) = torch.autograd.grad(value.sum(), xa)
                keep_pre = check(idx, xa.detach(), logits.detach()) if logits is not None else None
                xa = xa.detach() + sched[k] * grad.sign()
                xa = torch.min(torch.max(xa, xs - eps), xs + eps).clamp_(0, 1)
                keep = check(idx, xa) if logits is None else keep_pre
                idx, xs, xa = idx[keep], xs[keep], xa[keep]
            if idx.numel() and steps > 0:
                check(idx, xa)  # the last step's point (checked lazily on the exact-forward path)
    return found, fooled
