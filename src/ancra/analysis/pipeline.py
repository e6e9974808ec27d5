"""What ``ancra analyze`` runs: :func:`analyze`, the analysis end to end (load, measure, plot,
write ``analysis.json``), as a sequence of named steps."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import Checkpoint, load_checkpoint
from ..data.registry import dataset_info
from ..distributed import resolve_device
from ..errors import UserError
from .features import embed_2d, extract_pair_features, resolve_embedding, sample_other_class
from .inputs import checkpoint_label, read_acc_vs_eps, read_metrics
from .metrics import class_name, summarize_pairs
from .plots import PLOTS, plot_distances, plot_embedding, plot_reports_acc_vs_eps, plot_training_curves


def _log(msg: str) -> None:
    print(f"[analyze] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The steps of an analysis
# --------------------------------------------------------------------------------------------


def _validate(
    paths: list[Path],
    *,
    reports: Sequence[Path],
    runs: Sequence[Path] | None,
    n_examples: int,
    eps: float | None,
    steps: int,
    batch_size: int,
    seed: int,
) -> None:
    if n_examples < 10:
        raise UserError(f"--n-examples must be >= 10, got {n_examples}")
    if eps is not None and not 0 < eps <= 1:
        raise UserError(f"--eps must be in (0, 1], got {eps}")
    if steps < 0:
        raise UserError(f"--steps must be >= 0, got {steps}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    for path in paths:
        if not path.is_file():
            raise UserError(f"checkpoint {path} does not exist")
    for path in reports:
        if not Path(path).is_file():
            raise UserError(f"report {path} does not exist")
    for path in runs or []:
        if not Path(path).is_dir():
            raise UserError(f"run directory {path} does not exist")


def _unique_labels(paths: list[Path]) -> list[str]:
    labels, seen = [], {}
    for p in paths:
        label = checkpoint_label(p)
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return labels


def _load_checkpoints(paths: list[Path]) -> dict[str, Checkpoint]:
    """``{label: checkpoint}`` (models on the CPU), keyed by :func:`_unique_labels`."""
    checkpoints = {}
    for label, path in zip(_unique_labels(paths), paths):
        _log(f"loading {path}")
        checkpoints[label] = load_checkpoint(path, map_location="cpu")
    return checkpoints


def _eps_and_dataset(
    checkpoints: dict[str, Checkpoint], eps: float | None, dataset: str | None, notes: list[str]
) -> tuple[float, str]:
    """The radius and dataset of the analysis (given, or what the first checkpoint records, read
    as ``ancra eval`` reads them); every checkpoint must be of that dataset, a different training
    eps is noted."""
    main = next(iter(checkpoints.values()))
    eps = main.eps(eps)
    dataset = main.dataset(dataset)
    for label, ckpt in checkpoints.items():
        other_ds = ckpt.recorded("data", "dataset")
        if other_ds and other_ds != dataset:
            raise UserError(f"{ckpt.path} was trained on {other_ds}, not {dataset}: compare checkpoints of one dataset")
        other_eps = ckpt.recorded("objective", "eps")
        if other_eps is not None and not math.isclose(other_eps, eps, rel_tol=1e-6):
            notes.append(f"{label} was trained with eps {other_eps:g}; every checkpoint is analysed at eps {eps:g}")
    return eps, dataset


def _load_examples(
    dataset: str, data_dir: Path | None, n: int, notes: list[str]
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The first ``n`` test examples (float [0, 1]) and labels, and the number of classes."""
    from ..data import load_dataset

    _log(f"loading {dataset} test set")
    splits = load_dataset(dataset, data_dir)
    n_test = int(splits.test_x.shape[0])
    if n > n_test:
        notes.append(f"--n-examples {n} exceeds the {n_test} test examples: using all of them")
        _log(notes[-1])
        n = n_test
    return splits.test_x[:n].float().div_(255.0), splits.test_y[:n].long(), int(splits.num_classes)


