"""A8 diagnostics of docs/EVALUATION.md, "Adaptive attacks": per-example tensors about the final
margins, the input gradient and (RA models) the gates, summarised by the report
(:func:`ancra.evaluation.report.diagnostics`) and used by the sanity flags.

Every diagnostic is a per-example tensor of shape ``(N,)`` under a ``diag/`` key, so shards and
chunks merge by concatenation (:func:`~.report.merge_reports`) and the summaries and flags are
recomputed from the merged tensors.

**Blind-gradient probe.** An all-zero gradient is the extreme case; the gradient of a masked model
is usually not zero but *blind*: it does not predict what the deployed model does. The probe takes
the input gradient ``g`` of ``CE(model(x), y)`` (the one FGSM, PGD and APGD-CE follow) and steps
``x_h = clip(x + h * sign(g), 0, 1)`` for ``h`` in :data:`PROBE_STEPS` times eps. It stores the
first-order prediction of the CE change, ``g . (x_h - x)``, the actual change of the deployed
model's CE (in float64, so that a CE below float32 resolution still shows its change) and whether
the deployed prediction changed. An example whose gradient is all zero is probed along a random
sign direction instead (the prediction is then 0 and any change is one the gradient did not see).
:func:`blind_gradient` turns these into a per-example verdict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attacks import margin
from .common import batches, frozen, generator, is_ra_model
from .wrappers import RAView, gates_of

#: step sizes of the blind-gradient probe, as fractions of eps
PROBE_STEPS = (1 / 16, 1 / 4, 1.0)
#: key prefix of the probe's tensors: ``diag/blind/<h>/{predicted,actual,changed}``
BLIND_KEY = "diag/blind"
#: key prefix of the per-gate flips: ``diag/gate_flip/<i>`` for RA block ``i``
GATE_FLIP_KEY = "diag/gate_flip"


def probe_steps(eps: float) -> list[float]:
    """The probe's step sizes for budget ``eps`` (:data:`PROBE_STEPS` times eps)."""
    return [f * eps for f in PROBE_STEPS]


