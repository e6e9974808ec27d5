"""``ancra analyze``: does a checkpoint meet ANCRA's two criteria in its feature space?

METHOD.md section 1: **Alignment** (a natural example and its adversarial example have close
features) and **Exclusion** (features of an example stay away from those of other classes, even
when an other-class example is attacked towards the anchor's class). On the first ``N`` test
examples this module measures, with the penultimate feature ``f`` (the pooled input of the final
``fc``, from ``model.forward_with_aux(x).features`` in eval mode with predicted-label RA, i.e. the
inference path):

- **positive pairs** ``(f(x_i), f(x_i^adv))``: ``x_i^adv`` is an untargeted CE-PGD example of
  ``x_i`` (L-inf ``eps``, step ``eps/4``, ``steps`` steps, uniform start in the eps-ball);
- **negative pairs** ``(f(x_i), f(x_j^adv))``: ``j`` is a random test example of another class and
  ``x_j^adv`` a targeted CE-PGD example of ``x_j`` towards ``y_i`` (same eps, step, steps) - the
  adversarial negatives of ANC (METHOD.md section 3, ``random_adv``);

with the cosine distance ``1 - cos`` and the L2 distance, summarised per class (the anchor's class)
and overall. Alignment wants small positive distances; Exclusion wants negative distances well
above them (``separation.auc`` = P(negative distance > positive distance)).

The attack uses plain CE on the final logits (``cr_beta = 0``), the same for every checkpoint, so
models with and without RA are attacked alike; the negatives and the attacks' random starts are
drawn once from ``--seed`` and shared by all checkpoints (paired comparison).

Outputs in ``--out``: ``analysis.json`` and four PNGs (``distances``, ``embedding``,
``training_curves``, ``acc_vs_eps``); a plot without input is skipped with a note in the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fmnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck"),
}
EMBEDDINGS = ("auto", "umap", "tsne")
PLOTS = ("distances", "embedding", "training_curves", "acc_vs_eps")
#: metrics.jsonl keys plotted by ``training_curves.png``: (key, legend text, line style)
LOSS_CURVES = (("loss", "total loss", "-"), ("base_loss", "base AT loss", "--"), ("anc_loss", "ANC loss", ":"))
ACC_CURVES = (("nat_acc", "train natural", "-"), ("adv_acc", "train adversarial", "--"),
              ("val_clean_acc", "val clean", "-."), ("val_pgd_acc", "val PGD", ":"))


def _log(msg: str) -> None:
    print(f"[analyze] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Pure functions: distances, statistics, negative sampling
# --------------------------------------------------------------------------------------------


def cosine_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Row-wise ``1 - cos(a_i, b_i)`` of two ``(N, D)`` feature tensors, in ``[0, 2]``.

    Orthogonal rows give 1, identical directions 0, opposite 2. A zero row has cosine 0
    (distance 1), as :func:`torch.nn.functional.cosine_similarity` with ``eps`` defines it."""
    return 1.0 - F.cosine_similarity(a, b, dim=-1, eps=eps)


def l2_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Euclidean distance ``||a_i - b_i||_2`` of two ``(N, D)`` feature tensors."""
    return (a - b).norm(dim=-1)


DISTANCES = {"cosine": cosine_distance, "l2": l2_distance}


def summary_stats(values: np.ndarray) -> dict:
    """``mean``, ``std`` (population, ddof 0), ``median`` and ``count`` of a 1-D array
    (``None`` statistics for an empty one, so the JSON never holds NaN)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"mean": None, "std": None, "median": None, "count": 0}
    return {"mean": float(values.mean()), "std": float(values.std()), "median": float(np.median(values)),
            "count": int(values.size)}


def per_class_stats(values: np.ndarray, labels: np.ndarray, num_classes: int,
                    class_names: tuple[str, ...] | None = None) -> dict:
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
    rank_sum_neg = ranks[pos.size:].sum()
    return float((rank_sum_neg - neg.size * (neg.size + 1) / 2) / (pos.size * neg.size))