def _check_models_fit(
    models: dict[str, nn.Module], paths: list[Path], dataset: str, num_classes: int, channels: int
) -> None:
    for model, path in zip(models.values(), paths):
        spec = getattr(model, "spec", {})
        if spec.get("num_classes", num_classes) != num_classes or spec.get("in_channels", channels) != channels:
            raise UserError(
                f"{path}: model has {spec.get('num_classes')} classes and {spec.get('in_channels')} input "
                f"channels, {dataset} has {num_classes} and {channels}"
            )
        if not hasattr(model, "forward_with_aux"):
            raise UserError(f"{path}: the model has no forward_with_aux (not an ancra model)")


def _measure(
    models: dict[str, nn.Module],
    paths: list[Path],
    x: torch.Tensor,
    y: torch.Tensor,
    neg_idx: torch.Tensor,
    *,
    eps: float,
    steps: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    num_classes: int,
    class_names: tuple[str, ...] | None,
) -> tuple[dict, dict, dict[str, np.ndarray]]:
    """Attack, embed and summarise each checkpoint: its ``analysis.json`` entry, its raw
    distances and its natural features, each keyed by label."""
    results, raw, natural_features = {}, {}, {}
    n = x.shape[0]
    for (label, model), path in zip(models.items(), paths):
        model = model.to(device)
        start = time.perf_counter()
        _log(f"{label}: PGD eps={eps:g} step={eps / 4:g} steps={steps} on {n} anchors + {n} negatives")
        pf = extract_pair_features(
            model,
            x,
            y,
            neg_idx,
            eps=eps,
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            device=device,
            desc=f"[analyze] {label}",
        )
        summary, raw[label] = summarize_pairs(pf, y, neg_idx, num_classes, class_names)
        acc = summary["accuracy"]
        _log(
            f"{label}: natural acc {acc['natural']:.3f}, adversarial acc {acc['adversarial']:.3f}, "
            f"cosine AUC {summary['separation']['cosine']['auc']:.3f} ({time.perf_counter() - start:.1f}s)"
        )
        results[label] = {
            "path": str(path),
            "model": dict(getattr(model, "spec", {})),
            "epoch": (getattr(model, "checkpoint_meta", {}) or {}).get("epoch"),
            **summary,
        }
        natural_features[label] = pf.natural.numpy()
        models[label] = model.cpu()
    return results, raw, natural_features


def _plot_embedding(
    natural_features: dict[str, np.ndarray],
    results: dict,
    y: torch.Tensor,
    path: Path,
    *,
    method: str,
    seed: int,
    num_classes: int,
    class_names: tuple[str, ...] | None,
) -> None:
    embeddings = {}
    for label, feats in natural_features.items():
        _log(f"{label}: {method} embedding of {len(feats)} natural features")
        embeddings[label] = embed_2d(feats, method, seed)
    subtitles = {
        k: f"natural acc {100 * v['accuracy']['natural']:.1f}%, PGD acc {100 * v['accuracy']['adversarial']:.1f}%"
        for k, v in results.items()
    }
    plot_embedding(
        embeddings,
        y.numpy(),
        path,
        method=method,
        num_classes=num_classes,
        class_names=class_names,
        subtitles=subtitles,
    )


def _run_dirs(paths: list[Path], runs: Sequence[Path] | None) -> list[Path]:
    """The given run directories, else each checkpoint's folder that holds a ``metrics.jsonl``."""
    if runs is not None:
        return [Path(r) for r in runs]
    found: list[Path] = []
    for p in paths:
        d = p.resolve().parent
        if (d / "metrics.jsonl").is_file() and d not in found:
            found.append(d)
    return found


def _read_runs(run_dirs: list[Path]) -> dict[str, list[dict]]:
    runs = {}
    for d in run_dirs:
        name = d.resolve().name or str(d)
        runs[name if name not in runs else f"{name} ({d})"] = read_metrics(d)
    return runs