def _probe_direction(g: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``sign(g)``, or random signs for an example whose gradient is all zero: a zero step would
    show nothing, a random one shows whether the deployed loss moves where the gradient sees none."""
    zero = g.flatten(1).abs().sum(1) == 0
    d = g.sign()
    if zero.any():
        rnd = torch.randint(0, 2, g[zero].shape, generator=gen, device=g.device).to(g.dtype) * 2 - 1
        d[zero] = rnd
    return d


@torch.no_grad()
def _probe(model, x, y, g, logits, gen, steps) -> dict[str, torch.Tensor]:
    """The probe on one batch (``logits``: the deployed model's on ``x``): per step ``h``, the
    predicted and actual CE change and whether the prediction changed."""
    d = _probe_direction(g, gen)
    ce0 = F.cross_entropy(logits.double(), y, reduction="none")
    pred0 = logits.argmax(1)
    out = {}
    for h in steps:
        xh = (x + h * d).clamp(0, 1)
        zh = model(xh)
        key = f"{BLIND_KEY}/{h:g}"
        out[f"{key}/predicted"] = (g.double() * (xh - x).double()).flatten(1).sum(1)
        out[f"{key}/actual"] = F.cross_entropy(zh.double(), y, reduction="none") - ce0
        out[f"{key}/changed"] = zh.argmax(1) != pred0
    return out


def _gate_flips(model, x, x_adv) -> torch.Tensor:
    """``(B, ra_blocks)``: whether RA block ``i`` picks another class on ``x_adv`` than on ``x``."""
    return gates_of(model, x) != gates_of(model, x_adv)


def a8_diagnostics(
    model, x, y, x_adv, has_adv, *, batch_size=256, grad_model=None, eps: float | None = None, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A8 per-example diagnostics (the report summarises them).

    ``x_adv``/``has_adv``: one successful adversarial input per example (from any attack) and
    whether there is one. Returns ``diag/*`` tensors of shape ``(N,)``:

    * clean and adversarial CW margins of the final logits (``z_y - max_{j!=y} z_j``, > 0 = correct);
    * all-zero input gradient of the CE and its fraction of exactly-zero entries;
    * ``diag/ce_saturated``: the float32 CE is exactly 0 (the softmax rounds the true class to
      probability 1, so the CE gradient has lost the true class's term);
    * RA models: agreement of the final head with the last aux head (clean, adversarial) and, per RA
      block ``i``, whether its gate picks another class on the adversarial input
      (``diag/gate_flip/<i>``);
    * with ``eps``: the blind-gradient probe (module docstring; ``seed`` draws the random
      directions of zero-gradient examples).

    ``grad_model``: what the gradient is taken of (default ``model``; a
    :class:`~.common.GradPath` wrapper for a model without autograd path)."""
    grad_model = model if grad_model is None else grad_model
    parts: dict[str, list[torch.Tensor]] = {}

    def put(key, value):
        parts.setdefault(key, []).append(value)

    ra = is_ra_model(model)
    steps = probe_steps(eps) if eps else []
    gen = generator(seed, x.device)
    with frozen(model, grad_model):
        for s in batches(len(x), batch_size):
            xb, yb, ab = x[s], y[s], x_adv[s]
            with torch.enable_grad():
                xg = xb.clone().requires_grad_(True)
                logits = grad_model(xg)
                (g,) = torch.autograd.grad(F.cross_entropy(logits, yb, reduction="sum"), xg)
            logits = logits.detach()
            put("diag/grad_zero", g.flatten(1).abs().sum(1) == 0)
            put("diag/grad_zero_frac", (g.flatten(1) == 0).float().mean(1))
            put("diag/margin_clean", -margin(logits, yb).float())
            put("diag/ce_saturated", F.cross_entropy(logits.float(), yb, reduction="none") == 0)
            if steps:
                for k, v in _probe(model, xb, yb, g, logits, gen, steps).items():
                    put(k, v)
            with torch.no_grad():
                put("diag/margin_adv", -margin(model(ab), yb).float())
                if ra:
                    hard = RAView(model, "hard")
                    fc_, auxc = hard.heads(xb)
                    fa_, auxa = hard.heads(ab)
                    put("diag/agree_clean", fc_.argmax(1) == auxc[-1].argmax(1))
                    put("diag/agree_adv", fa_.argmax(1) == auxa[-1].argmax(1))
                    for i, flip in enumerate(_gate_flips(model, xb, ab).unbind(1)):
                        put(f"{GATE_FLIP_KEY}/{i}", flip)
    out = {k: torch.cat(v) for k, v in parts.items()}
    out["diag/has_adv"] = has_adv.clone()
    return out


def gate_flips(pe: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Per-gate flips ``{i: (N,) bool}`` of a report's tensors, in block order (empty without)."""
    prefix = GATE_FLIP_KEY + "/"
    found = {int(k[len(prefix) :]): v for k, v in pe.items() if k.startswith(prefix)}
    return dict(sorted(found.items()))


def probe_keys(pe: dict[str, torch.Tensor]) -> list[str]:
    """The probe's step sizes present in ``pe`` (as written in the keys), smallest first."""
    steps = {k.split("/")[2] for k in pe if k.startswith(BLIND_KEY + "/") and k.endswith("/predicted")}
    return sorted(steps, key=float)


def blind_gradient(pe: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-example verdict of the blind-gradient probe, ``(blind, changed)`` (``(N,)`` bool each),
    or None when the probe did not run.

    ``blind``: at none of the probe's step sizes did the gradient, predicting a rise of the CE,
    lead the deployed model to at least half of that rise or to another class. A healthy gradient
    passes at the smallest step already (the actual rise is then close to the predicted one, and
    grows faster at larger steps); a zero gradient predicts no rise; a gradient that points where
    the deployed loss stays flat or falls (a gate that hides the flip, a softmax saturated below
    float32 resolution) fails at every step. ``changed``: the deployed prediction changed at some
    step (for a blind example, a change the gradient did not predict)."""
    steps = probe_keys(pe)
    if not steps:
        return None
    n = len(pe[f"{BLIND_KEY}/{steps[0]}/predicted"])
    tracked = torch.zeros(n, dtype=torch.bool)
    changed = torch.zeros(n, dtype=torch.bool)
    for h in steps:
        pred, actual = pe[f"{BLIND_KEY}/{h}/predicted"].cpu(), pe[f"{BLIND_KEY}/{h}/actual"].cpu()
        flip = pe[f"{BLIND_KEY}/{h}/changed"].cpu()
        tracked |= (pred > 0) & ((actual >= pred / 2) | flip)
        changed |= flip
    return ~tracked, changed
