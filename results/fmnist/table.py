"""Print the Markdown tables of docs/RESULTS.md from the study's reports.

    .venv/bin/python results/fmnist/table.py            # full budgets: results/fmnist/eval-v2/NAME/
    .venv/bin/python results/fmnist/table.py --quick    # quick budgets: results/fmnist/quick-v2/NAME/

Each prints the results table and the gains of ANCRA (and its ablations) over the base method,
computed per example on the same images (each report's ``per_example.pt``), with the standard
error of a paired difference. The reports are those of the evaluation v2 (``eval-v2.sh``), which
``ancra verify`` re-checks. ``--compare`` prints quick against full budgets on the images both evaluated;
``--facts`` the other numbers the text of docs/RESULTS.md quotes (where the adaptive attacks beat
AutoAttack, which part of AutoAttack the longer budgets strengthen, and the clean accuracy
ANCRA-TRADES gives up against each ablation).
"""

import argparse
import json
import math
from pathlib import Path

import torch

from ancra.evaluation.common import worst_case
from ancra.evaluation.report import load_per_example
from ancra.evaluation.sanity import flag_code

HERE = Path(__file__).resolve().parent
FULL, QUICK = HERE / "eval-v2", HERE / "quick-v2"
ORDER = [
    "standard",
    "pgd-at",
    "trades",
    "trades-ce",  # the matched baseline of the TRADES variants (CE attack), added later
    "mart",
    "ancra-pgd",
    "ancra-trades",
    "ancra-mart",
    "trades-anc-only",
    "trades-ra-only",
]
# ANCRA over its base method; each ablation over TRADES; the TRADES variants over the matched
# TRADES (CE attack, where evaluated); and what each part adds to the other (ANCRA-TRADES =
# TRADES + RA + ANC: the last two rows).
GAINS = [
    ("ancra-pgd", "pgd-at"),
    ("ancra-trades", "trades"),
    ("ancra-mart", "mart"),
    ("trades-anc-only", "trades"),
    ("trades-ra-only", "trades"),
    ("ancra-trades", "trades-ce"),
    ("trades-anc-only", "trades-ce"),
    ("trades-ra-only", "trades-ce"),
    ("ancra-trades", "trades-ra-only"),
    ("ancra-trades", "trades-anc-only"),
]


def pct(v):
    return "-" if v is None else f"{100 * v:.1f}"


def load(folder: Path, name: str):
    report = folder / name / "report.json"
    if not report.exists():
        return None
    return json.loads(report.read_text()), load_per_example(folder / name / "per_example.pt")


def robust(pe, which: str, n: int) -> torch.Tensor:
    """Per-example robustness of the first ``n`` images: ``autoattack`` or ``worst`` (the
    per-example minimum over the attacks the report's worst case covers)."""
    t = pe["tensors"]
    return (worst_case(t, pe["attacks"]) if which == "worst" else t[f"robust/{which}"])[:n]


def paired(a: torch.Tensor, b: torch.Tensor) -> str:
    """Accuracy difference a - b in points on the same examples, with its paired standard error."""
    n = len(a)
    d = a.float() - b.float()
    se = math.sqrt(max(d.var(unbiased=True).item(), 0.0) / n) if n > 1 else float("nan")
    return f"{100 * d.mean().item():+.1f} ± {100 * se:.1f}"


