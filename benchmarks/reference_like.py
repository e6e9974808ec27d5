"""A training step that does what the paper's reference ANCRA-TRADES code does, for comparison.

Written from the description of the reference step (docs/METHOD.md, "Paper vs reference code";
docs/PERFORMANCE.md, cost model), not from the reference code (which has no licence). Same maths as
``ancra.objectives.training_step`` with ANCRA-TRADES, but with the reference's costs: fp32 eager
NCHW, negatives sampled with a Python loop over the batch, the targeted attack on the negatives and
the untargeted attack on the anchors as two separate attacks, ANC summed pair by pair in a Python
loop, and three extra eval-mode logging forwards per step. Used only by benchmarks/ to measure our
speed-up; never by the library.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from ancra.attacks import pgd
from ancra.losses import trades_loss


def sample_negatives_loop(y: torch.Tensor, rng: random.Random) -> torch.Tensor:
    labels = y.tolist()
    idx = []
    for yi in labels:
        candidates = [j for j, yj in enumerate(labels) if yj != yi]
        idx.append(rng.choice(candidates))
    return torch.tensor(idx, device=y.device)


def anc_loop(anchor_logits: torch.Tensor, negative_logits: torch.Tensor) -> torch.Tensor:
    p = F.softmax(anchor_logits, 1).detach()
    q = F.softmax(negative_logits, 1)
    total = anchor_logits.new_zeros(())
    for i in range(p.shape[0]):
        if p[i].argmax() == q[i].argmax():
            total = total + torch.sqrt(p[i].max() * q[i].max())
    return total / p.shape[0]


def reference_like_step(model, optimizer, x, y, obj, rng: random.Random, generator=None) -> dict:
    cr = obj.cr_beta
    attack = dict(
        eps=obj.eps,
        step_size=obj.step_size,
        steps=obj.steps,
        loss="ce",
        random_start=obj.random_start,
        cr_beta=cr,
        generator=generator,
    )
    idx = sample_negatives_loop(y, rng)
    x_neg, y_neg = x[idx], y[idx]
    x_neg = pgd(model, x_neg, y, targeted=True, **attack)  # towards the anchor's class
    x_adv = pgd(model, x, y, **attack)
    model.train()
    out_nat = model.forward_with_aux(x, y)
    out_adv = model.forward_with_aux(x_adv, y)
    out_neg = model.forward_with_aux(x_neg, y_neg)
    heads = list(
        zip(
            [out_nat.logits, *out_nat.aux_logits],
            [out_adv.logits, *out_adv.aux_logits],
            [out_neg.logits, *out_neg.aux_logits],
        )
    )
    base = trades_loss(*heads[0][:2], y, obj.beta) + cr * sum(
        trades_loss(n, a, y, obj.beta) for n, a, _ in heads[1:]
    ) / (len(heads) - 1)
    anc = anc_loop(heads[0][0], heads[0][2]) + cr * sum(anc_loop(n, g) for n, _, g in heads[1:]) / (len(heads) - 1)
    loss = base + obj.zeta * anc
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    # the reference's logging: three more forwards in eval mode for the accuracies
    model.eval()
    with torch.no_grad():
        nat_acc = (model(x).argmax(1) == y).float().mean().item()
        adv_acc = (model(x_adv).argmax(1) == y).float().mean().item()
        neg_acc = (model(x_neg).argmax(1) == y_neg).float().mean().item()
    model.train()
    return {"loss": loss.item(), "nat_acc": nat_acc, "adv_acc": adv_acc, "neg_acc": neg_acc}
