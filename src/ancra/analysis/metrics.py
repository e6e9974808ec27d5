"""The numbers of ``analysis.json``: distances of positive and negative feature pairs, their
per-class and overall statistics and the separation of the two distributions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .features import PairFeatures


def cosine_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Row-wise ``1 - cos(a_i, b_i)`` of two ``(N, D)`` feature tensors, in ``[0, 2]``.

    Orthogonal rows give 1, identical directions 0, opposite 2. A zero row has cosine 0
    (distance 1), as :func:`torch.nn.functional.cosine_similarity` with ``eps`` defines it."""
    return 1.0 - F.cosine_similarity(a, b, dim=-1, eps=eps)


def l2_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Euclidean distance ``||a_i - b_i||_2`` of two ``(N, D)`` feature tensors."""
    return (a - b).norm(dim=-1)


DISTANCES = {"cosine": cosine_distance, "l2": l2_distance}


def class_name(c: int, class_names: tuple[str, ...] | None) -> str:
    return class_names[c] if class_names is not None and c < len(class_names) else str(c)


def summary_stats(values: np.ndarray) -> dict:
    """``mean``, ``std`` (population, ddof 0), ``median`` and ``count`` of a 1-D array
    (``None`` statistics for an empty one, so the JSON never holds NaN)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"mean": None, "std": None, "median": None, "count": 0}
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "median": float(np.median(values)),
        "count": int(values.size),
    }


def per_class_stats(
    values: np.ndarray, labels: np.ndarray, num_classes: int, class_names: tuple[str, ...] | None = None
) -> dict:
    """Overall and per-class :func:`summary_stats`, keyed ``"0" .. str(K-1)`` (each with its
    class ``name``); ``labels`` is the anchor's class of each pair. The loop runs over classes."""
    values, labels = np.asarray(values, dtype=np.float64), np.asarray(labels)
    per_class = {}
    for c in range(num_classes):
        per_class[str(c)] = {"name": class_name(c, class_names), **summary_stats(values[labels == c])}
    return {"overall": summary_stats(values), "per_class": per_class}


def separation_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(negative distance > positive distance) over all (positive, negative) pairs, ties half
    (the Mann-Whitney AUC): 1 = every negative pair farther apart than every positive pair,
    0.5 = indistinguishable."""
    pos, neg = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    values = np.concatenate([pos, neg])
    ranks = np.empty(values.size)
    ranks[np.argsort(values, kind="mergesort")] = np.arange(1, values.size + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ranks = (np.bincount(inverse, weights=ranks) / counts)[inverse]  # average rank of ties
    rank_sum_neg = ranks[pos.size :].sum()
    return float((rank_sum_neg - neg.size * (neg.size + 1) / 2) / (pos.size * neg.size))


def summarize_pairs(
    pf: PairFeatures, y: torch.Tensor, neg_idx: torch.Tensor, num_classes: int, class_names: tuple[str, ...] | None
) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """Statistics of one checkpoint for ``analysis.json`` and the raw distances for the plots."""
    labels = y.cpu().numpy()
    raw: dict[str, dict[str, np.ndarray]] = {"positive": {}, "negative": {}, "negative_natural": {}}
    for name, fn in DISTANCES.items():
        raw["positive"][name] = fn(pf.natural, pf.adversarial).double().numpy()
        raw["negative"][name] = fn(pf.natural, pf.negative).double().numpy()
        raw["negative_natural"][name] = fn(pf.natural, pf.natural[neg_idx]).double().numpy()
    distances = {
        kind: {name: per_class_stats(v, labels, num_classes, class_names) for name, v in d.items()}
        for kind, d in raw.items()
    }
    separation = {}
    for name in DISTANCES:
        pos, neg = raw["positive"][name], raw["negative"][name]
        pos_med = float(np.median(pos))
        separation[name] = {
            "auc": separation_auc(pos, neg),
            "median_ratio": float(np.median(neg) / pos_med) if pos_med > 0 else None,
        }
    accuracy = {
        "natural": float((pf.pred_natural == y).double().mean()),
        "adversarial": float((pf.pred_adversarial == y).double().mean()),
        "targeted_negative_success": float((pf.pred_negative == y).double().mean()),
    }
    summary = {
        "accuracy": accuracy,
        "feature_dim": int(pf.natural.shape[1]),
        "feature_norm": summary_stats(pf.natural.norm(dim=1).double().numpy()),
        "distances": distances,
        "separation": separation,
    }
    return summary, raw