def sample_other_class(y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """For each anchor ``i`` the index ``j`` of a uniformly random example with ``y[j] != y[i]``.

    Vectorised in O(N): with the examples sorted by class, the other-class examples of anchor
    ``i`` are the sorted positions outside its class's block ``[start, start + count)``; draw a
    rank ``r`` among the ``N - count`` of them and skip the block."""
    y = y.cpu()
    n = y.numel()
    order = torch.argsort(y, stable=True)
    counts = torch.bincount(y)
    starts = torch.cumsum(counts, 0) - counts
    own = counts[y]
    others = n - own
    if bool((others == 0).any()):
        raise UserError("the analysed examples hold a single class: negative pairs need at least two classes "
                        "(raise --n-examples)")
    r = (torch.rand(n, generator=generator, dtype=torch.float64) * others).long().clamp_(max=others - 1)
    pos = torch.where(r < starts[y], r, r + own)
    return order[pos]


def class_name(c: int, class_names: tuple[str, ...] | None) -> str:
    return class_names[c] if class_names is not None and c < len(class_names) else str(c)


# --------------------------------------------------------------------------------------------
# Features of natural, adversarial and adversarial-negative examples
# --------------------------------------------------------------------------------------------


@dataclass
class PairFeatures:
    """Penultimate features (``(N, D)``, CPU) and predictions of one checkpoint."""

    natural: torch.Tensor       # f(x_i)
    adversarial: torch.Tensor   # f(x_i^adv), untargeted
    negative: torch.Tensor      # f(x_j^adv), j = neg_idx[i], targeted towards y_i
    pred_natural: torch.Tensor
    pred_adversarial: torch.Tensor
    pred_negative: torch.Tensor


@torch.no_grad()
def _features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = model.forward_with_aux(x)  # no labels: predicted-label RA, the inference path
    if out.features is None:
        raise UserError("the model returns no penultimate features (forward_with_aux().features is None)")
    return out.features.float(), out.logits.argmax(1)


def extract_pair_features(model: nn.Module, x: torch.Tensor, y: torch.Tensor, neg_idx: torch.Tensor, *,
                          eps: float, steps: int, batch_size: int, seed: int,
                          device: torch.device, desc: str = "") -> PairFeatures:
    """Attack and embed the ``N`` examples ``x`` (float [0,1], CPU) batch by batch.

    Each batch attacks its anchors (untargeted, label ``y_i``) and their negatives ``x[neg_idx]``
    (targeted to ``y_i``) as one PGD call with a per-example ``targeted`` mask, then takes
    features of natural anchors, adversarial anchors and adversarial negatives in one forward."""
    from .attacks import pgd
    from .progress import Progress

    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    n = x.shape[0]
    feats_out: dict[str, list[torch.Tensor]] = {k: [] for k in ("natural", "adversarial", "negative")}
    preds_out: dict[str, list[torch.Tensor]] = {k: [] for k in feats_out}
    n_batches = math.ceil(n / batch_size)
    bar = Progress(n_batches, desc=desc)
    for b, start in enumerate(range(0, n, batch_size)):
        sl = slice(start, min(start + batch_size, n))
        xa, ya = x[sl].to(device), y[sl].to(device)
        xn = x[neg_idx[sl]].to(device)
        m = xa.shape[0]
        inputs = torch.cat([xa, xn])
        targets = torch.cat([ya, ya])
        targeted = torch.cat([torch.zeros(m, dtype=torch.bool), torch.ones(m, dtype=torch.bool)]).to(device)
        x_adv = pgd(model, inputs, targets, eps=eps, step_size=eps / 4, steps=steps, loss="ce",
                    targeted=targeted, random_start="uniform", generator=gen)
        feats, preds = _features(model, torch.cat([xa, x_adv]))
        for i, key in enumerate(feats_out):  # rows: natural anchors, adversarial anchors, adv. negatives
            feats_out[key].append(feats[i * m:(i + 1) * m].cpu())
            preds_out[key].append(preds[i * m:(i + 1) * m].cpu())
        bar.update(b + 1)
    bar.close()
    f = {k: torch.cat(v) for k, v in feats_out.items()}
    p = {k: torch.cat(v) for k, v in preds_out.items()}
    return PairFeatures(f["natural"], f["adversarial"], f["negative"],
                        p["natural"], p["adversarial"], p["negative"])


def summarize_pairs(pf: PairFeatures, y: torch.Tensor, neg_idx: torch.Tensor, num_classes: int,
                    class_names: tuple[str, ...] | None) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """Statistics of one checkpoint for ``analysis.json`` and the raw distances for the plots."""
    labels = y.cpu().numpy()
    raw: dict[str, dict[str, np.ndarray]] = {"positive": {}, "negative": {}, "negative_natural": {}}
    for name, fn in DISTANCES.items():
        raw["positive"][name] = fn(pf.natural, pf.adversarial).double().numpy()
        raw["negative"][name] = fn(pf.natural, pf.negative).double().numpy()
        raw["negative_natural"][name] = fn(pf.natural, pf.natural[neg_idx]).double().numpy()
    distances = {kind: {name: per_class_stats(v, labels, num_classes, class_names) for name, v in d.items()}
                 for kind, d in raw.items()}
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


# --------------------------------------------------------------------------------------------
# Inputs: checkpoints, run directories, evaluation reports
# --------------------------------------------------------------------------------------------


def checkpoint_label(path: Path) -> str:
    """``<parent folder>/<file>`` (e.g. ``fmnist-demo/best.pt``), the key in ``analysis.json``."""
    parent = path.resolve().parent.name
    return f"{parent}/{path.name}" if parent else path.name


def _config_of(model: nn.Module) -> dict:
    meta = getattr(model, "checkpoint_meta", None) or {}
    cfg = meta.get("config") if isinstance(meta, dict) else None
    return cfg if isinstance(cfg, dict) else {}


def _section(cfg: dict, name: str) -> dict:
    sec = cfg.get(name)
    return sec if isinstance(sec, dict) else {}


def read_metrics(run_dir: Path) -> list[dict]:
    """The per-epoch records of ``run_dir/metrics.jsonl`` (``UserError`` if absent or corrupt)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir} has no metrics.jsonl: pass a run directory written by `ancra train --out`")
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict) or "epoch" not in rec:
            raise UserError(f"{path}:{i}: expected a JSON object with an 'epoch' key")
        records.append(rec)
    if not records:
        raise UserError(f"{path} holds no epoch yet")
    return records


def _parse_eps(value) -> float:
    """An eps as a number or a fraction string (``"8/255"``, as RobustBench-like reports write it)."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return float(Fraction(value.strip()))
    raise ValueError(value)


def _curve_points(obj) -> tuple[np.ndarray, np.ndarray] | None:
    """(eps, acc) arrays from one curve, ``None`` if ``obj`` is not one. Accepted: ``{eps: acc}``
    (what ``ancra eval`` writes, eps keys as strings such as ``"0.05"`` or ``"8/255"``),
    ``{"eps": [...], "acc": [...]}`` (also ``accuracy``/``robust_acc``), a list of ``[eps, acc]``
    pairs or a list of ``{"eps":, "acc":}`` objects."""
    try:
        if isinstance(obj, dict) and obj and "eps" not in obj:
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj.values()):
                return None
            eps, acc = [_parse_eps(e) for e in obj], [float(a) for a in obj.values()]
        elif isinstance(obj, dict) and "eps" in obj:
            key = next((k for k in ("acc", "accuracy", "robust_acc") if k in obj), None)
            if key is None or len(obj["eps"]) != len(obj[key]):
                return None
            eps, acc = [_parse_eps(e) for e in obj["eps"]], [float(a) for a in obj[key]]
        elif isinstance(obj, list) and obj and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in obj):
            eps, acc = [_parse_eps(p[0]) for p in obj], [float(p[1]) for p in obj]
        elif isinstance(obj, list) and obj and all(isinstance(p, dict) and "eps" in p for p in obj):
            key = next((k for k in ("acc", "accuracy", "robust_acc") if k in obj[0]), None)
            if key is None:
                return None
            eps, acc = [_parse_eps(p["eps"]) for p in obj], [float(p[key]) for p in obj]
        else:
            return None
    except (TypeError, ValueError, ZeroDivisionError, KeyError):
        return None
    eps_a, acc_a = np.asarray(eps, np.float64), np.asarray(acc, np.float64)
    order = np.argsort(eps_a, kind="stable")
    return eps_a[order], acc_a[order]


