"""A8 diagnostics of docs/EVALUATION.md, "Adaptive attacks": per-example tensors about the final
margins, the input gradient and (RA models) the gates, summarised by the report
(:func:`ancra.evaluation.report.diagnostics`) and used by the sanity flags."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attacks import margin
from .common import batches, frozen, is_ra_model
from .wrappers import RAView, gates_of


def a8_diagnostics(model, x, y, x_adv, has_adv, *, batch_size=256, grad_model=None) -> dict[str, torch.Tensor]:
    """A8 per-example diagnostics (the report summarises them).

    ``x_adv``/``has_adv``: one successful adversarial input per example (from any attack) and
    whether there is one. Returns ``diag/*`` tensors: clean and adversarial CW margins of the
    final logits (``z_y - max_{j!=y} z_j``, > 0 = correct), all-zero input gradient of the CE and
    its fraction of exactly-zero entries, and for RA models the agreement of the final head with
    the last aux head (clean, adversarial) and whether any gate flipped between clean and
    adversarial input. ``grad_model``: what the gradient is taken of (default ``model``; a
    :class:`~.common.GradPath` wrapper for a model without autograd path)."""
    grad_model = model if grad_model is None else grad_model
    out: dict[str, torch.Tensor] = {}
    margins_c, margins_a, zero, zero_frac = [], [], [], []
    agree_c, agree_a, flips = [], [], []
    ra = is_ra_model(model)
    with frozen(model, grad_model):
        for s in batches(len(x), batch_size):
            xb, yb, ab = x[s], y[s], x_adv[s]
            with torch.enable_grad():
                xg = xb.clone().requires_grad_(True)
                logits = grad_model(xg)
                (g,) = torch.autograd.grad(F.cross_entropy(logits, yb, reduction="sum"), xg)
            g = g.flatten(1)
            zero.append(g.abs().sum(1) == 0)
            zero_frac.append((g == 0).float().mean(1))
            margins_c.append(-margin(logits.detach(), yb))
            with torch.no_grad():
                margins_a.append(-margin(model(ab), yb))
                if ra:
                    hard = RAView(model, "hard")
                    fc_, auxc = hard.heads(xb)
                    fa_, auxa = hard.heads(ab)
                    agree_c.append(fc_.argmax(1) == auxc[-1].argmax(1))
                    agree_a.append(fa_.argmax(1) == auxa[-1].argmax(1))
                    flips.append((gates_of(model, xb) != gates_of(model, ab)).any(1))
    out["diag/margin_clean"] = torch.cat(margins_c).float()
    out["diag/margin_adv"] = torch.cat(margins_a).float()
    out["diag/grad_zero"] = torch.cat(zero)
    out["diag/grad_zero_frac"] = torch.cat(zero_frac)
    out["diag/has_adv"] = has_adv.clone()
    if ra:
        out["diag/agree_clean"] = torch.cat(agree_c)
        out["diag/agree_adv"] = torch.cat(agree_a)
        out["diag/gate_flip"] = torch.cat(flips)
    return out