def results_table(folder: Path) -> None:
    runs = {name: r for name in ORDER if (r := load(folder, name)) is not None}
    sizes = {r[0]["n_examples"] for r in runs.values()}
    print(
        f"{', '.join(map(str, sorted(sizes)))} test images; quick budgets: "
        f"{sorted({r[0].get('quick') for r in runs.values()})}\n"
    )
    print("| model | clean | FGSM | PGD-20 | CW-inf | AutoAttack | adaptive worst case | flags | train min |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for name, (r, _) in runs.items():
        acc = {k: v["acc"] for k, v in r["attacks"].items()}
        minutes = (
            sum(json.loads(line)["epoch_s"] for line in (HERE / f"{name}.metrics.jsonl").read_text().splitlines()) / 60
        )
        flags = ", ".join(sorted({flag_code(f) for f in r["flags"]})) or "none"
        print(
            f"| {name} | {pct(r['clean_acc'])} | {pct(acc.get('fgsm'))} | {pct(acc.get('pgd-20'))} | "
            f"{pct(acc.get('cw-30'))} | {pct(r['autoattack_acc'])} | **{pct(r['worst_case_acc'])}** | "
            f"{flags} | {minutes:.1f} |"
        )
    print("\n| gain (points, paired SE) | images | under AutoAttack | under the adaptive worst case |")
    print("|---|---:|---:|---:|")
    for new, base in GAINS:
        if new in runs and base in runs:
            n = min(runs[new][0]["n_examples"], runs[base][0]["n_examples"])
            pn, pb = runs[new][1], runs[base][1]
            print(
                f"| {new} - {base} | {n} | {paired(robust(pn, 'autoattack', n), robust(pb, 'autoattack', n))} | "
                f"{paired(robust(pn, 'worst', n), robust(pb, 'worst', n))} |"
            )


def compare_table() -> None:
    print(
        "| model | images | AutoAttack quick | AutoAttack full | full - quick | worst case quick | worst case full "
        "| full - quick |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in ORDER:
        full, quick = load(FULL, name), load(QUICK, name)
        if full is None or quick is None:
            continue
        n = min(full[0]["n_examples"], quick[0]["n_examples"])
        cells = []
        for which in ("autoattack", "worst"):
            q, f = robust(quick[1], which, n), robust(full[1], which, n)
            cells += [pct(q.float().mean().item()), pct(f.float().mean().item()), paired(f, q)]
        print(f"| {name} | {n} | " + " | ".join(cells) + " |")


def facts() -> None:
    """Per RA model: how far the adaptive worst case is below AutoAttack and which attack broke
    each example that survived AutoAttack (the first in cascade order, since each cascade attack
    runs on the survivors of the ones before it); per model: the quick-to-full AutoAttack gap
    split into APGD (APGD-CE + APGD-T; quick: 20 iterations and 3 targets, full: 100 and 9), FAB-T
    and Square (the examples Square breaks after every white-box attack of the full AutoAttack)."""
    for name in ORDER:
        run = load(FULL, name)
        if run is None or not run[0]["is_ra_model"]:
            continue
        r, pe = run
        t, n = pe["tensors"], r["n_examples"]
        fell = t["robust/autoattack"] & ~worst_case(t, pe["attacks"])
        by = dict.fromkeys(pe["attacks"], 0)  # in run order
        for i in fell.nonzero().flatten().tolist():
            first = next(k for k, m in pe["attacks"].items() if m.get("in_worst_case") and not t[f"robust/{k}"][i])
            by[first] += 1
        by = {k: v for k, v in by.items() if v}
        print(
            f"{name}: adaptive worst case {100 * (r['autoattack_acc'] - r['worst_case_acc']):.1f} points below "
            f"AutoAttack on {n} images; {int(fell.sum())} examples survived AutoAttack and fell to: {by}"
        )
    print()
    for name in ORDER:
        full, quick = load(FULL, name), load(QUICK, name)
        if full is None or quick is None:
            continue
        n = full[0]["n_examples"]
        step = dict(full[0]["attacks"]["autoattack"]["info"]["component_acc"])  # accuracy after each attack
        for prev, k in [("apgd-ce", "apgd-t"), ("apgd-t", "fab-t"), ("fab-t", "square")]:
            step.setdefault(k, step[prev])  # AutoAttack skips the attacks after none are left robust
        quick_aa = robust(quick[1], "autoattack", n).float().mean().item()
        parts = {
            "APGD-CE + APGD-T": step["apgd-t"] - quick_aa,
            "FAB-T": step["fab-t"] - step["apgd-t"],
            "Square": step["square"] - step["fab-t"],
        }
        print(
            f"{name}: full - quick AutoAttack on {n} images: "
            + ", ".join(f"{k} {round(100 * v, 1) + 0.0:+.1f}" for k, v in parts.items())
            + " points"
        )
    print()
    for a, b in GAINS[-2:]:  # what each part of ANCRA-TRADES costs on clean images
        runs = load(FULL, a), load(FULL, b)
        if None in runs:
            continue
        n = min(r[0]["n_examples"] for r in runs)
        ca, cb = (r[1]["tensors"]["clean"][:n] for r in runs)
        print(
            f"clean {a} - {b} on {n} images: {pct(ca.float().mean().item())} vs "
            f"{pct(cb.float().mean().item())}, {paired(ca, cb)} points"
        )
    print()
    for name in ORDER:  # the blind_gradient flag's measure (docs/RESULTS.md, flags)
        run = load(FULL, name)
        if run is not None and run[0]["sanity"].get("blind_gradient_fraction"):
            print(f"{name}: blind-gradient fraction {pct(run[0]['sanity']['blind_gradient_fraction'])}%")
    kl, ce = load(QUICK, "trades"), load(QUICK, "trades-ce")
    if kl is not None and ce is not None:  # the change of TRADES attack on its own
        n = min(kl[0]["n_examples"], ce[0]["n_examples"])
        w_kl, w_ce = (robust(r[1], "worst", n).float().mean().item() for r in (kl, ce))
        print(f"quick worst case trades-ce - trades (KL) on {n} images: {pct(w_ce)} - {pct(w_kl)} = {pct(w_ce - w_kl)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="the quick-budget reports (results/fmnist/quick-v2/)")
    g.add_argument("--compare", action="store_true", help="quick against full budgets on the same images")
    g.add_argument("--facts", action="store_true", help="the other numbers the text of docs/RESULTS.md quotes")
    args = p.parse_args()
    if args.compare:
        compare_table()
    elif args.facts:
        facts()
    else:
        results_table(QUICK if args.quick else FULL)


if __name__ == "__main__":
    main()
