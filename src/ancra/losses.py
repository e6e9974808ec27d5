"""Loss terms: Asymmetric Negative Contrast (docs/METHOD.md, "Asymmetric negative contrast") and the base AT objectives
(docs/METHOD.md, "Base objectives"). Every function takes logits of one head and returns a batch-mean scalar, so the
objective can apply it to the final head and to each RA aux head alike."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def anc_similarity(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``s(p, q) = 1[argmax p == argmax q] * sqrt(max p * max q)`` per pair.

    ``p``: (B, K) probabilities of the anchors; ``q``: (B, k, K) of their k negatives.
    Returns (B, k)."""
    p_max, p_cls = p.max(dim=-1)
    q_max, q_cls = q.max(dim=-1)
    same = (p_cls[:, None] == q_cls).to(p.dtype)
    return same * torch.sqrt(p_max[:, None] * q_max)


def anc_loss(anchor_logits: torch.Tensor, negative_logits: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Asymmetric Negative Contrast, ``alpha * mean s(sg(p), q) + (1 - alpha) * mean s(sg(q), p)``.

    ``anchor_logits``: (B, K), natural anchors. ``negative_logits``: (B, K) for one negative per
    anchor or (B, k, K), or (B*k, K) laid out anchor-major (negatives of anchor 0 first). The mean
    runs over all B*k pairs (for k = 1: the reference's sum / batch size). With the default
    ``alpha = 1`` the anchor is frozen and only the negatives are pushed away.
    """
    b, num_classes = anchor_logits.shape
    p = F.softmax(anchor_logits, dim=-1)
    q = F.softmax(negative_logits, dim=-1).reshape(b, -1, num_classes)
    loss = anchor_logits.new_zeros(())
    if alpha != 0:
        loss = loss + alpha * anc_similarity(p.detach(), q).mean()
    if alpha != 1:
        # s is symmetric in its arguments; only which side is frozen changes.
        loss = loss + (1 - alpha) * anc_similarity(p, q.detach()).mean()
    return loss


def pgd_at_loss(nat_logits, adv_logits: torch.Tensor, y: torch.Tensor, beta: float = 0.0) -> torch.Tensor:
    """PGD-AT (Madry et al.): ``CE(f(x_adv), y)``. ``nat_logits`` and ``beta`` are unused."""
    return F.cross_entropy(adv_logits, y)


def standard_loss(nat_logits: torch.Tensor, adv_logits, y: torch.Tensor, beta: float = 0.0) -> torch.Tensor:
    """Standard (non-adversarial) training: ``CE(f(x), y)``."""
    return F.cross_entropy(nat_logits, y)


def trades_loss(nat_logits: torch.Tensor, adv_logits: torch.Tensor, y: torch.Tensor, beta: float = 6.0) -> torch.Tensor:
    """TRADES: ``CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x_adv))`` (batchmean)."""
    kl = F.kl_div(F.log_softmax(adv_logits, 1), F.log_softmax(nat_logits, 1), reduction="batchmean", log_target=True)
    return F.cross_entropy(nat_logits, y) + beta * kl


def mart_loss(nat_logits: torch.Tensor, adv_logits: torch.Tensor, y: torch.Tensor, beta: float = 6.0) -> torch.Tensor:
    """MART (Wang et al. 2020): boosted CE on ``x_adv`` plus
    ``beta * mean_i KL(p_nat || p_adv)_i * (1 - p_nat[y]_i)``."""
    adv_probs = F.softmax(adv_logits, 1)
    top2 = adv_probs.topk(2, dim=1).indices
    # the most probable wrong class of the adversarial example
    wrong = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])
    boosted_ce = F.cross_entropy(adv_logits, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), wrong)
    nat_probs = F.softmax(nat_logits, 1)
    true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
    kl = (nat_probs * (torch.log(nat_probs + 1e-12) - torch.log(adv_probs + 1e-12))).sum(1)
    return boosted_ce + beta * (kl * (1.0000001 - true_probs)).mean()


BASE_LOSSES = {
    "standard": standard_loss,
    "pgd_at": pgd_at_loss,
    "trades": trades_loss,
    "mart": mart_loss,
}
