"""The Fashion-MNIST study v2 (issue 21; results/fmnist-v2/): its interval arithmetic, and every
committed artefact is what it says it is (checkpoints: config, seed, selection, size; reports:
their checkpoint, budgets and transfer source, numbers that add up, `ancra verify`), and
docs/RESULTS.md holds every table results/fmnist-v2/table.py prints from them."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from study_checks import assert_results_md_has_tables, check_report, check_verifies, decimals, script_output

from ancra.data import file_digest

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "results" / "fmnist-v2"


def _table():
    spec = importlib.util.spec_from_file_location("study_v2_table", STUDY / "table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _eps_probe():
    spec = importlib.util.spec_from_file_location("study_v2_eps_probe", STUDY / "eps_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eps_probe_features_are_the_models_own_stages():
    """eps_probe.py --features measures the noise at the outputs the model's own forward uses: its
    last feature is the model's stem (everything before the final stage), and no noise is no change."""
    from ancra.checkpoint import load_model

    probe = _eps_probe()
    model = load_model(STUDY / "trades-anc-only-s0.pt")
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = probe.stage_features(model, x)
        assert len(features) == len(model._stage_names)
        torch.testing.assert_close(features[-1], model.stem(x))
        assert probe.relative_change(features[1], features[1]) == 0
        assert probe.relative_change(features[1] * 1.5, features[1]) == pytest.approx(0.5, rel=1e-5)


