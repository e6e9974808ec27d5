"""Every figure of ``ancra analyze``: pair distances, embeddings, training curves and the
accuracy-vs-eps curves of evaluation reports (drawn by the shared :func:`ancra.plots.plot_acc_vs_eps`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..data.registry import find_dataset
from ..plots import colors as _colors
from ..plots import plot_acc_vs_eps
from ..plots import pyplot as _pyplot
from .metrics import DISTANCES, class_name

#: the figures, in the order of ``analysis.json``'s ``plots``
PLOTS = ("distances", "embedding", "training_curves", "acc_vs_eps")
#: metrics.jsonl keys plotted by ``training_curves.png``: (key, legend text, line style)
LOSS_CURVES = (("loss", "total loss", "-"), ("base_loss", "base AT loss", "--"), ("anc_loss", "ANC loss", ":"))
ACC_CURVES = (
    ("nat_acc", "train natural", "-"),
    ("adv_acc", "train adversarial", "--"),
    ("val_clean_acc", "val clean", "-."),
    ("val_pgd_acc", "val PGD", ":"),
    ("val_robust_acc", "val robust (PGD + heads)", (0, (5, 1, 1, 1, 1, 1))),
)

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
            for kind, style, text in (
                ("positive", "-", "positive (x, its adversarial)"),
                ("negative", "--", "negative (x, other-class adv. to y)"),
            ):
                v = raw[label][kind][name]
                dens, _ = np.histogram(np.log10(v) if log else v, bins=edges, density=True)
                x_edges = 10**edges if log else edges
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
    fig.suptitle(
        f"Alignment (positive pairs: small) vs Exclusion (negative pairs: large) - "
        f"L-inf PGD eps={eps:g}, {steps} steps, N={n} test examples",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_embedding(
    embeddings: dict[str, np.ndarray],
    labels: np.ndarray,
    path: Path,
    *,
    method: str,
    num_classes: int,
    class_names: tuple[str, ...] | None,
    subtitles: dict[str, str],
) -> None:
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
                ax.scatter(
                    emb[sel, 0],
                    emb[sel, 1],
                    s=size,
                    color=colors[c],
                    alpha=0.8,
                    linewidths=0,
                    label=class_name(c, class_names),
                )
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
        fig.legend(
            handles, names, title="true class", loc="center right", markerscale=2.0 if size > 9 else 2.5, fontsize=9
        )
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
                ax.plot(
                    epochs,
                    vals,
                    linestyle=style,
                    marker="o",
                    markersize=3,
                    color=color if many else _colors(10)[j],
                    label=f"{run}: {text}" if many else text,
                )
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


def plot_reports_acc_vs_eps(reports: list[dict], path: Path) -> None:
    """Accuracy vs eps of every evaluation report (:func:`~ancra.analysis.inputs.read_acc_vs_eps`),
    overlaid, one colour per curve, with each report's evaluation eps; eps in /255 when every
    report's dataset shows eps in /255 (:mod:`ancra.data.registry`; an unknown name does not)."""
    per255 = all(getattr(find_dataset(r["dataset"]), "eps_in_255", False) for r in reports)
    curves = {}
    for rep in reports:
        for name, pts in rep["curves"].items():
            label = rep["label"] if len(rep["curves"]) == 1 else f"{rep['label']}: {name}"
            while label in curves:  # two reports with the same folder/file name
                label += "'"
            curves[label] = pts
    plot_acc_vs_eps(
        curves, path, eps_in_255=per255, eval_eps=[r["eps_value"] for r in reports if r.get("eps_value") is not None]
    )
