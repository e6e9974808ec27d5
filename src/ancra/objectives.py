"""The ANCRA objective on top of PGD-AT / TRADES / MART, and one training step.

``ANCRA-X = X(final) + cr_beta * mean_h X(aux_h) + zeta * [ANC(final) + cr_beta * mean_h ANC(aux_h)]``
(docs/METHOD.md, "Base objectives"). Every ablation is a configuration of :class:`Objective`, not a copy:

========================  =================================================================
plain X (baseline)         ``zeta=0`` on a model with ``ra_blocks=0``
ANCRA-X                    ``zeta>0``, ``negatives='random_adv'``, model with RA
RA only                    ``zeta=0``, model with RA
ANC only                   ``zeta>0``, model with ``ra_blocks=0``
symmetric ANC              ``alpha=0.5``
natural negatives          ``negatives='random'`` (or another strategy without ``_adv``)
========================  =================================================================

One step (:func:`training_step`): (1) negatives, (2) the untargeted attack on the anchors and the
targeted attack on the negatives as ONE batch, (3) up to three train-mode forwards ``(x, y)``,
``(x_adv, y)``, ``(x_neg, y_neg)``, (4) loss, backward, optimiser step. Metrics reuse those
outputs. The only other forward is a no-grad natural one that the prediction-based negative
strategies (soft/hard/easy) need after warm-up; the default ``random_adv`` never runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from .attacks import STARTS, attack_mode, pgd
from .distributed import unwrap
from .losses import BASE_LOSSES, anc_loss
from .models.ra import RAOutput
from .negatives import STRATEGIES, needs_predictions, parse_strategy, select_negatives
from .options import check_option, option
from .precision import autocast_context, no_autocast

METHODS = tuple(BASE_LOSSES)


@dataclass
class Objective:
    """What one training step optimises, and the ``[objective]`` section of a config (each field's
    default and valid range are declared here once). Defaults: TRADES with the CE attack of the
    reference ANCRA code and RA heads weighted by ``cr_beta`` (RA applies only to an RA model);
    ANC is off until ``zeta > 0``. Invalid values raise :class:`~ancra.errors.UserError` (a
    ``ValueError``) naming the field."""

    method: str = option("trades", choices=METHODS, help="base objective")
    beta: float = option(6.0, lo=0, help="TRADES / MART trade-off")
    attack_loss: str = option(
        "ce", choices=("ce", "kl"), help="TRADES only: kl (canonical) or ce (reference ANCRA code)"
    )
    eps: float = option(8 / 255, lo=0, hi=1, lo_open=True)
    step_size: float = option(0.007, lo=0, hi=1, lo_open=True)
    steps: int = option(10, lo=1, hi=1000)
    random_start: str = option("normal", choices=STARTS, help="normal: x + 0.001 N(0, 1)")
    cr_beta: float = option(2.0, lo=0, help="weight of the RA aux heads (ignored for models without RA)")
    zeta: float = option(0.0, lo=0, help="ANC weight (0 disables ANC)")
    alpha: float = option(1.0, lo=0, hi=1, help="ANC asymmetry: 1 = anchor frozen, only negatives pushed")
    negatives: str = option("random_adv", choices=STRATEGIES)
    k: int = option(1, lo=1, help="negatives per anchor")
    warmup: int = option(10, lo=0, help="epochs of random negatives before soft/hard/easy apply")

    def __post_init__(self) -> None:
        for f in fields(self):
            what = "negative strategy" if f.name == "negatives" else f.name
            setattr(self, f.name, check_option(f.name, f, getattr(self, f.name), unknown=what))

    @property
    def uses_anc(self) -> bool:
        return self.zeta > 0

    @property
    def adversarial_negatives(self) -> bool:
        return parse_strategy(self.negatives)[1]

    @property
    def train_attack_loss(self) -> str:
        return self.attack_loss if self.method == "trades" else "ce"


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(1) == y).float().mean()


def _over_heads(fn, outputs, cr_beta: float) -> torch.Tensor:
    """``fn(final heads) + cr_beta * mean_h fn(aux heads)``; ``outputs`` are RAOutputs (or None)
    whose heads are passed to ``fn`` positionally."""
    final = fn(*[o.logits if o is not None else None for o in outputs])
    present = [o for o in outputs if o is not None]
    n_aux = len(present[0].aux_logits)
    if n_aux == 0 or cr_beta == 0:
        return final
    aux = [fn(*[o.aux_logits[h] if o is not None else None for o in outputs]) for h in range(n_aux)]
    return final + cr_beta * torch.stack(aux).mean()


def training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    objective: Objective,
    epoch: int = 0,
    generator: torch.Generator | None = None,
    *,
    precision: str = "fp32",
    sync_checks: bool = True,
) -> dict[str, torch.Tensor]:
    """One optimiser step of ``objective`` on the batch ``(x, y)``; usable from any training loop.

    ``model`` is an ancra network (:func:`ancra.models.create_model`; Reverse Attention needs its
    RA blocks), or any ``nn.Module`` classifier returning logits, for which the base objective and
    ANC apply to its output (there are no RA heads); either may be wrapped in
    DistributedDataParallel. ``x`` holds images in [0, 1].

    ``precision``: ``bf16`` runs the forwards and the loss (attacks included) under bf16 autocast;
    the backward pass and the optimiser step always run outside autocast. ``sync_checks``: check
    that ``x`` lies in [0, 1] and that every anchor has enough other-class negatives before using
    them (each check waits for the device); a loop that guarantees the range (the Trainer's uint8
    data) passes False and checks the returned ``same_class_negatives`` every few steps instead.

    Returns detached 0-dim tensors (no device sync): ``loss``, ``base_loss``, ``anc_loss``,
    ``nat_acc``, ``adv_acc``, ``neg_acc``, ``same_class_negatives`` (only those the method
    computes; the last is the fraction of negatives of the anchor's own class, 0 unless a batch
    has too few classes).
    """
    obj = objective
    # ``model`` may be a DistributedDataParallel wrapper: gradient-carrying forwards go through
    # it, attacks and no-grad forwards use the inner network (no gradient sync needed there).
    # Compiled in place (Trainer, ancra bench), the inner network runs compiled code for both.
    net = unwrap(model)
    cr_beta = obj.cr_beta if getattr(net, "ra_blocks", 0) > 0 else 0.0
    with autocast_context(x.device, precision):
        metrics, loss = _forward_and_loss(model, net, x, y, obj, cr_beta, epoch, generator, sync_checks)
    with no_autocast(x.device):  # a caller's own autocast region included
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return metrics


def _forward_and_loss(model, net, x, y, obj: Objective, cr_beta, epoch, generator, sync_checks):
    """Steps (1)-(4) of :func:`training_step` up to the loss: returns (metrics, loss)."""
    b = x.shape[0]

    # (1) negatives of each anchor, drawn within the batch
    x_neg = y_neg = None
    if obj.uses_anc:
        logits = None
        if needs_predictions(obj.negatives, epoch, obj.warmup):
            with torch.no_grad(), attack_mode(net):
                logits = net(x)
        idx = select_negatives(y, obj.k, obj.negatives, logits, epoch, obj.warmup, generator, check=sync_checks)
        x_neg, y_neg = x[idx.reshape(-1)], y[idx.reshape(-1)]
        same_class = (y[idx] == y[:, None]).float().mean()

    # (2) both attacks as one batch: untargeted on the anchors, targeted (towards each anchor's
    # class) on the negatives
    attack = dict(
        eps=obj.eps,
        step_size=obj.step_size,
        steps=obj.steps,
        loss=obj.train_attack_loss,
        random_start=obj.random_start,
        cr_beta=cr_beta,
        generator=generator,
    )
    attack_anchors = obj.method != "standard"
    attack_negatives = obj.uses_anc and obj.adversarial_negatives
    x_adv = None
    if attack_anchors or attack_negatives:
        xs, ys, targeted = [], [], []
        if attack_anchors:
            xs.append(x), ys.append(y), targeted.append(torch.zeros(b, dtype=torch.bool, device=x.device))
        if attack_negatives:
            xs.append(x_neg), ys.append(y.repeat_interleave(obj.k))
            targeted.append(torch.ones(x_neg.shape[0], dtype=torch.bool, device=x.device))
        adv = pgd(net, torch.cat(xs), torch.cat(ys), targeted=torch.cat(targeted), check_range=sync_checks, **attack)
        if attack_anchors:
            x_adv = adv[:b]
        if attack_negatives:
            x_neg = adv[-x_neg.shape[0] :]

    # (3) train-mode forwards, with label-driven RA masks; the negative uses its own label
    model.train()
    needs_nat = obj.method != "pgd_at" or obj.uses_anc

    def train_forward(inputs, labels) -> RAOutput:
        if hasattr(net, "forward_with_aux"):  # an ancra network: label-driven RA masks, aux heads
            return model(inputs, labels, with_aux=True)
        logits = model(inputs)  # any classifier: the final head only (ANC and the base losses apply)
        if not torch.is_tensor(logits):
            raise TypeError(f"training_step needs a model that returns logits, got {type(logits).__name__}")
        return RAOutput(logits)

    out_nat = train_forward(x, y) if needs_nat else None
    out_adv = train_forward(x_adv, y) if x_adv is not None else None
    out_neg = train_forward(x_neg, y_neg) if obj.uses_anc else None

    # (4) loss (backward and step: training_step, outside autocast)
    base_fn = BASE_LOSSES[obj.method]
    base = _over_heads(lambda nat, adv: base_fn(nat, adv, y, obj.beta), (out_nat, out_adv), cr_beta)
    loss = base
    metrics = {}
    if obj.uses_anc:
        anc = _over_heads(lambda nat, neg: anc_loss(nat, neg, obj.alpha), (out_nat, out_neg), cr_beta)
        loss = base + obj.zeta * anc
        metrics["anc_loss"] = anc.detach()
        metrics["neg_acc"] = _accuracy(out_neg.logits.detach(), y_neg)
        metrics["same_class_negatives"] = same_class
    metrics["loss"] = loss.detach()
    metrics["base_loss"] = base.detach()
    if out_nat is not None:
        metrics["nat_acc"] = _accuracy(out_nat.logits.detach(), y)
    if out_adv is not None:
        metrics["adv_acc"] = _accuracy(out_adv.logits.detach(), y)
    return metrics, loss
