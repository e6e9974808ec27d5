"""The committed Fashion-MNIST study (results/fmnist/, docs/RESULTS.md) is what it says it is:
every report (full budgets in eval-v2/, quick budgets in quick-v2/) evaluates the committed
checkpoint of its name on the same first 1000 test images, its headline numbers follow from its
per-example results, `ancra verify` passes on it, and the tables of docs/RESULTS.md are what
results/fmnist/table.py prints from these files today. The eps-0.2 reports of two of its models
(eval-eps0.2/, issue 21's eps-0.2 question) are checked the same way."""

from pathlib import Path

import pytest
from study_checks import assert_results_md_has_tables, check_report, check_verifies

from ancra.data import file_digest

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "results" / "fmnist"
NAMES = [
    "standard",
    "pgd-at",
    "trades",
    "mart",
    "ancra-pgd",
    "ancra-trades",
    "ancra-mart",
    "trades-anc-only",
    "trades-ra-only",
]
RA = {"ancra-pgd", "ancra-trades", "ancra-mart", "trades-ra-only"}
N = 1000  # the issue asks for the same first 1000 or more test images
FOLDERS = {"eval-v2": False, "quick-v2": True}  # folder: quick budgets?
REPORTS = sorted(p.parent for folder in FOLDERS for p in (STUDY / folder).glob("*/report.json"))
IDS = [f"{p.parent.name}/{p.name}" for p in REPORTS]


def test_every_model_has_both_reports():
    for folder in FOLDERS:
        assert set(NAMES) <= {p.name for p in REPORTS if p.parent.name == folder}, folder
    assert not list(STUDY.glob("*.per_example.pt")), "first-version reports are replaced by eval-v2/"


@pytest.mark.parametrize("report_dir", REPORTS, ids=IDS)
def test_report_belongs_to_its_checkpoint_and_adds_up(report_dir):
    name = report_dir.name
    check_report(report_dir, STUDY / f"{name}.pt", quick=FOLDERS[report_dir.parent.name], n=N, is_ra=name in RA)


@pytest.mark.parametrize("args", [(), ("--quick",), ("--compare",)])
def test_results_md_tables_are_table_py_output(args):
    assert_results_md_has_tables(STUDY / "table.py", *args)


@pytest.mark.parametrize("report_dir", REPORTS, ids=IDS)
def test_every_committed_report_verifies(report_dir):
    check_verifies(report_dir, STUDY / f"{report_dir.name}.pt")


# The eps-0.2 question on the 2-epoch models (eval-v2.sh with OUT=results/fmnist/eval-eps0.2):
# each model and its A6 transfer source.
EPS02 = {"trades-anc-only": "trades-ce", "trades-ce": "trades"}
EPS02_REPORTS = sorted(p.parent for p in (STUDY / "eval-eps0.2").glob("*/report.json"))


def test_eps02_reports_are_the_two_asked_for():
    assert {p.name for p in EPS02_REPORTS} == set(EPS02)


@pytest.mark.parametrize("report_dir", EPS02_REPORTS, ids=lambda p: p.name)
def test_eps02_report_belongs_to_its_checkpoint_and_transfer_source(report_dir):
    report = check_report(report_dir, STUDY / f"{report_dir.name}.pt", quick=False, n=500, is_ra=False, eps=0.2)
    source = STUDY / f"{EPS02[report_dir.name]}.pt"
    assert report["meta"]["settings"]["transfer_hash"] == "sha256:" + file_digest(source, "sha256")
    check_verifies(report_dir, STUDY / f"{report_dir.name}.pt")
