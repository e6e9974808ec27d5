"""Print the Markdown tables of the Fashion-MNIST study v2 (docs/RESULTS.md) from its reports.

    .venv/bin/python results/fmnist-v2/table.py             # every table
    .venv/bin/python results/fmnist-v2/table.py --plot F    # also the validation curves as a PNG

Reads results/fmnist-v2/: the training logs NAME-sS.metrics.jsonl and the merged reports of
eval.sh: eval-quick/NAME-sS (every seed, quick budgets), eval-full/NAME-s0 (seed 0, full budgets,
standalone families) and eval-eps0.2/NAME-s0, beside the first study's 2-epoch models at eps 0.2
(results/fmnist/eval-eps0.2/NAME); and the convergence control's eE/eval-quick
(train.sh EPOCHS=E), compared with the 10-epoch runs of the same seed. `--root results/fmnist-v2/eE`
prints the control's own tables. Tables that have no reports yet are left out.

Intervals. A gain "A - B" is the mean over A's seeds minus the mean over B's seeds of the accuracy
on the same test images. Its 95% interval is a hierarchical bootstrap (docs/RESULTS.md, "How the
intervals are computed"): each of 4000 replicates draws the test images with replacement (the same
draw for both models, so the comparison stays paired) and, independently for A and B, the seeds
with replacement; the interval is the 2.5 and 97.5 percentiles of the replicated gains. It holds
both the seed-to-seed spread of training and the sampling of test images; with 3 seeds a seed
draw has few distinct values, so the per-seed gains are printed beside it.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from ancra.evaluation.common import worst_case
from ancra.evaluation.report import load_per_example

HERE = Path(__file__).resolve().parent
METHODS = [
    "pgd-at",
    "ancra-pgd",
    "trades-kl",
    "trades-ce",
    "ancra-trades",
    "trades-ra-only",
    "trades-anc-only",
]
RA = {"ancra-pgd", "ancra-trades", "trades-ra-only"}
# The matched comparisons first: each method against the baseline trained with the same attack and
# rule; then what each part adds to the other, and what the TRADES attack itself changes.
GAINS = [
    ("ancra-pgd", "pgd-at"),
    ("ancra-trades", "trades-ce"),
    ("trades-ra-only", "trades-ce"),
    ("trades-anc-only", "trades-ce"),
    ("ancra-trades", "trades-ra-only"),
    ("ancra-trades", "trades-anc-only"),
    ("trades-ce", "trades-kl"),
]
REPLICATES = 4000


def pct(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{100 * v:.1f}"


def method_and_seed(name: str) -> tuple[str, int] | None:
    """``"ancra-pgd-s1"`` -> ``("ancra-pgd", 1)``: the study's file and folder names; None for a
    name that is not a run of a study method."""
    method, _, seed = name.rpartition("-s")
    return (method, int(seed)) if method in METHODS and seed.isdigit() else None


def load_training_logs(root: Path) -> dict[str, dict[int, list[dict]]]:
    """``{method: {seed: epoch records}}`` of the training logs ``METHOD-sS.metrics.jsonl`` in
    ``root``, methods in METHODS order and seeds ascending."""
    logs: dict[str, dict[int, list[dict]]] = {}
    for f in root.glob("*-s*.metrics.jsonl"):
        run = method_and_seed(f.name.removesuffix(".metrics.jsonl"))
        if run:
            logs.setdefault(run[0], {})[run[1]] = [json.loads(line) for line in f.read_text().splitlines()]
    return {m: dict(sorted(logs[m].items())) for m in METHODS if m in logs}


def load_runs(folder: Path) -> dict[str, dict[int, dict]]:
    """``{method: {seed: run}}`` of the merged reports in ``folder`` (``METHOD-sS`` subfolders);
    a run holds its report and its per-example ``clean``, ``autoattack`` and ``worst`` vectors."""
    runs: dict[str, dict[int, dict]] = {}
    for report_file in sorted(folder.glob("*-s*/report.json")):
        run = method_and_seed(report_file.parent.name)
        if not run:
            continue
        pe = load_per_example(report_file.parent)
        t = pe["tensors"]
        runs.setdefault(run[0], {})[run[1]] = {
            "report": json.loads(report_file.read_text()),
            "attacks": pe["attacks"],
            "tensors": t,
            "clean": t["clean"],
            "autoattack": t["robust/autoattack"],
            "worst": worst_case(t, pe["attacks"]),
        }
    return runs


def common_size(*groups: dict[int, dict]) -> int:
    """The number of test images every run of the groups evaluated (all evaluate the first N)."""
    return min(len(run["clean"]) for group in groups for run in group.values())


def stack(group: dict[int, dict], which: str, n: int) -> torch.Tensor:
    """``(seeds, n)`` float matrix of one per-example vector over the seeds of a method."""
    return torch.stack([group[s][which][:n].float() for s in sorted(group)])


def bootstrap_gain(a: torch.Tensor, b: torch.Tensor, replicates: int = REPLICATES, seed: int = 0):
    """Point gain and 95% interval of ``mean_seeds(a) - mean_seeds(b)`` (``(seeds, n)`` matrices on
    the same n test images) under the hierarchical bootstrap of the module docstring."""
    g = torch.Generator().manual_seed(seed)
    n = a.shape[1]
    images = torch.randint(n, (replicates, n), generator=g)
    seeds_a = torch.randint(a.shape[0], (replicates, a.shape[0]), generator=g)
    seeds_b = torch.randint(b.shape[0], (replicates, b.shape[0]), generator=g)
    acc_a = torch.stack([row[images].mean(1) for row in a])  # (seeds, replicates)
    acc_b = torch.stack([row[images].mean(1) for row in b])
    rep = acc_a.gather(0, seeds_a.T).mean(0) - acc_b.gather(0, seeds_b.T).mean(0)
    point = (a.mean() - b.mean()).item()
    lo, hi = torch.quantile(rep.double(), torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return point, lo, hi


def spread(values: list[float]) -> str:
    """Mean ± sample standard deviation over seeds, in percent."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return pct(m)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return f"{100 * m:.1f} ± {100 * sd:.1f}"