def _bernoulli(p: list[float], n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([(torch.rand(n, generator=g) < q).float() for q in p])


def test_bootstrap_gain_with_one_seed_is_the_paired_image_bootstrap():
    table = _table()
    a, b = _bernoulli([0.7], 2000, 1), _bernoulli([0.6], 2000, 2)
    point, lo, hi = table.bootstrap_gain(a, b)
    d = a[0] - b[0]
    se = math.sqrt(d.var().item() / len(d))
    assert point == pytest.approx(d.mean().item())
    assert lo < point < hi
    # a percentile interval of a mean of 2000 draws: close to +-1.96 standard errors
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_bootstrap_gain_grows_with_the_seed_spread():
    """Seeds that disagree widen the interval; seeds that agree leave it as the images make it."""
    table = _table()
    b = _bernoulli([0.6, 0.6, 0.6], 1000, 3)
    same = _bernoulli([0.65, 0.65, 0.65], 1000, 4)
    spread = _bernoulli([0.55, 0.65, 0.75], 1000, 4)
    _, lo1, hi1 = table.bootstrap_gain(same, b)
    p2, lo2, hi2 = table.bootstrap_gain(spread, b)
    assert hi2 - lo2 > 2 * (hi1 - lo1)
    assert lo2 < p2 < hi2
    # the same replicates for the same inputs: the tables are reproducible
    assert table.bootstrap_gain(spread, b) == (p2, lo2, hi2)


def test_difference_table_is_after_minus_before_on_the_images_both_evaluated(capsys):
    """The full - quick and 20 - 10 epochs tables: per-example vectors of the same run compared on
    the shared first images, with the standard error of the paired difference."""
    table = _table()

    def run(hits: list[int]) -> dict:
        t = torch.tensor(hits, dtype=torch.bool)
        return {"clean": t, "autoattack": t, "worst": t}

    before = {"pgd-at": {0: run([1, 1, 0, 0])}, "trades-kl": {0: run([1, 0])}}
    after = {"pgd-at": {0: run([1, 1, 1, 0, 1, 1])}, "ancra-pgd": {0: run([1, 1])}}  # images 5-6: one side only
    table.difference_table(before, after, "T", ("10", "20"), ("worst",))
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[0] == "| model | seed | images | worst case 10 | 20 | 20 - 10 |"
    # differences 0, 0, 1, 0: mean 0.25, sample SD 0.5, standard error 0.5 / sqrt(4)
    assert rows[1:] == ["| pgd-at | 0 | 4 | 50.0 | 75.0 | +25.0 ± 25.0 |"]  # only runs both have


# the study's folder and the convergence control's (train.sh EPOCHS=E -> eE/NAME-sS.pt)
ROOTS = [STUDY, *sorted(STUDY.glob("e[0-9]*"))]
CHECKPOINTS = sorted(STUDY.glob("*-s[0-9].pt"))
LONGER = sorted(p for root in ROOTS[1:] for p in root.glob("*-s[0-9].pt"))


def method_and_seed(name: str) -> tuple[str, int]:
    run = _table().method_and_seed(name)
    assert run, f"{name} is not METHOD-sSEED of a study method"
    return run


def test_checkpoints_are_committed_seed_by_seed():
    """train.sh finishes every model's seed 0 before any seed 1: the committed checkpoints of a
    seed are a full set before the next seed has any (so the tables compare like with like)."""
    table = _table()
    seeds = {}
    for path in CHECKPOINTS:
        name, seed = method_and_seed(path.stem)
        seeds.setdefault(seed, set()).add(name)
    assert CHECKPOINTS, "no study v2 checkpoint committed yet"
    for seed in sorted(seeds)[:-1]:
        assert seeds[seed] == set(table.METHODS), f"seed {seed} is incomplete but a later seed started"


@pytest.mark.parametrize(
    "path", CHECKPOINTS + LONGER, ids=[p.relative_to(STUDY).as_posix() for p in CHECKPOINTS + LONGER]
)
def test_checkpoint_is_what_its_name_says(path):
    """Trained with its committed config and seed, selected by the rule the config names on its
    own recorded validation numbers, small, and loaded weights-only."""
    from ancra.checkpoint import load_checkpoint
    from ancra.config import load_config

    name, seed = method_and_seed(path.stem)
    assert path.stat().st_size < 4 * 2**20
    ckpt = load_checkpoint(path)
    overrides = [f"train.seed={seed}"]
    if path.parent != STUDY:  # eE/: train.sh's EPOCHS=E
        epochs = int(path.parent.name.removeprefix("e"))
        overrides += [f"train.epochs={epochs}", f"objective.warmup={epochs // 10}"]
    assert ckpt.config == load_config(ROOT / "configs" / "fmnist-study-v2" / f"{name}.toml", overrides)
    assert ckpt.config.train.select == "val_robust"
    assert ckpt.model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert (ckpt.config.model.ra_blocks > 0) == (name in _table().RA)
    epochs = [json.loads(line) for line in path.with_suffix(".metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == list(range(ckpt.config.train.epochs))
    best = max(epochs, key=lambda e: (e["val_robust_acc"], e["epoch"]))  # ties: the later epoch
    assert ckpt.meta["epoch"] == best["epoch"]
    assert ckpt.meta["val_robust_acc"] == best["val_robust_acc"]
    assert ckpt.meta["val_pgd_acc"] == best["val_pgd_acc"]


# eval.sh's three evaluations: folder -> (quick budgets?, eps, the number of test images asked for).
# A report of fewer images (a multiple of the chunk of 100) is an evaluation still under way.
EVALUATIONS = {"eval-quick": (True, 0.1, 1000), "eval-full": (False, 0.1, 500), "eval-eps0.2": (False, 0.2, 500)}
REPORTS = sorted(
    p.parent for folder in EVALUATIONS for root in ROOTS for p in (root / folder).glob("*-s[0-9]/report.json")
)
REPORT_IDS = [p.relative_to(STUDY).as_posix() for p in REPORTS]
# eval.sh's transfer sources: the plain model of the same base method and seed (TRADES: the one
# with the CE attack); at eps 0.2 the two plain TRADES also get each other.
TRANSFER = {
    "ancra-pgd": "pgd-at",
    "ancra-trades": "trades-ce",
    "trades-ra-only": "trades-ce",
    "trades-anc-only": "trades-ce",
}
TRANSFER_EPS02 = {"trades-ce": "trades-kl", "trades-kl": "trades-ce"}


@pytest.mark.parametrize("report_dir", REPORTS, ids=REPORT_IDS)
def test_report_is_what_eval_sh_asked_for(report_dir):
    """Its checkpoint, budgets, eps and images; numbers that follow from its per-example results;
    the transfer source eval.sh names; and, at full budgets, each adaptive family alone on the
    models with a transfer source (``--standalone``)."""
    quick, eps, n_asked = EVALUATIONS[report_dir.parent.name]
    method, seed = method_and_seed(report_dir.name)
    n = json.loads((report_dir / "report.json").read_text())["n_examples"]
    assert 0 < n <= n_asked and n % 100 == 0, n
    ckpt = report_dir.parent.parent / f"{report_dir.name}.pt"
    is_ra = method in _table().RA
    report = check_report(report_dir, ckpt, quick=quick, n=n, is_ra=is_ra, eps=eps)
    source = {**TRANSFER, **(TRANSFER_EPS02 if eps == 0.2 else {})}.get(method)
    transfer_hash = report["meta"]["settings"].get("transfer_hash")
    if source is None:
        assert transfer_hash is None
    else:
        assert transfer_hash == "sha256:" + file_digest(ckpt.parent / f"{source}-s{seed}.pt", "sha256")
    standalone = {k for k, v in report["attacks"].items() if v.get("group") == "standalone"}
    # eval.sh passes --standalone at full budgets to every model with a transfer source (the RA
    # models and TRADES + ANC, whose only family is A6)
    assert bool(standalone) == (not quick and eps == 0.1 and method in TRANSFER), sorted(standalone)


@pytest.mark.parametrize("report_dir", REPORTS, ids=REPORT_IDS)
def test_every_committed_report_verifies(report_dir):
    check_verifies(report_dir, report_dir.parent.parent / f"{report_dir.name}.pt")


def table_args(root: Path) -> list[str]:
    """table.py's arguments for a study root: none for the study's own folder."""
    return [] if root == STUDY else ["--root", str(root)]


@pytest.mark.parametrize("root", ROOTS, ids=lambda p: p.name)
def test_results_md_has_table_py_output(root):
    """Every table results/fmnist-v2/table.py prints from the committed files (and with --root
    eE, from the convergence control's) is in docs/RESULTS.md, number for number (rerun the
    script and paste its tables after each commit of checkpoints or reports)."""
    assert_results_md_has_tables(STUDY / "table.py", *table_args(root))


def test_every_decimal_in_results_md_is_printed_by_a_table_script_or_set_by_a_config():
    """docs/RESULTS.md quotes every result with a decimal point, so each such number of it (tables
    and prose, both studies) must be printed by a table script from the committed files (including
    the 2-epoch study's --facts) or be a value of a study config (eps, step, learning rate). It
    catches a number typed by hand or left stale; it does not check that the prose quotes a printed
    number in the right place."""
    old = ROOT / "results" / "fmnist" / "table.py"
    sources = [script_output(old, *args) for args in [(), ("--quick",), ("--compare",), ("--facts",)]]
    sources += [script_output(STUDY / "table.py", *table_args(root)) for root in ROOTS]
    sources += [p.read_text() for p in sorted((ROOT / "configs").glob("fmnist-study*/*.toml"))]
    known = set().union(*map(decimals, sources))
    stray = sorted(decimals((ROOT / "docs" / "RESULTS.md").read_text()) - known, key=float)
    assert not stray, f"docs/RESULTS.md quotes numbers no table script prints: {stray}"