def _find_key(obj, key: str, depth: int = 0):
    """First value stored under ``key`` in nested dicts/lists (a dict's own keys before its children)."""
    if depth > 6:
        return None
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        children = list(obj.values())
    elif isinstance(obj, list):
        children = obj
    else:
        return None
    for child in children:
        if isinstance(child, (dict, list)):
            found = _find_key(child, key, depth + 1)
            if found is not None:
                return found
    return None


def read_acc_vs_eps(path: Path) -> dict:
    """The accuracy-vs-eps curve(s) of an evaluation ``report.json``.

    Looks for the key ``acc_vs_eps`` anywhere in the report (``ancra eval`` writes
    ``report["sanity"]["acc_vs_eps"] = {attack: {eps: acc}}``); its value is one curve (see
    :func:`_curve_points`) or a dict ``{attack name: curve}``. Returns ``{"label", "path",
    "dataset", "eps_value", "curves": {name: (eps, acc)}}``; ``UserError`` if the file or the
    curve is missing."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"report {path} does not exist")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"report {path} is not valid JSON ({getattr(e, 'msg', e)})") from None
    value = _find_key(report, "acc_vs_eps")
    if not value:
        raise UserError(f"report {path} has no 'acc_vs_eps' curve (run `ancra eval` with the accuracy-vs-eps sanity check)")
    curves = {}
    if isinstance(value, dict) and "eps" not in value and all(isinstance(v, (dict, list)) for v in value.values()):
        for name, sub in value.items():  # {attack: curve}
            pts = _curve_points(sub)
            if pts is not None:
                curves[str(name)] = pts
    else:
        pts = _curve_points(value)
        if pts is not None:
            curves["acc"] = pts
    if not curves:
        raise UserError(f"report {path}: 'acc_vs_eps' holds no readable curve (expected {{attack: {{eps: acc}}}}, "
                        "{'eps': [...], 'acc': [...]} or a list of [eps, acc] pairs)")
    top = report if isinstance(report, dict) else {}
    dataset, eps_value = top.get("dataset"), top.get("eps_value")
    parent = path.resolve().parent.name
    return {"label": f"{parent}/{path.name}" if parent else path.name, "path": str(path),
            "dataset": str(dataset).lower() if dataset else None,
            "eps_value": float(eps_value) if isinstance(eps_value, (int, float)) else None, "curves": curves}


# --------------------------------------------------------------------------------------------
# Embedding
# --------------------------------------------------------------------------------------------


def _umap_available() -> bool:
    try:
        import umap  # noqa: F401
    except Exception:  # umap-learn pulls numba; any import failure means "not usable"
        return False
    return True


def resolve_embedding(choice: str) -> str:
    """``umap`` or ``tsne`` for ``--embedding auto|umap|tsne`` (``UserError`` if not installed)."""
    if choice in ("auto", "umap") and _umap_available():
        return "umap"
    if choice == "umap":
        raise UserError("--embedding umap needs umap-learn: pip install 'ancra[umap]' (or use --embedding tsne)")
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise UserError("the t-SNE embedding needs scikit-learn: pip install 'ancra[analyze]'") from None
    return "tsne"


def embed_2d(features: np.ndarray, method: str, seed: int) -> np.ndarray:
    """2-D embedding of ``(N, D)`` features with UMAP or t-SNE (PCA init, perplexity <= 30)."""
    features = np.asarray(features, dtype=np.float32)
    n = features.shape[0]
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed).fit_transform(features)
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    # One OpenMP thread: torch's OpenMP workers keep spinning after the attacks, and scikit-learn's
    # own OpenMP runtime competing with them makes Barnes-Hut t-SNE ~100x slower on a small CPU.
    with threadpool_limits(limits=1, user_api="openmp"):
        return tsne.fit_transform(features)


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError("ancra analyze needs matplotlib: pip install 'ancra[analyze]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _colors(n: int) -> list:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


DISTANCE_AXES = {
    "cosine": ("cosine distance", "1 - cos(f(a), f(b))  (unitless, 0 = same direction)"),
    "l2": ("L2 distance", "||f(a) - f(b)||_2  (feature units)"),
}


def plot_distances(raw: dict[str, dict], path: Path, *, eps: float, steps: int, n: int) -> None:
    """Density histograms of positive (solid, filled) and negative (dashed) pair distances, one
    colour per checkpoint, a panel per distance. When the checkpoints' L2 scales differ more than
    20x (e.g. RA's masked features vs a plain network's) the L2 panel shows the density of
    log10(distance) on a log axis, so every checkpoint stays visible."""
    plt = _pyplot()
    labels = list(raw)
    colors = _colors(len(labels))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, name in zip(axes, DISTANCES):
        values = [np.concatenate([raw[k]["positive"][name], raw[k]["negative"][name]]) for k in labels]
        lo, hi = min(float(v.min()) for v in values), max(float(v.max()) for v in values)
        medians = [float(np.median(v)) for v in values]
        log = name == "l2" and lo > 0 and min(medians) > 0 and max(medians) / min(medians) > 20
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        if hi <= lo:
            hi = lo + 1e-6
        edges = np.linspace(lo, hi, 41)
        for label, color in zip(labels, colors):
            for kind, style, text in (("positive", "-", "positive (x, its adversarial)"),
                                      ("negative", "--", "negative (x, other-class adv. to y)")):
                v = raw[label][kind][name]
                dens, _ = np.histogram(np.log10(v) if log else v, bins=edges, density=True)
                x_edges = 10 ** edges if log else edges
                if kind == "positive":
                    ax.stairs(dens, x_edges, fill=True, alpha=0.18, color=color)
                ax.stairs(dens, x_edges, linestyle=style, linewidth=1.8, color=color, label=f"{label}: {text}")
        title, xlabel = DISTANCE_AXES[name]
        ax.set_title(f"{title} of penultimate features")
        if log:
            ax.set_xscale("log")
            ax.set_xlabel(xlabel + ", log scale")
            ax.set_ylabel("density per decade of distance")
        else:
            ax.set_xlabel(xlabel)
            ax.set_ylabel("density (1 / distance unit)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"Alignment (positive pairs: small) vs Exclusion (negative pairs: large) - "
                 f"L-inf PGD eps={eps:g}, {steps} steps, N={n} test examples", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_embedding(embeddings: dict[str, np.ndarray], labels: np.ndarray, path: Path, *, method: str,
                   num_classes: int, class_names: tuple[str, ...] | None, subtitles: dict[str, str]) -> None:
    """Scatter of each checkpoint's 2-D embedding coloured by true class, one panel each."""
    plt = _pyplot()
    k = len(embeddings)
    cols = min(k, 3)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols + 2.2, 5.2 * rows), squeeze=False)
    discrete = num_classes <= 20
    colors = _colors(num_classes) if discrete else None
    method_name = "UMAP" if method == "umap" else "t-SNE"
    scatter = None
    size = 24 if len(labels) <= 300 else 9
    for ax, (label, emb) in zip(axes.flat, embeddings.items()):
        if discrete:
            for c in range(num_classes):
                sel = labels == c
                ax.scatter(emb[sel, 0], emb[sel, 1], s=size, color=colors[c], alpha=0.8, linewidths=0,
                           label=class_name(c, class_names))
        else:
            scatter = ax.scatter(emb[:, 0], emb[:, 1], s=size, c=labels, cmap="viridis", alpha=0.8, linewidths=0)
        ax.set_title(f"{label}\n{subtitles.get(label, '')}", fontsize=10)
        ax.set_xlabel(f"{method_name} 1 (arbitrary units)")
        ax.set_ylabel(f"{method_name} 2 (arbitrary units)")
        ax.grid(alpha=0.2)
    for ax in list(axes.flat)[k:]:
        ax.axis("off")
    fig.suptitle(f"{method_name} of natural penultimate features ({len(labels)} test examples)", fontsize=12)
    right = 1 - 2.0 / (5.6 * cols + 2.2)  # room for the class legend / colour bar
    fig.tight_layout(rect=(0, 0, right, 1))
    if discrete:
        handles, names = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, names, title="true class", loc="center right", markerscale=2.0 if size > 9 else 2.5,
                   fontsize=9)
    elif scatter is not None:
        cax = fig.add_axes((right + 0.02, 0.15, 0.015, 0.7))
        fig.colorbar(scatter, cax=cax, label="true class index")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training_curves(runs: dict[str, list[dict]], path: Path) -> None:
    """Loss terms (left) and train/val accuracies (right) vs epoch of each run: line style =
    quantity, colour = run (= quantity too when there is a single run)."""
    plt = _pyplot()
    colors = _colors(len(runs))
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(13, 5.2))
    many = len(runs) > 1
    for (run, records), color in zip(runs.items(), colors):
        epochs = np.array([r["epoch"] for r in records], dtype=np.float64) + 1  # metrics count from 0
        for ax, curves, scale in ((ax_loss, LOSS_CURVES, 1.0), (ax_acc, ACC_CURVES, 100.0)):
            for j, (key, text, style) in enumerate(curves):
                vals = np.array([np.nan if r.get(key) is None else r[key] for r in records], np.float64) * scale
                if np.isnan(vals).all():
                    continue
                ax.plot(epochs, vals, linestyle=style, marker="o", markersize=3,
                        color=color if many else _colors(10)[j],
                        label=f"{run}: {text}" if many else text)
    ax_loss.set_title("training loss terms (mean over the epoch)")
    ax_loss.set_ylabel("loss (nats)")
    ax_acc.set_title("accuracy: training batches and validation split")
    ax_acc.set_ylabel("accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle("Training curves" + ("" if many else f" of {next(iter(runs))}"), fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_acc_vs_eps(reports: list[dict], path: Path) -> None:
    """Accuracy vs eps of every evaluation report, overlaid (one colour per report). Accuracies
    given as fractions are shown in %; eps in /255 when every report is on a CIFAR/Tiny-ImageNet."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    per255 = all((r["dataset"] or "").startswith(("cifar", "tiny")) for r in reports)
    colors = _colors(sum(len(r["curves"]) for r in reports))
    i = 0
    for rep in reports:
        for name, (eps, acc) in rep["curves"].items():
            acc_pct = acc * 100 if np.nanmax(acc) <= 1.0 else acc
            x = eps * 255 if per255 else eps
            label = rep["label"] if len(rep["curves"]) == 1 else f"{rep['label']}: {name}"
            ax.plot(x, acc_pct, marker="o", markersize=4, color=colors[i], label=label)
            i += 1
    for e in sorted({r["eps_value"] for r in reports if r.get("eps_value") is not None}):
        ax.axvline(e * 255 if per255 else e, color="grey", linestyle=":", linewidth=1.2,
                   label=f"evaluation eps = {e * 255:g}/255" if per255 else f"evaluation eps = {e:g}")
    ax.set_xlabel("L-inf eps (/255)" if per255 else "L-inf eps (pixel scale [0, 1])")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("Accuracy vs attack radius (healthy: monotone, reaches ~0)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``analyze`` on an ``add_subparsers()`` object; the handler is ``p.set_defaults(func=run)``."""
    p = subparsers.add_parser(
        "analyze", help="feature-space analysis of checkpoints (alignment / exclusion) and plots",
        description="Penultimate-feature distances of positive pairs (x, its PGD adversarial) and negative "
                    "pairs (x, an other-class example attacked towards x's class), per class, with an "
                    "embedding, training curves and accuracy-vs-eps plots. Writes DIR/analysis.json and PNGs.")
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="weights file (best.pt / last.pt of a run)")
    p.add_argument("--compare", type=Path, nargs="+", action="extend", default=[], metavar="CKPT",
                   help="more checkpoints to overlay (same dataset)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--n-examples", type=int, default=1000, metavar="N", help="first N test examples (default 1000)")
    p.add_argument("--eps", type=float, default=None, metavar="E",
                   help="L-inf radius (default: objective.eps of CHECKPOINT's config)")
    p.add_argument("--steps", type=int, default=10, metavar="S", help="PGD steps, step size eps/4 (default 10)")
    p.add_argument("--dataset", default=None, help="dataset name (default: data.dataset of CHECKPOINT's config)")
    p.add_argument("--data-dir", type=Path, default=None, metavar="D", help="folder with the dataset files")
    p.add_argument("--runs", type=Path, nargs="+", action="extend", default=None, metavar="RUN_DIR",
                   help="run directories with metrics.jsonl (default: each checkpoint's folder, when it has one)")
    p.add_argument("--reports", type=Path, nargs="+", action="extend", default=[], metavar="REPORT_JSON",
                   help="`ancra eval` report.json files for the accuracy-vs-eps plot")
    p.add_argument("--embedding", choices=EMBEDDINGS, default="auto",
                   help="auto: UMAP if umap-learn is installed, else t-SNE (default auto)")
    p.add_argument("--seed", type=int, default=0, help="negatives, attack starts and embedding (default 0)")
    p.add_argument("--batch-size", type=int, default=250, help="anchors per attack batch (default 250)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=run)
    return p


def _validate(args) -> None:
    if args.n_examples < 10:
        raise UserError(f"--n-examples must be >= 10, got {args.n_examples}")
    if args.eps is not None and not 0 < args.eps <= 1:
        raise UserError(f"--eps must be in (0, 1], got {args.eps}")
    if args.steps < 0:
        raise UserError(f"--steps must be >= 0, got {args.steps}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    for path in [args.checkpoint, *args.compare]:
        if not Path(path).is_file():
            raise UserError(f"checkpoint {path} does not exist")
    for path in args.reports:
        if not Path(path).is_file():
            raise UserError(f"report {path} does not exist")
    for path in args.runs or []:
        if not Path(path).is_dir():
            raise UserError(f"run directory {path} does not exist")


def _finite(obj):
    """``obj`` with every NaN/inf float replaced by ``None`` (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _unique_labels(paths: list[Path]) -> list[str]:
    labels, seen = [], {}
    for p in paths:
        label = checkpoint_label(p)
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return labels


def run(args) -> int:
    """``ancra analyze``: see the module docstring. Returns 0; raises ``UserError`` on bad input."""
    from .checkpoint import load_model
    from .data import load_dataset

    t0 = time.perf_counter()
    _validate(args)
    embedding_method = resolve_embedding(args.embedding)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    notes: list[str] = []

    paths = [Path(args.checkpoint), *map(Path, args.compare)]
    labels = _unique_labels(paths)
    models = {}
    for label, path in zip(labels, paths):
        _log(f"loading {path}")
        models[label] = load_model(path, map_location="cpu")

    main_cfg = _config_of(models[labels[0]])
    eps = args.eps
    if eps is None:
        eps = _section(main_cfg, "objective").get("eps")
        if eps is None:
            raise UserError(f"{paths[0]} has no objective.eps in its config: pass --eps")
        eps = float(eps)
    dataset = args.dataset or _section(main_cfg, "data").get("dataset")
    if not dataset:
        raise UserError(f"{paths[0]} has no data.dataset in its config: pass --dataset")
    dataset = str(dataset).lower()
    for label, path in zip(labels, paths):
        cfg = _config_of(models[label])
        other_ds = _section(cfg, "data").get("dataset")
        if other_ds and str(other_ds).lower() != dataset:
            raise UserError(f"{path} was trained on {other_ds}, not {dataset}: compare checkpoints of one dataset")
        other_eps = _section(cfg, "objective").get("eps")
        if other_eps is not None and not math.isclose(float(other_eps), eps, rel_tol=1e-6):
            notes.append(f"{label} was trained with eps {float(other_eps):g}; every checkpoint is analysed at eps {eps:g}")

    data_dir = args.data_dir
    if data_dir is None and _section(main_cfg, "data").get("data_dir"):
        data_dir = Path(_section(main_cfg, "data")["data_dir"])
    _log(f"loading {dataset} test set")
    splits = load_dataset(dataset, data_dir)
    n_test = int(splits.test_x.shape[0])
    n = args.n_examples
    if n > n_test:
        notes.append(f"--n-examples {n} exceeds the {n_test} test examples: using all of them")
        _log(notes[-1])
        n = n_test
    x = splits.test_x[:n].float().div_(255.0)
    y = splits.test_y[:n].long()
    num_classes = int(splits.num_classes)
    class_names = CLASS_NAMES.get(dataset)
    for label, path in zip(labels, paths):
        spec = getattr(models[label], "spec", {})
        if spec.get("num_classes", num_classes) != num_classes or spec.get("in_channels", x.shape[1]) != x.shape[1]:
            raise UserError(f"{path}: model has {spec.get('num_classes')} classes and {spec.get('in_channels')} input "
                            f"channels, {dataset} has {num_classes} and {x.shape[1]}")
        if not hasattr(models[label], "forward_with_aux"):
            raise UserError(f"{path}: the model has no forward_with_aux (not an ancra model)")

    neg_idx = sample_other_class(y, torch.Generator().manual_seed(args.seed))

    results: dict[str, dict] = {}
    raw: dict[str, dict] = {}
    natural_features: dict[str, np.ndarray] = {}
    for label, path in zip(labels, paths):
        model = models[label].to(device)
        start = time.perf_counter()
        _log(f"{label}: PGD eps={eps:g} step={eps / 4:g} steps={args.steps} on {n} anchors + {n} negatives")
        pf = extract_pair_features(model, x, y, neg_idx, eps=eps, steps=args.steps, batch_size=args.batch_size,
                                   seed=args.seed, device=device, desc=f"[analyze] {label}")
        summary, raw[label] = summarize_pairs(pf, y, neg_idx, num_classes, class_names)
        acc = summary["accuracy"]
        _log(f"{label}: natural acc {acc['natural']:.3f}, adversarial acc {acc['adversarial']:.3f}, "
             f"cosine AUC {summary['separation']['cosine']['auc']:.3f} ({time.perf_counter() - start:.1f}s)")
        results[label] = {"path": str(path), "model": dict(getattr(model, "spec", {})),
                          "epoch": (getattr(model, "checkpoint_meta", {}) or {}).get("epoch"), **summary}
        natural_features[label] = pf.natural.numpy()
        models[label] = model.cpu()

    plots: dict[str, str | None] = dict.fromkeys(PLOTS)
    _log("plotting distances.png")
    plot_distances(raw, out / "distances.png", eps=eps, steps=args.steps, n=n)
    plots["distances"] = "distances.png"

    embeddings = {}
    for label, feats in natural_features.items():
        _log(f"{label}: {embedding_method} embedding of {n} natural features")
        embeddings[label] = embed_2d(feats, embedding_method, args.seed)
    subtitles = {k: f"natural acc {100 * v['accuracy']['natural']:.1f}%, PGD acc {100 * v['accuracy']['adversarial']:.1f}%"
                 for k, v in results.items()}
    plot_embedding(embeddings, y.numpy(), out / "embedding.png", method=embedding_method,
                   num_classes=num_classes, class_names=class_names, subtitles=subtitles)
    plots["embedding"] = "embedding.png"

    if args.runs is None:
        run_dirs = []
        for p in paths:
            d = p.resolve().parent
            if (d / "metrics.jsonl").is_file() and d not in run_dirs:
                run_dirs.append(d)
    else:
        run_dirs = [Path(r) for r in args.runs]
    runs = {}
    for d in run_dirs:
        name = d.resolve().name or str(d)
        runs[name if name not in runs else f"{name} ({d})"] = read_metrics(d)
    if runs:
        _log("plotting training_curves.png")
        plot_training_curves(runs, out / "training_curves.png")
        plots["training_curves"] = "training_curves.png"
    else:
        notes.append("training_curves.png skipped: no --runs given and no checkpoint folder holds metrics.jsonl")

    reports = [read_acc_vs_eps(r) for r in args.reports]
    if reports:
        _log("plotting acc_vs_eps.png")
        plot_acc_vs_eps(reports, out / "acc_vs_eps.png")
        plots["acc_vs_eps"] = "acc_vs_eps.png"
    else:
        notes.append("acc_vs_eps.png skipped: no --reports given")

    analysis = {
        "settings": {
            "dataset": dataset, "n_examples": n, "eps": eps, "step_size": eps / 4, "steps": args.steps,
            "attack": "L-inf PGD, CE on final logits, uniform start; targeted to the anchor's class for negatives",
            "features": "forward_with_aux(x).features in eval mode, predicted-label RA (the inference path)",
            "seed": args.seed, "embedding": embedding_method, "device": str(device),
            "class_names": [class_name(c, class_names) for c in range(num_classes)],
        },
        "checkpoints": results,
        "runs": {name: str(d) for name, d in zip(runs, run_dirs)},
        "reports": [r["path"] for r in reports],
        "plots": plots,
        "notes": notes,
    }
    (out / "analysis.json").write_text(json.dumps(_finite(analysis), indent=2, allow_nan=False) + "\n")
    _log(f"wrote {out / 'analysis.json'} and {sum(v is not None for v in plots.values())} PNGs "
         f"in {time.perf_counter() - t0:.1f}s")
    for note in notes:
        _log(f"note: {note}")
    return 0
