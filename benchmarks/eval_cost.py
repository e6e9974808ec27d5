"""Cost and strength of the evaluation v2 against the committed full-budget study reports.

For each study checkpoint with a v2 report (``results/fmnist/eval-v2/NAME``, written by
``bash results/fmnist/eval-v2.sh N``) prints, on the images the v2 report covers (or on its first
``--n-images`` N, from the finished chunks): the seconds of the
reference AutoAttack and of the whole ``--suite full`` (both from the same run, summed over its
chunks), their ratio, the per-example worst case of the v2 suite and of the first version (full
budgets; recorded in ``results/fmnist/eval-v1.json``) on the same images, their difference in
points, and which examples only one of them broke. Also the seconds and breaks of every adaptive
attack. ``--markdown`` prints the table of docs/PERFORMANCE.md.

    python benchmarks/eval_cost.py [--markdown] [--n-images N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ancra.evaluation.common import worst_case
from ancra.evaluation.report import load_per_example

ROOT = Path(__file__).resolve().parents[1] / "results" / "fmnist"
MODELS = "standard pgd-at ancra-pgd trades ancra-trades mart ancra-mart trades-anc-only trades-ra-only".split()


def _chunks(report_dir: Path, n_images: int | None) -> list[Path]:
    """The report's finished chunk folders, in order: those within the first ``n_images`` (or
    within the merged report's images), else the report folder itself (an unchunked report)."""
    if n_images is None:
        n_images = json.loads((report_dir / "report.json").read_text())["n_examples"]
    chunks = []
    for path in sorted(report_dir.glob("chunk-*/report.json")):
        a, b = (int(v) for v in path.parent.name.split("-")[1:])
        if b <= n_images:
            chunks.append(path.parent)
    return chunks or [report_dir]


def _chunk_seconds(chunks: list[Path]) -> tuple[float, float]:
    """Seconds of AutoAttack and of the whole suite, summed over chunks. A chunk rerun after a
    change of the adaptive attacks reuses its finished AutoAttack run (``aa_result_*.pt``: same
    model, images, version and seed): its wall time then lacks AutoAttack, whose seconds come from
    the run that produced it, on the same machine; they are added back."""
    aa_s = total_s = 0.0
    for chunk in chunks:
        r = json.loads((chunk / "report.json").read_text())
        aa = r["timings"]["autoattack"]
        reused = r["attacks"]["autoattack"]["info"].get("resumed") == "finished run reused"
        aa_s += aa
        total_s += r["timings"]["total"] + (aa if reused else 0.0)
    return aa_s, total_s


def compare(name: str, n_images: int | None = None) -> dict | None:
    """The row of one model, on its first ``n_images`` (default: all its v2 report covers)."""
    new_dir = ROOT / "eval-v2" / name
    if not (new_dir / "report.json").is_file():
        return None
    chunks = _chunks(new_dir, n_images)
    per_chunk = [load_per_example(c / "per_example.pt") for c in chunks]
    reports = [json.loads((c / "report.json").read_text()) for c in chunks]
    wc_new = torch.cat([worst_case(p["tensors"], p["attacks"]) for p in per_chunk])
    n = len(wc_new)
    if n_images is not None and n != n_images:
        return None  # not yet evaluated on that many images
    old = json.loads((ROOT / "eval-v1.json").read_text())["models"][name]
    wc_old = torch.tensor([c == "1" for c in old["worst_case"]])[:n]
    aa_s, total_s = _chunk_seconds(chunks)
    adaptive: dict = {}
    for p in per_chunk:
        for k, m in p["attacks"].items():
            if m.get("cascade"):
                broken, seconds = adaptive.get(k, (0, 0.0))
                adaptive[k] = (broken + (m["info"].get("broken") or 0), seconds + m["seconds"])
    sizes = [r["n_examples"] for r in reports]
    mean = lambda key: sum(r[key] * w for r, w in zip(reports, sizes)) / n  # noqa: E731
    return {
        "name": name,
        "ra": reports[0]["is_ra_model"],
        "n": n,
        "autoattack_s": aa_s,
        "total_s": total_s,
        "ratio": total_s / aa_s,
        # the first version's own ratio (its run, its machine), on all the images it covers
        "ratio_v1": old["seconds"]["total"] / old["seconds"]["autoattack"],
        "clean": mean("clean_acc"),
        "autoattack": mean("autoattack_acc"),
        "worst_new": float(wc_new.float().mean()),
        "worst_old": float(wc_old.float().mean()),
        "diff_pt": 100 * float(wc_new.float().mean() - wc_old.float().mean()),
        "only_old_broke": (wc_new & ~wc_old).nonzero().squeeze(1).tolist(),
        "only_new_broke": (wc_old & ~wc_new).nonzero().squeeze(1).tolist(),
        "adaptive": adaptive,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--markdown", action="store_true")
    p.add_argument(
        "--n-images", type=int, help="compare on the first N test images (default: all each v2 report covers)"
    )
    a = p.parse_args()
    rows = [r for r in (compare(m, a.n_images) for m in MODELS) if r is not None]
    if not a.markdown:
        for r in rows:
            print(json.dumps(r))
        return
    cols = "model|RA|images|AutoAttack s|full suite s|ratio|v1 ratio|worst v1|worst v2|v2 - v1 (pt)".split("|")
    print("| " + " | ".join(cols) + " |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['name']} | {'yes' if r['ra'] else '-'} | {r['n']} | {r['autoattack_s']:.0f} | {r['total_s']:.0f} | "
            f"{r['ratio']:.2f} | {r['ratio_v1']:.2f} | {100 * r['worst_old']:.2f} | {100 * r['worst_new']:.2f} | "
            f"{r['diff_pt']:+.2f} |"
        )


if __name__ == "__main__":
    main()
