"""Readers of what ``ancra analyze`` is given besides the test set: the checkpoints' names and
configs, run directories (``metrics.jsonl``) and ``ancra eval`` reports (``report.json``)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import UserError

#: what :func:`read_acc_vs_eps` reads, for its error messages
REPORT_FORMAT = (
    "the report.json of `ancra eval` (with its accuracy-vs-eps sanity check), "
    "holding sanity.acc_vs_eps = {attack: {eps: accuracy}}"
)


def checkpoint_label(path: Path) -> str:
    """``<parent folder>/<file>`` (e.g. ``fmnist-demo/best.pt``), the key in ``analysis.json``."""
    parent = path.resolve().parent.name
    return f"{parent}/{path.name}" if parent else path.name


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


def _curve_points(curve) -> tuple[np.ndarray, np.ndarray] | None:
    """``(eps, acc)`` arrays, sorted by eps, of one ``{eps: accuracy}`` curve; ``None`` if it is not
    one. ``ancra eval`` writes the eps keys with ``%g`` (``"0.05"``); a fraction (``"8/255"``) is
    read too. Accuracies are fractions in [0, 1]."""
    if not isinstance(curve, dict) or not curve:
        return None
    try:
        eps = [float(Fraction(str(e).strip())) for e in curve]
    except (ValueError, ZeroDivisionError):
        return None
    acc = list(curve.values())
    if not all(isinstance(a, (int, float)) and not isinstance(a, bool) and 0 <= a <= 1 for a in acc):
        return None
    eps_a, acc_a = np.asarray(eps, np.float64), np.asarray(acc, np.float64)
    order = np.argsort(eps_a, kind="stable")
    return eps_a[order], acc_a[order]


def read_acc_vs_eps(path: Path) -> dict:
    """The accuracy-vs-eps curves of an ``ancra eval`` ``report.json``.

    Reads ``report["sanity"]["acc_vs_eps"] = {attack: {eps: accuracy}}``
    (:func:`ancra.evaluation.sanity.sanity_flags`) and the report's ``dataset`` and ``eps_value``.
    Returns ``{"label", "path", "dataset", "eps_value", "curves": {attack: (eps, acc)}}``;
    ``UserError`` if the file is missing, not JSON, or not such a report."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"report {path} does not exist")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"report {path} is not valid JSON ({getattr(e, 'msg', e)})") from None
    report = report if isinstance(report, dict) else {}
    sanity = report.get("sanity")
    value = sanity.get("acc_vs_eps") if isinstance(sanity, dict) else None
    if not value:
        raise UserError(f"report {path} has no 'acc_vs_eps' curve under 'sanity': expected {REPORT_FORMAT}")
    if not isinstance(value, dict):
        raise UserError(f"report {path}: sanity.acc_vs_eps holds no readable curve: expected {REPORT_FORMAT}")
    curves = {}
    for name, curve in value.items():
        points = _curve_points(curve)
        if points is None:
            raise UserError(
                f"report {path}: sanity.acc_vs_eps[{name!r}] is no readable curve: expected "
                "{eps: accuracy in [0, 1]}, as `ancra eval` writes it"
            )
        curves[str(name)] = points
    dataset, eps_value = report.get("dataset"), report.get("eps_value")
    parent = path.resolve().parent.name
    return {
        "label": f"{parent}/{path.name}" if parent else path.name,
        "path": str(path),
        "dataset": str(dataset).lower() if dataset else None,
        "eps_value": float(eps_value) if isinstance(eps_value, (int, float)) else None,
        "curves": curves,
    }
