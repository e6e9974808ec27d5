"""Print the Markdown table of docs/RESULTS.md from results/fmnist/NAME.json and NAME.metrics.jsonl.

    .venv/bin/python results/fmnist/table.py
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["standard", "pgd-at", "trades", "mart", "ancra-pgd", "ancra-trades", "ancra-mart",
         "trades-anc-only", "trades-ra-only"]


def pct(v):
    return "-" if v is None else f"{100 * v:.1f}"


def main() -> None:
    print("| model | clean | FGSM | PGD-20 | CW-inf | AutoAttack | adaptive worst case | flags | train min |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for name in ORDER:
        report = HERE / f"{name}.json"
        if not report.exists():
            continue
        r = json.loads(report.read_text())
        acc = {k: v["acc"] for k, v in r["attacks"].items()}
        minutes = sum(json.loads(line)["epoch_s"] for line in (HERE / f"{name}.metrics.jsonl").read_text().splitlines()) / 60
        flags = ", ".join(sorted({f.split(":")[0] for f in r["flags"]})) or "none"
        print(f"| {name} | {pct(r['clean_acc'])} | {pct(acc.get('fgsm'))} | {pct(acc.get('pgd-20'))} | "
              f"{pct(acc.get('cw-30'))} | {pct(r['autoattack_acc'])} | **{pct(r['worst_case_acc'])}** | {flags} | {minutes:.1f} |")


if __name__ == "__main__":
    main()