def _finite(obj):
    """``obj`` with every NaN/inf float replaced by ``None`` (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------
# The analysis
# --------------------------------------------------------------------------------------------


def analyze(
    checkpoint: Path,
    *,
    out_dir: Path,
    compare: Sequence[Path] = (),
    reports: Sequence[Path] = (),
    runs: Sequence[Path] | None = None,
    n_examples: int = 1000,
    eps: float | None = None,
    steps: int = 10,
    dataset: str | None = None,
    data_dir: Path | None = None,
    embedding: str = "auto",
    seed: int = 0,
    batch_size: int = 250,
    device: str | torch.device | None = None,
) -> dict:
    """Analyse ``checkpoint`` (and the ``compare`` checkpoints) on the first ``n_examples`` test
    examples; write ``analysis.json`` and the PNGs to ``out_dir`` and return ``analysis.json``'s
    content. ``eps``, ``dataset`` and ``data_dir`` default to ``checkpoint``'s config; ``runs``
    (default: the checkpoints' folders holding ``metrics.jsonl``) feed the training curves,
    ``reports`` (``ancra eval`` report.json files) the accuracy-vs-eps plot. The package
    docstring says what is measured. ``UserError`` on bad input."""
    t0 = time.perf_counter()
    paths = [Path(checkpoint), *map(Path, compare)]
    _validate(
        paths, reports=reports, runs=runs, n_examples=n_examples, eps=eps, steps=steps, batch_size=batch_size, seed=seed
    )
    embedding_method = resolve_embedding(embedding)
    out = Path(out_dir)
    device = torch.device(device or resolve_device("auto"))
    notes: list[str] = []

    checkpoints = _load_checkpoints(paths)
    models = {label: ckpt.model for label, ckpt in checkpoints.items()}
    eps, dataset = _eps_and_dataset(checkpoints, eps, dataset, notes)
    data_dir = next(iter(checkpoints.values())).data_dir(data_dir)
    class_names = dataset_info(dataset).class_names
    x, y, num_classes = _load_examples(dataset, data_dir, n_examples, notes)
    n = x.shape[0]
    _check_models_fit(models, paths, dataset, num_classes, x.shape[1])

    neg_idx = sample_other_class(y, torch.Generator().manual_seed(seed))
    results, raw, natural_features = _measure(
        models,
        paths,
        x,
        y,
        neg_idx,
        eps=eps,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        device=device,
        num_classes=num_classes,
        class_names=class_names,
    )

    out.mkdir(parents=True, exist_ok=True)  # only once the inputs proved usable
    plots: dict[str, str | None] = dict.fromkeys(PLOTS)
    _log("plotting distances.png")
    plot_distances(raw, out / "distances.png", eps=eps, steps=steps, n=n)
    plots["distances"] = "distances.png"
    _plot_embedding(
        natural_features,
        results,
        y,
        out / "embedding.png",
        method=embedding_method,
        seed=seed,
        num_classes=num_classes,
        class_names=class_names,
    )
    plots["embedding"] = "embedding.png"
    run_dirs = _run_dirs(paths, runs)
    run_records = _read_runs(run_dirs)
    if run_records:
        _log("plotting training_curves.png")
        plot_training_curves(run_records, out / "training_curves.png")
        plots["training_curves"] = "training_curves.png"
    else:
        notes.append("training_curves.png skipped: no --runs given and no checkpoint folder holds metrics.jsonl")
    curves = [read_acc_vs_eps(r) for r in reports]
    if curves:
        _log("plotting acc_vs_eps.png")
        plot_reports_acc_vs_eps(curves, out / "acc_vs_eps.png")
        plots["acc_vs_eps"] = "acc_vs_eps.png"
    else:
        notes.append("acc_vs_eps.png skipped: no --reports given")

    analysis = _finite(
        {
            "settings": {
                "dataset": dataset,
                "n_examples": n,
                "eps": eps,
                "step_size": eps / 4,
                "steps": steps,
                "attack": "L-inf PGD, CE on final logits, uniform start; targeted to the anchor's class for negatives",
                "features": "forward_with_aux(x).features in eval mode, predicted-label RA (the inference path)",
                "seed": seed,
                "embedding": embedding_method,
                "device": str(device),
                "class_names": [class_name(c, class_names) for c in range(num_classes)],
            },
            "checkpoints": results,
            "runs": {name: str(d) for name, d in zip(run_records, run_dirs)},
            "reports": [r["path"] for r in curves],
            "plots": plots,
            "notes": notes,
        }
    )
    (out / "analysis.json").write_text(json.dumps(analysis, indent=2, allow_nan=False) + "\n")
    _log(
        f"wrote {out / 'analysis.json'} and {sum(v is not None for v in plots.values())} PNGs "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    for note in notes:
        _log(f"note: {note}")
    return analysis
