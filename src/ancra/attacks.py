"""L-inf attacks: one PGD used by training and evaluation alike (FGSM is its one-step case).

``pgd(model, x, y, eps=..., step_size=..., steps=...)`` returns adversarial examples. The loss is a
parameter (``ce``, ``kl`` for TRADES, ``cw`` margin) and ``targeted`` may be a per-example mask, so
the untargeted attack on the anchors and the targeted attack on the ANC negatives run as one batch
(exact: attacks run with eval-mode BN, so examples do not interact).

While attacking, the model is in eval mode with frozen parameters (no weight-gradient kernels); the
caller's mode and ``requires_grad`` flags are restored afterwards. RA models are attacked through
``model(x)`` (predicted-label RA); with ``cr_beta > 0`` the loss also gets
``cr_beta * mean_h loss(aux_h)`` over the RA auxiliary heads (docs/METHOD.md, "Base objectives").
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("ce", "kl", "cw")
STARTS = ("uniform", "normal", "none")
#: standard deviation of the "small Gaussian" start of the training attack (docs/METHOD.md, "Base objectives")
NORMAL_START_STD = 0.001


@contextmanager
def attack_mode(model: nn.Module):
    """Eval-mode BN and frozen parameters for the duration of an attack, then restore both."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _heads(model: nn.Module, x: torch.Tensor, with_aux: bool) -> list[torch.Tensor]:
    """Final logits first, then the aux logits of each RA block (when asked for and present)."""
    if with_aux and hasattr(model, "forward_with_aux"):
        out = model(x, with_aux=True)  # through __call__: compiled code when the network is compiled
        return [out.logits, *out.aux_logits]
    return [model(x)]


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CW margin ``max_{j != y} z_j - z_y`` per example (> 0 iff misclassified)."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - z_y


def attack_objective(
    logits: torch.Tensor,
    y: torch.Tensor,
    loss: str,
    targeted: torch.Tensor,
    ref_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-example value the attack ascends.

    Untargeted rows maximise ``loss`` w.r.t. the true label ``y``; targeted rows (``y`` is then the
    target) minimise the CE to the target (``cw``: maximise the target's margin)."""
    if loss == "cw":
        m = margin(logits, y)
        return torch.where(targeted, -m, m)
    ce = F.cross_entropy(logits, y, reduction="none")
    if loss == "ce":
        untargeted = ce
    elif loss == "kl":
        # TRADES: KL(p_nat || p_adv), p_nat fixed from the clean input.
        untargeted = (ref_probs * (torch.log(ref_probs + 1e-12) - F.log_softmax(logits, 1))).sum(1)
    else:
        raise ValueError(f"unknown attack loss {loss!r}: choose one of {LOSSES}")
    return torch.where(targeted, -ce, untargeted)


def _random_start(x: torch.Tensor, eps: float, start: str, generator) -> torch.Tensor:
    if start == "uniform":
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        return (x + eps * noise).clamp_(0, 1)
    if start == "normal":
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + NORMAL_START_STD * noise).clamp_(0, 1)
    if start == "none":
        return x.clone()
    raise ValueError(f"unknown random start {start!r}: choose one of {STARTS}")


def _success(logits: torch.Tensor, y: torch.Tensor, targeted: torch.Tensor) -> torch.Tensor:
    pred = logits.argmax(1)
    return torch.where(targeted, pred == y, pred != y)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    loss: str = "ce",
    targeted: bool | torch.Tensor = False,
    random_start: str = "uniform",
    restarts: int = 1,
    cr_beta: float = 0.0,
    generator: torch.Generator | None = None,
    check_range: bool = True,
) -> torch.Tensor:
    """Projected gradient ascent in the L-inf ball of radius ``eps`` around ``x``, within [0,1].

    Args:
        y: true labels, or target classes for targeted rows.
        targeted: bool for the whole batch, or a (B,) bool mask (mixed untargeted/targeted batch).
        random_start: ``uniform`` in the eps-ball, ``normal`` (x + 0.001 N(0,1)) or ``none``.
        restarts: keep, per example, the first restart that succeeds (else the last one).
        cr_beta: weight of the averaged aux-head losses of an RA model (0: final logits only).
        check_range: refuse inputs outside [0, 1] (waits for the device; the trainer's data are
            in range by construction and skip it).
    Under a caller's autocast the forwards run in its dtype and the input gradient outside it.
    Returns the adversarial examples (detached).
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown attack loss {loss!r}: choose one of {LOSSES}")
    if eps < 0 or step_size < 0 or steps < 0 or restarts < 1:
        raise ValueError("eps, step_size and steps must be >= 0 and restarts >= 1")
    x = x.detach()
    lo, hi = torch.aminmax(x) if check_range else (0, 1)
    if lo < 0 or hi > 1:
        raise ValueError(
            f"attack inputs must be images in [0, 1], got values in [{lo.item():.3g}, {hi.item():.3g}]: "
            "pass unnormalised images (models normalise internally, if at all)"
        )
    if not torch.is_tensor(targeted):
        targeted = torch.full((x.shape[0],), bool(targeted), device=x.device)
    with_aux = cr_beta > 0
    with attack_mode(model), torch.enable_grad():
        ref = None
        if loss == "kl":
            with torch.no_grad():
                ref = [F.softmax(h, 1) for h in _heads(model, x, with_aux)]
        best = None
        for _ in range(restarts):
            x_adv = _random_start(x, eps, random_start, generator)
            for _ in range(steps):
                x_adv.requires_grad_(True)
                heads = _heads(model, x_adv, with_aux)
                obj = attack_objective(heads[0], y, loss, targeted, ref and ref[0])
                if len(heads) > 1:
                    aux = [attack_objective(h, y, loss, targeted, ref and ref[i + 1]) for i, h in enumerate(heads[1:])]
                    obj = obj + cr_beta * torch.stack(aux).mean(0)
                with torch.autocast(x.device.type, enabled=False):
                    (grad,) = torch.autograd.grad(obj.sum(), x_adv)
                x_adv = x_adv.detach() + step_size * grad.sign()
                x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1)
            if restarts == 1:
                return x_adv.detach()
            with torch.no_grad():
                ok = _success(model(x_adv), y, targeted)
            if best is None:
                best, best_ok = x_adv.detach(), ok
            else:
                replace = ~best_ok  # keep earlier successes, try again where all restarts failed
                best = torch.where(replace.view(-1, *[1] * (x.dim() - 1)), x_adv.detach(), best)
                best_ok = best_ok | ok
    return best


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, **kw) -> torch.Tensor:
    """FGSM: one signed step of size ``eps`` from the clean input, no random start."""
    return pgd(model, x, y, eps=eps, step_size=eps, steps=1, random_start="none", **kw)