def by_method(runs: dict) -> list[tuple[str, dict]]:
    """``(method, {seed: run})`` of the methods ``runs`` has, in METHODS order."""
    return [(m, runs[m]) for m in METHODS if runs.get(m)]


def results_table(runs: dict, title: str) -> None:
    """One row per method: seeds, images, clean / AutoAttack / worst case and AutoAttack minus the
    worst case (what the adaptive attacks find beyond AutoAttack), each the mean ± SD over seeds."""
    if not runs:
        return
    print(f"{title}\n")
    print("| model | seeds | images | clean | AutoAttack | adaptive worst case | AutoAttack - worst case |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for method, group in by_method(runs):
        n = common_size(group)
        acc = {
            k: [group[s][k][:n].float().mean().item() for s in sorted(group)] for k in ("clean", "autoattack", "worst")
        }
        gap = spread([a - w for a, w in zip(acc["autoattack"], acc["worst"])])
        cells = f"{spread(acc['clean'])} | {spread(acc['autoattack'])} | **{spread(acc['worst'])}** | {gap}"
        print(f"| {method} | {len(group)} | {n} | {cells} |")
    print()


def flags_table(runs: dict, title: str) -> None:
    """Per method, the sanity flags its reports raised (docs/EVALUATION.md) and in how many seeds."""
    if not runs:
        return
    print(f"{title}\n")
    print("| model | flags (seeds that raised each, of all seeds) |")
    print("|---|---|")
    for method, group in by_method(runs):
        counts: dict[str, int] = {}
        for run in group.values():
            for flag in {f.split(":")[0] for f in run["report"]["flags"]}:
                counts[flag] = counts.get(flag, 0) + 1
        cells = ", ".join(f"`{f}` {k}/{len(group)}" for f, k in sorted(counts.items())) or "none"
        print(f"| {method} | {cells} |")
    print()


def gains_table(runs: dict, title: str) -> None:
    """Each gain of GAINS under AutoAttack and under the worst case, with its bootstrap interval
    and the per-seed gains (seed s of A minus seed s of B)."""
    rows = [(a, b) for a, b in GAINS if runs.get(a) and runs.get(b)]
    if not rows:
        return
    print(f"{title}\n")
    print(
        "| gain (points) | seeds | images | under AutoAttack [95% interval] "
        "| under the worst case [95% interval] | per seed (worst case) |"
    )
    print("|---|---:|---:|---:|---:|---|")
    for a, b in rows:
        n = common_size(runs[a], runs[b])
        cells = []
        for which in ("autoattack", "worst"):
            point, lo, hi = bootstrap_gain(stack(runs[a], which, n), stack(runs[b], which, n))
            cells.append(f"{100 * point:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]")
        per_seed = [
            f"{100 * (runs[a][s]['worst'][:n].float().mean() - runs[b][s]['worst'][:n].float().mean()).item():+.1f}"
            for s in sorted(set(runs[a]) & set(runs[b]))
        ]
        seeds = f"{len(runs[a])} / {len(runs[b])}"
        print(f"| {a} - {b} | {seeds} | {n} | {cells[0]} | {cells[1]} | {', '.join(per_seed)} |")
    print()


def difference_table(before: dict, after: dict, title: str, names: tuple[str, str], which: tuple[str, ...]) -> None:
    """``after`` minus ``before`` on the runs (method, seed) and images both evaluated, for each
    per-example vector of ``which``, with the standard error of the paired difference over images
    (one run each: no seed spread)."""
    rows = [(m, s) for m in METHODS for s in sorted(after.get(m, {})) if s in before.get(m, {})]
    if not rows:
        return
    labels = {"clean": "clean", "autoattack": "AutoAttack", "worst": "worst case"}
    print(f"{title}\n")
    head = " | ".join(f"{labels[w]} {names[0]} | {names[1]} | {names[1]} - {names[0]}" for w in which)
    print(f"| model | seed | images | {head} |")
    print("|---|---:|---:|" + "---:|---:|---:|" * len(which))
    for m, s in rows:
        b, a = before[m][s], after[m][s]
        n = min(len(b["clean"]), len(a["clean"]))
        cells = []
        for w in which:
            x, y = b[w][:n].float(), a[w][:n].float()
            d = y - x
            se = math.sqrt(d.var(unbiased=True).item() / n) if n > 1 else float("nan")
            cells += [pct(x.mean().item()), pct(y.mean().item()), f"{100 * d.mean().item():+.1f} ± {100 * se:.1f}"]
        print(f"| {m} | {s} | {n} | " + " | ".join(cells) + " |")
    print()


def standalone_table(full: dict) -> None:
    """Per-family accuracies of the models run with --standalone: each adaptive family alone on every
    example (A1-A5 apply to RA models only, A6 to every model with a transfer source)."""
    rows = []
    for m in METHODS:
        for s, run in sorted(full.get(m, {}).items()):
            fams = {k: v["acc"] for k, v in run["report"]["attacks"].items() if v.get("group") == "standalone"}
            if fams:
                rows.append((m, s, run, fams))
    if not rows:
        return
    keys = sorted({k for *_, fams in rows for k in fams})
    print("Each adaptive family alone on every clean-correct example (accuracy, %; full budgets)\n")
    print(
        "| model | seed | images | AutoAttack | "
        + " | ".join(k.removeprefix("standalone-").upper() for k in keys)
        + " | worst case |"
    )
    print("|---|---:|---:|---:|" + "---:|" * len(keys) + "---:|")
    for m, s, run, fams in rows:
        r = run["report"]
        cells = " | ".join(pct(fams.get(k)) for k in keys)
        print(f"| {m} | {s} | {r['n_examples']} | {pct(r['autoattack_acc'])} | {cells} | {pct(r['worst_case_acc'])} |")
    print()


def broken(report: dict, attack: str) -> str:
    """``broken / attacked`` of a cascade attack (it attacks only what the earlier attacks left)."""
    info = report["attacks"].get(attack, {}).get("info", {})
    return f"{info['broken']} / {info['attacked']}" if "attacked" in info else "-"


def eps_table(runs: dict, pilot: dict[str, dict]) -> None:
    """The eps-0.2 question: clean, PGD-20 and AutoAttack accuracy, then what the long Square run
    and the transfer attack each still broke after everything before them (the source: TRADES-CE,
    for TRADES-CE the KL one; eval.sh), and the worst case. ``pilot``: the 2-epoch models of the
    first study where the question came from (``{name: report}`` of results/fmnist/eval-eps0.2)."""
    rows = [(f"{m}-s{s}", run["report"]) for m in METHODS for s, run in sorted(runs.get(m, {}).items())]
    rows += [(f"2-epoch {name} (first study)", report) for name, report in pilot.items()]
    if not rows:
        return
    print(
        "Full budgets at eps 0.2, seed 0 and the first study's 2-epoch models "
        "(accuracy %; Square and transfer: examples broken / attacked)\n"
    )
    print(
        "| model | images | clean | PGD-20 | AutoAttack | Square 20000 x 2 after AutoAttack "
        "| transfer from a plain TRADES | adaptive worst case |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, r in rows:
        cells = [pct(r["clean_acc"]), pct(r["attacks"]["pgd-20"]["acc"]), pct(r["autoattack_acc"])]
        cells += [broken(r, "a6-square"), broken(r, "a6-transfer-model"), f"**{pct(r['worst_case_acc'])}**"]
        print(f"| {label} | {r['n_examples']} | " + " | ".join(cells) + " |")
    print()


def load_pilot(folder: Path) -> dict[str, dict]:
    """``{name: report}`` of the first study's merged reports at eps 0.2, TRADES + ANC first."""
    reports = {f.parent.name: json.loads(f.read_text()) for f in sorted(folder.glob("*/report.json"))}
    return dict(sorted(reports.items(), key=lambda item: item[0] != "trades-anc-only"))


def curves_table(logs: dict[str, dict[int, list[dict]]]) -> dict[str, list[list[float]]]:
    """Validation robust accuracy per epoch (mean over seeds) of every method of the training logs
    (load_training_logs); returns the per-seed curves for the plot."""
    curves = {
        m: [[r["val_robust_acc"] for r in records] for records in by_seed.values()] for m, by_seed in logs.items()
    }
    if not curves:
        return curves
    epochs = max(len(c) for runs in curves.values() for c in runs)
    print(
        "Validation robust accuracy by epoch (%, mean over seeds; 1000 held-out training images; PGD-10, "
        "and on RA models also PGD-10 on the summed head CE)\n"
    )
    print("| model | seeds | " + " | ".join(str(e + 1) for e in range(epochs)) + " |")
    print("|---|---:|" + "---:|" * epochs)
    for m, runs in curves.items():
        cells = []
        for e in range(epochs):
            vals = [c[e] for c in runs if len(c) > e]
            cells.append(pct(sum(vals) / len(vals)) if vals else "-")
        print(f"| {m} | {len(runs)} | " + " | ".join(cells) + " |")
    print()
    return curves


def selection_table(runs: dict[str, dict[int, list[dict]]]) -> None:
    """Per run of the training logs (load_training_logs), the selected epoch and its validation
    robust accuracy, how much the last three epochs added over the best before them (near zero:
    the run had stopped improving), and its training minutes."""
    if not runs:
        return
    seeds = sorted({s for by_seed in runs.values() for s in by_seed})
    print(
        "Selected checkpoints (validation robust accuracy %, epoch); last 3 epochs: the best of the last three "
        "minus the best before them (points); minutes: training on one core\n"
    )
    head = " | ".join(f"seed {s}" for s in seeds)
    print(f"| model | {head} | last 3 epochs | minutes |")
    print("|---|" + "---:|" * len(seeds) + "---:|---:|")
    for m, by_seed in runs.items():
        cells, late, minutes = [], [], []
        for s in seeds:
            records = by_seed.get(s)
            if not records:
                cells.append("-")
                continue
            best = max(records, key=lambda r: (r["val_robust_acc"], r["epoch"]))
            cells.append(f"{pct(best['val_robust_acc'])} ({best['epoch'] + 1})")
            acc = [r["val_robust_acc"] for r in records]
            late.append(max(acc[-3:]) - max(acc[:-3]))
            minutes.append(sum(r["epoch_s"] for r in records) / 60)
        lates = ", ".join(f"{100 * v:+.1f}" for v in late)
        print(f"| {m} | " + " | ".join(cells) + f" | {lates} | {', '.join(f'{v:.0f}' for v in minutes)} |")
    print()


DIP = 0.05  # a validation epoch this far below the best epoch before it is a dip


def dips_table(runs: dict[str, dict[int, list[dict]]]) -> None:
    """Per run of the training logs, the epochs whose validation robust accuracy fell more than
    DIP below the best epoch before them (training that collapses for an epoch or a few and comes
    back; the selection rule skips them, but they say how stable each objective trains)."""
    if not runs:
        return
    seeds = sorted({s for by_seed in runs.values() for s in by_seed})
    print(
        f"Dips: epochs whose validation robust accuracy fell more than {100 * DIP:.0f} points below the best "
        "epoch before them, as accuracy % (epoch)\n"
    )
    print("| model | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    print("|---|" + "---|" * len(seeds))
    for m, by_seed in runs.items():
        cells = []
        for s in seeds:
            acc = [r["val_robust_acc"] for r in by_seed.get(s, [])]
            dips = [f"{pct(a)} ({e + 1})" for e, a in enumerate(acc) if e and a < max(acc[:e]) - DIP]
            cells.append(", ".join(dips) or ("none" if acc else "-"))
        print(f"| {m} | " + " | ".join(cells) + " |")
    print()


def plot_curves(curves: dict[str, list[list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (m, runs) in enumerate(curves.items()):
        color = plt.get_cmap("tab10")(i)
        for j, c in enumerate(runs):
            ax.plot(range(1, len(c) + 1), [100 * v for v in c], color=color, alpha=0.8, label=m if j == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation robust accuracy (%)")
    ax.set_title("Fashion-MNIST study v2: every seed (1000 held-out training images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=HERE, help="the study folder (default: this script's)")
    p.add_argument("--plot", type=Path, help="also write the validation curves of every run to this PNG")
    args = p.parse_args()
    logs = load_training_logs(args.root)
    curves = curves_table(logs)
    selection_table(logs)
    dips_table(logs)
    if args.plot and curves:
        plot_curves(curves, args.plot)
    quick, full = load_runs(args.root / "eval-quick"), load_runs(args.root / "eval-full")
    results_table(quick, "Quick budgets, every seed (accuracy %, mean ± SD over seeds)")
    gains_table(quick, "Gains, quick budgets, every seed")
    flags_table(quick, 'Sanity flags, quick budgets (docs/EVALUATION.md, "Sanity checks")')
    results_table(full, "Full budgets, seed 0 (accuracy %)")
    gains_table(full, "Gains, full budgets, seed 0 (test-image interval only)")
    flags_table(full, "Sanity flags, full budgets, seed 0")
    difference_table(
        quick,
        full,
        "Full minus quick budgets on the same model and images (points, paired standard error)",
        ("quick", "full"),
        ("autoattack", "worst"),
    )
    standalone_table(full)
    eps02 = load_runs(args.root / "eval-eps0.2")
    eps_table(eps02, load_pilot(args.root.parent / "fmnist" / "eval-eps0.2") if args.root.resolve() == HERE else {})
    gains_table(eps02, "Gains at eps 0.2, full budgets, seed 0 (test-image interval only)")
    for longer in sorted(args.root.glob("e[0-9]*")):  # the convergence control (train.sh EPOCHS=E)
        epochs = longer.name.removeprefix("e")
        difference_table(
            quick,
            load_runs(longer / "eval-quick"),
            f"Training {epochs} epochs instead of 10, quick budgets, same seed and images "
            "(accuracy %; points, paired standard error)",
            ("10", epochs),
            ("clean", "autoattack", "worst"),
        )


if __name__ == "__main__":
    main()
