"""Figures shared by ``ancra eval`` and ``ancra analyze``: the matplotlib entry point and the one
accuracy-vs-eps plot (a single report's curves, or several reports overlaid).

Imports nothing heavy at import time (matplotlib is loaded on first use), so
:mod:`ancra.evaluation` can use it without pulling in the analysis dependencies."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import UserError


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (``UserError`` if matplotlib is not installed)."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("plots need matplotlib: pip install 'ancra[eval]' or 'ancra[analyze]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def colors(n: int) -> list:
    """``n`` distinct colours (tab10, tab20 beyond 10; cycled beyond 20)."""
    cmap = pyplot().get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def plot_acc_vs_eps(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: Path,
    *,
    eps_in_255: bool,
    eval_eps: Iterable[float] = (),
    worst_case: tuple[float, float] | None = None,
    subtitle: str | None = None,
) -> Path:
    """``acc_vs_eps.png``: robust accuracy (%) vs L-inf eps, one line per curve.

    ``curves`` maps a legend label to ``(eps, acc)``, eps on the pixel scale [0, 1] and accuracies
    as fractions. ``eval_eps`` draws each evaluation radius as a dotted vertical line,
    ``worst_case = (eps, acc)`` the worst case over all attacks as a red point; eps are shown in
    /255 when ``eps_in_255`` (CIFAR-like datasets)."""
    plt = pyplot()
    scale = 255.0 if eps_in_255 else 1.0
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    for (label, (eps, acc)), color in zip(curves.items(), colors(len(curves))):
        ax.plot(
            np.asarray(eps, np.float64) * scale,
            np.asarray(acc, np.float64) * 100,
            marker="o",
            markersize=4,
            color=color,
            label=label,
        )
    for e in sorted(set(eval_eps)):
        ax.axvline(
            e * scale,
            color="grey",
            linestyle=":",
            linewidth=1.2,
            label=f"evaluation eps = {e * 255:g}/255" if eps_in_255 else f"evaluation eps = {e:g}",
        )
    if worst_case is not None:
        ax.scatter(
            [worst_case[0] * scale], [100 * worst_case[1]], color="red", zorder=5, label="worst case (all attacks)"
        )
    ax.set_xlabel("L-inf eps (/255)" if eps_in_255 else "L-inf eps (pixel scale [0, 1])")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(
        "Accuracy vs perturbation budget (healthy: monotone, reaches ~0)" + (f"\n{subtitle}" if subtitle else "")
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
