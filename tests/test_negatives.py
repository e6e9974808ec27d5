"""Negative selection: never the anchor's class, each strategy's rule, vectorised top-k."""

import pytest
import torch

from ancra.negatives import select_negatives

LABELS = torch.tensor([0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize("strategy", ["random", "soft", "hard", "easy", "random_adv", "hard_adv"])
def test_never_the_anchors_class(strategy):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (64,), generator=g)
    logits = torch.randn(64, 4, generator=g)
    for k in (1, 3):
        idx = select_negatives(y, k, strategy, logits, epoch=20, warmup=10, generator=g)
        assert idx.shape == (64, k)
        assert (y[idx] != y[:, None]).all()
        assert (idx.sort(1).values.diff(dim=1) != 0).all()  # k distinct negatives


def _logits(preds, strength):
    """Logits whose argmax is ``preds`` and whose values encode ``strength[j]`` per class."""
    out = torch.full((len(preds), 3), -5.0)
    for j, (c, s) in enumerate(zip(preds, strength)):
        out[j, c] = s
    return out


def test_hard_takes_candidates_predicted_as_anchors_true_class_top_by_logit():
    # predictions: 0 0 0 1 0 2 -> for anchor of class 1 (index 2/3) the hard candidates are
    # examples of another class predicted as 1: none; for class 0 anchors: index 3 is
    # class 1 predicted 1 -> no; examples of other classes predicted 0: index 2 (class 1) and 4 (class 2)
    logits = _logits([0, 0, 0, 1, 0, 2], [1, 1, 3.0, 1, 7.0, 1])
    idx = select_negatives(LABELS, 1, "hard", logits, epoch=5, warmup=0)
    assert idx[0].item() == 4 and idx[1].item() == 4  # the larger logit for class 0 wins
    idx2 = select_negatives(LABELS, 2, "hard", logits, epoch=5, warmup=0)
    assert set(idx2[0].tolist()) == {2, 4}


def test_soft_takes_candidates_with_the_anchors_predicted_class():
    logits = _logits([2, 0, 2, 1, 0, 1], [1, 1, 4.0, 1, 1, 1])
    idx = select_negatives(LABELS, 1, "soft", logits, epoch=5, warmup=0)
    # anchor 0 (class 0) is predicted 2: its only other-class example predicted 2 is index 2
    assert idx[0].item() == 2
    # anchor 2 (class 1, predicted 2): other-class examples predicted 2: index 0
    assert idx[2].item() == 0


def test_easy_takes_candidates_predicted_as_neither():
    logits = _logits([0, 0, 1, 1, 2, 2], [1] * 6)
    # correct predictions everywhere: for a class-0 anchor predicted 0, candidates are predicted
    # neither 0 nor 0 -> classes 1 and 2 (indices 2..5)
    for _ in range(5):
        idx = select_negatives(LABELS, 1, "easy", logits, epoch=5, warmup=0)
        assert idx[0].item() in {2, 3, 4, 5}
    # make index 5 predicted 0: it is no longer easy for class-0 anchors
    logits2 = _logits([0, 0, 1, 1, 2, 0], [1] * 6)
    seen = {
        select_negatives(LABELS, 1, "easy", logits2, epoch=5, warmup=0, generator=torch.Generator().manual_seed(s))[
            0
        ].item()
        for s in range(40)
    }
    assert 5 not in seen and seen <= {2, 3, 4}


def test_warmup_and_fallback_are_random():
    logits = _logits([0, 0, 1, 1, 2, 2], [1] * 6)
    # before warm-up the strategy is ignored: all other-class examples appear
    seen = {
        select_negatives(LABELS, 1, "hard", logits, epoch=0, warmup=10, generator=torch.Generator().manual_seed(s))[
            0
        ].item()
        for s in range(60)
    }
    assert seen == {2, 3, 4, 5}
    # hard with no candidates (all predictions correct) falls back to random other-class examples
    seen = {
        select_negatives(LABELS, 1, "hard", logits, epoch=20, warmup=10, generator=torch.Generator().manual_seed(s))[
            0
        ].item()
        for s in range(60)
    }
    assert seen == {2, 3, 4, 5}


def test_too_few_other_class_examples_is_an_error():
    with pytest.raises(ValueError, match="fewer than k"):
        select_negatives(torch.tensor([0, 0, 1]), 2, "random")
    with pytest.raises(ValueError, match="choose one of"):
        select_negatives(LABELS, 1, "hardest")
