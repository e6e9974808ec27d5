"""Negative (other-class example) selection for ANC, docs/METHOD.md, "Negative selection".

For each anchor ``i`` pick ``k`` examples ``j`` of the same batch with ``y_j != y_i``. Everything
is a mask / score on the B x B matrix followed by one top-k: no Python loop over pairs.

Strategies (``_adv`` suffix: the negatives are then attacked towards the anchor's class, see
:mod:`ancra.objectives`):
- ``random``: uniform over other-class examples (always used during the ``warmup`` epochs);
- ``soft``: candidates predicted as the anchor's *predicted* class;
- ``hard``: candidates predicted as the anchor's *true* class;
- ``easy``: candidates predicted as neither.
Among candidates the top-k by the candidate's logit for the anchor's class are taken; anchors with
fewer than k candidates are filled up at random from the other-class examples.
"""

from __future__ import annotations

import torch

BASE_STRATEGIES = ("random", "soft", "hard", "easy")
STRATEGIES = BASE_STRATEGIES + tuple(s + "_adv" for s in BASE_STRATEGIES)


def parse_strategy(strategy: str) -> tuple[str, bool]:
    """``'hard_adv'`` -> ``('hard', True)``; unknown names raise ValueError listing the valid ones."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown negative strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    base, _, adv = strategy.partition("_")
    return base, bool(adv)


def needs_predictions(strategy: str, epoch: int, warmup: int) -> bool:
    """Whether selection this epoch needs the batch's natural logits."""
    return parse_strategy(strategy)[0] != "random" and epoch >= warmup


def select_negatives(
    labels: torch.Tensor,
    k: int = 1,
    strategy: str = "random",
    logits: torch.Tensor | None = None,
    epoch: int = 0,
    warmup: int = 10,
    generator: torch.Generator | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Indices (B, k) of each anchor's negatives within the batch.

    ``logits``: the batch's natural logits (B, K), required by soft/hard/easy after warm-up.
    ``check``: raise if an anchor has fewer than ``k`` other-class examples (this waits for the
    device); unchecked, such an anchor gets same-class examples, which the caller can count.
    """
    base, _ = parse_strategy(strategy)
    b = labels.shape[0]
    valid = labels[None, :] != labels[:, None]  # [i, j]: j may be a negative of anchor i
    if check and int(valid.sum(1).min()) < k:
        raise ValueError(
            f"an anchor has fewer than k={k} other-class examples in its batch of {b}: "
            "use a larger batch or a smaller k"
        )
    noise = torch.rand((b, b), generator=generator, device=labels.device)
    if base == "random" or epoch < warmup:
        score = noise
    else:
        if logits is None:
            raise ValueError(f"negative strategy {strategy!r} needs the batch's logits after warm-up")
        pred = logits.argmax(1)
        if base == "soft":
            cand = pred[None, :] == pred[:, None]
        elif base == "hard":
            cand = pred[None, :] == labels[:, None]
        else:  # easy
            cand = (pred[None, :] != labels[:, None]) & (pred[None, :] != pred[:, None])
        class_logit = logits.detach().float().t()[labels]  # [i, j] = logit of j for class y_i
        # Fallback scores lie strictly below every candidate's, so candidates always come first.
        floor = class_logit.min() - 2
        score = torch.where(cand & valid, class_logit, floor + noise)
    return score.masked_fill(~valid, float("-inf")).topk(k, dim=1).indices
