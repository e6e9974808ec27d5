"""Checks shared by the study tests (test_study.py: the 2-epoch study in results/fmnist/;
test_study_v2.py: the study v2 in results/fmnist-v2/): a committed report belongs to its
checkpoint and adds up, `ancra verify` passes on it, and docs/RESULTS.md holds every table a
study's table script prints and no decimal number that neither a table script prints nor a study
config sets."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ancra.checkpoint import load_model
from ancra.data import file_digest
from ancra.evaluation.common import worst_case
from ancra.evaluation.report import load_per_example

ROOT = Path(__file__).resolve().parents[1]


# A decimal number as the docs quote results ("77.9", "+2.6", "0.05"), not a version ("2.13.0").
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")


@functools.cache
def script_output(script: Path, *args: str) -> str:
    """What a study's table script prints (run once per test session: some bootstrap for seconds)."""
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, check=True, timeout=300
    ).stdout


def printed_tables(script: Path, *args: str) -> list[str]:
    """The Markdown tables (blank-line separated blocks that start with ``|``) ``script`` prints."""
    out = script_output(script, *args)
    return [block.strip() for block in out.split("\n\n") if block.lstrip().startswith("|")]


def decimals(text: str) -> set[str]:
    return set(DECIMAL.findall(text))


def assert_results_md_has_tables(script: Path, *args: str) -> None:
    tables = printed_tables(script, *args)
    assert tables, f"{script.name} printed no table"
    doc = (ROOT / "docs" / "RESULTS.md").read_text()
    rerun = " ".join([str(script.relative_to(ROOT)), *args])
    for table in tables:
        assert table in doc, f"docs/RESULTS.md is stale: rerun {rerun} and paste its tables"


def check_report(report_dir: Path, ckpt: Path, *, quick: bool, n: int, is_ra: bool, eps: float = 0.1) -> dict:
    """``report_dir`` evaluates ``ckpt`` (by hash and path) on the first ``n`` test images with the
    full suite at ``eps`` (quick budgets or not), and its headline numbers follow from its
    per-example results; returns the report."""
    assert ckpt.stat().st_size < 4 * 2**20  # "a few MB each at most"
    model = load_model(ckpt)  # weights-only
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    report = json.loads((report_dir / "report.json").read_text())
    assert report["checkpoint_hash"] == "sha256:" + file_digest(ckpt, "sha256")
    assert report["meta"]["checkpoint"] == ckpt.relative_to(ROOT).as_posix()
    assert (report["suite"], report["quick"], report["n_examples"]) == ("full", quick, n)
    assert report["eps_value"] == pytest.approx(eps)
    assert report["subset"].startswith(f"first {n} test examples")
    assert report["is_ra_model"] == is_ra
    pe = load_per_example(report_dir / "per_example.pt")
    t = pe["tensors"]
    assert len(t["clean"]) == n
    assert t["clean"].float().mean().item() == pytest.approx(report["clean_acc"], abs=1e-6)
    assert t["robust/autoattack"].float().mean().item() == pytest.approx(report["autoattack_acc"], abs=1e-6)
    assert worst_case(t, pe["attacks"]).float().mean().item() == pytest.approx(report["worst_case_acc"], abs=1e-6)
    # The worst case includes the adaptive gate attacks for the RA models and only for them.
    assert any(k.startswith("a1-") for k in report["worst_case_over"]) == is_ra
    return report


def check_verifies(report_dir: Path, ckpt: Path) -> None:
    """`ancra verify` on a committed report: checkpoint hash, and every broken example's saved
    input in the eps-ball, in [0, 1] and misclassified at batch size 1 in fp32."""
    from ancra.evaluation import verify_report

    report = json.loads((report_dir / "report.json").read_text())
    result = verify_report(report_dir, checkpoint=ckpt, echo=None)
    assert result.ok, result.problems
    assert sum(r["saved"] for r in result.rows.values()) == report["n_examples"] - round(
        report["n_examples"] * report["worst_case_acc"]
    )
