"""Robustness evaluation (docs/EVALUATION.md): the suite must expose gradient masking, not echo it.

Two models, built once per session on real Fashion-MNIST (tests/conftest.py):

* ``trained_small``: a narrow plain ResNet trained with CE; it must fall to ~0% under
  the reference AutoAttack and raise no masking flag.
* ``toy``: a deliberately gradient-masked, argmax-gated RA model. It has the same weights, with one
  RA block, but its logits are ``scale * onehot(argmax aux)`` (the CAS-like rule taken to the
  limit: the gate decides, and no gradient passes). Plain PGD must find it robust, the adaptive
  suite must break it, and the sanity checks must flag it.

Everything runs on the CPU in well under 4 minutes.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ancra.errors import UserError
from ancra.evaluation import (
    FAMILIES,
    DeployedValues,
    EvalConfig,
    RAView,
    apgd,
    evaluate,
    judged_pgd,
    load_per_example,
    merge_reports,
    run_adaptive,
    run_autoattack,
    run_family,
)
from ancra.evaluation.adaptive import Cascade, Spec, applicable
from ancra.evaluation.report import PER_EXAMPLE, eps_fraction
from ancra.evaluation.sanity import sanity_flags
from ancra.models import create_model

EPS = 0.1
N = 64
REPORT_KEYS = {
    "dataset",
    "threat_model",
    "eps",
    "architecture",
    "clean_acc",
    "attacks",
    "autoattack_acc",
    "worst_case_acc",
    "n_examples",
    "flags",
    "seed",
    "checkpoint_hash",
    "software",
    "timings",
    "diagnostics",
    "sanity",
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine, two OpenMP threads competing with other
    processes make small convolutions 20-80x slower (measured); one thread is steady."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def data(fmnist):
    return fmnist[2][:N], fmnist[3][:N]


@pytest.fixture(scope="module")
def std_report(trained_small, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_std")
    x, y = data
    report = evaluate(
        trained_small,
        x,
        y,
        suite="standard",
        eps=EPS,
        out_dir=out,
        batch_size=N,
        seed=0,
        progress=False,
        meta={"checkpoint_hash": "abc123"},
    )
    return report, out


@pytest.fixture(scope="module")
def toy_report(toy, trained_small, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_toy")
    x, y = data
    report = evaluate(
        toy,
        x,
        y,
        suite="full",
        eps=EPS,
        out_dir=out,
        batch_size=N,
        seed=0,
        quick=True,
        transfer_model=trained_small,
        progress=False,
    )
    return report, out


# ------------------------------------------------------------------------------------------------
# the two acceptance properties of docs/EVALUATION.md, "Sanity checks"
# ------------------------------------------------------------------------------------------------
def test_standard_trained_model_falls_to_zero_under_reference_autoattack(std_report):
    r, _ = std_report
    assert r["clean_acc"] > 0.6
    assert r["autoattack_acc"] <= 0.05
    assert r["autoattack"]["version"] == "standard"
    assert r["autoattack"]["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert r["worst_case_acc"] <= 0.05
    # a healthy model: no masking flag from the sanity checks
    codes = {f.split(":")[0] for f in r["flags"]}
    masking = {
        "eps_plateau",
        "unbounded_below_100",
        "fgsm_stronger_than_pgd",
        "pgd_above_clean",
        "zero_gradients",
        "aa_zero_gradients",
        "square_beats_whitebox",
    }
    assert not codes & masking, r["flags"]
    s = r["sanity"]
    assert s["unbounded_success"]["pgd"] == 1.0
    assert list(s["acc_vs_eps"]["pgd"].values())[-1] <= 0.02
    assert r["attacks"]["fgsm"]["acc"] >= r["attacks"]["pgd-20"]["acc"]


def test_masked_toy_looks_robust_to_pgd_and_the_adaptive_suite_breaks_it(toy_report):
    r, _ = toy_report
    a = r["attacks"]
    assert r["clean_acc"] > 0.6
    # the standard attacks are fooled by the zero gradient ...
    assert a["fgsm"]["acc"] == pytest.approx(r["clean_acc"])
    assert a["pgd-20"]["acc"] >= 0.5 and a["pgd-40"]["acc"] >= 0.5
    # ... the adaptive suite is not
    assert r["worst_case_acc"] <= 0.05
    assert a["pgd-20"]["acc"] - r["worst_case_acc"] >= 0.4
    assert r["autoattack_acc"] - r["worst_case_acc"] >= 0.3
    # and the sanity checks say so
    codes = {f.split(":")[0] for f in r["flags"]}
    for code in (
        "no_gradient_path",
        "zero_gradients",
        "eps_plateau",
        "unbounded_below_100",
        "autoattack_overestimates",
    ):
        assert code in codes, (code, r["flags"])
    assert r["sanity"]["unbounded_success"]["adaptive"] == 1.0
    assert r["sanity"]["unbounded_success"]["pgd"] < 1.0
    d = r["diagnostics"]
    assert d["zero_grad_fraction"] == 1.0
    assert d["final_vs_last_aux_agreement_clean"] == 1.0
    assert d["gate_flip_rate_among_successes"] == 1.0  # every success flips the gate
    # A7: RA off is the plain model, reported apart and not in the worst case
    assert r["ablation"]["a7-ra-off-pgd-20"] <= 0.05
    assert "a7-ra-off-pgd-20" not in r["worst_case_over"]
    assert "autoattack" in r["worst_case_over"] and "a1-pgd-sum" in r["worst_case_over"]


def test_real_ra_model_plain_pgd_overstates_and_the_suite_says_so(ra_trained, data, tmp_path):
    """The RA mechanism itself (hard gate, W-row masks) inflates plain PGD: the adaptive suite and
    AutoAttack find the truth and the sanity checks flag the PGD curve."""
    x, y = data
    r = evaluate(
        ra_trained, x, y, suite="adaptive", eps=EPS, out_dir=tmp_path, batch_size=N, quick=True, progress=False
    )
    a = r["attacks"]
    assert r["is_ra_model"] and r["clean_acc"] > 0.6
    assert r["worst_case_acc"] <= 0.1
    assert a["pgd-20"]["acc"] - r["worst_case_acc"] >= 0.25
    codes = {f.split(":")[0] for f in r["flags"]}
    assert {"eps_plateau", "unbounded_below_100"} & codes, r["flags"]
    assert r["diagnostics"]["final_vs_last_aux_agreement_clean"] >= 0.9  # the gate decides
    assert set(r["ablation"]) == {"a7-ra-off-clean", "a7-ra-off-pgd-20"}
    assert any(k.startswith("a5-") for k in r["worst_case_over"])


@pytest.mark.parametrize("family", ["a2", "a3", "a4", "a5"])
def test_each_adaptive_family_alone_breaks_the_toy(toy, data, family):
    x, y = data[0][:32], data[1][:32]
    results = run_family(family, toy, x, y, cfg=EvalConfig.make(EPS, quick=True, batch_size=32))
    clean_acc = (toy(x).argmax(1) == y).float().mean().item()
    assert results[-1].acc <= 0.1 < clean_acc
    survivors = toy(x).argmax(1) == y
    for r in results:  # every success is judged on the real model and lies in the eps-ball
        assert r.robust.dtype == torch.bool and r.robust.shape == (32,)
        assert (r.x_adv - x).abs().max() <= EPS + 1e-6
        assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
        # a cascade only attacks the survivors of the attacks before it; whether one of them
        # still fools something depends on the CPU's rounding, so that is not asserted
        fooled = ~r.correct  # the inputs this attack produced that fool the model
        assert not (fooled & ~survivors).any() and not (r.robust & ~survivors).any()
        assert r.robust.sum() + fooled.sum() == survivors.sum()
        assert (toy(r.x_adv[fooled]).argmax(1) != y[fooled]).all()
        survivors = r.robust


# ------------------------------------------------------------------------------------------------
# report consistency
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["std_report", "toy_report"])
def test_report_files_and_per_example_consistency(which, request):
    r, out = request.getfixturevalue(which)
    on_disk = json.loads((out / "report.json").read_text())
    assert REPORT_KEYS <= set(on_disk)
    assert on_disk["eps"] == "1/10" and on_disk["threat_model"] == "Linf" and on_disk["n_examples"] == N
    assert on_disk["software"]["pyautoattack"] == "0.2.0" and on_disk["software"]["torch"]
    for png in ("acc_vs_eps.png", "acc_vs_steps.png"):
        assert (out / png).stat().st_size > 10_000
    md = (out / "report.md").read_text()
    assert "| attack |" in md and "worst case" in md
    pe = load_per_example(out)["tensors"]
    clean = pe["clean"]
    worst = torch.stack([pe[f"robust/{k}"] for k in r["worst_case_over"]]).all(0)
    assert worst.float().mean().item() == pytest.approx(r["worst_case_acc"])
    for name, a in r["attacks"].items():
        rob = pe[f"robust/{name}"]
        assert rob.dtype == torch.bool and rob.shape == (N,)
        if a["group"] == "ablation":  # A7 judges another classifier (RA off): not comparable
            assert not a["in_worst_case"]
            continue
        assert not (rob & ~clean).any()  # never robust when misclassified clean
        if a["in_worst_case"]:
            assert not (worst & ~rob).any()  # worst case <= each attack, per example
        assert a["acc"] <= r["clean_acc"] + 1e-9
        assert a["seconds"] is not None
    assert r["worst_case_acc"] <= r["autoattack_acc"] <= r["clean_acc"]


def test_merge_of_shards_equals_the_single_run(toy_report, tmp_path):
    r, out = toy_report
    full = load_per_example(out)
    shard_dirs = []
    for i, sl in enumerate([slice(0, 24), slice(24, N)]):
        d = tmp_path / f"shard{i}"
        d.mkdir()
        torch.save(
            {
                "tensors": {k: v[sl] for k, v in full["tensors"].items()},
                "attacks": full["attacks"],
                "context": full["context"],
            },
            d / PER_EXAMPLE,
        )
        shard_dirs.append(d)
    merged = merge_reports(shard_dirs, tmp_path / "merged")
    assert merged["n_examples"] == N
    for key in ("clean_acc", "autoattack_acc", "worst_case_acc"):
        assert merged[key] == pytest.approx(r[key])
    for name in r["attacks"]:
        assert merged["attacks"][name]["acc"] == pytest.approx(r["attacks"][name]["acc"])
    assert (tmp_path / "merged" / "acc_vs_eps.png").exists()


# ------------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------------
def test_raview_gates_reproduce_the_real_model_and_its_label_masks(data):
    torch.manual_seed(0)
    m = create_model("narrow_resnet", 10, 1, ra_blocks=2, width=4).eval()
    x = data[0][:8]
    with torch.no_grad():
        ref = m.forward_with_aux(x)
        final, aux = RAView(m, "hard").heads(x)
        assert torch.allclose(final, ref.logits) and all(torch.allclose(a, b) for a, b in zip(aux, ref.aux_logits))
        assert torch.allclose(RAView(m, "bpda", temperature=0.5)(x), ref.logits)  # exact forward
        assert torch.allclose(RAView(m, "hard", output="aux1")(x), ref.aux_logits[1])
        t = torch.full((8,), 3)
        assert torch.allclose(RAView(m, "fixed", fixed_class=3)(x), m.forward_with_aux(x, t).logits, atol=1e-5)
        assert not torch.allclose(RAView(m, "soft", temperature=1.0)(x), ref.logits)
    # BPDA: same value as the hard gate, a different (non-zero) gradient
    grads = []
    for gate in ("hard", "bpda"):
        xg = x.clone().requires_grad_(True)
        RAView(m, gate, temperature=0.5)(xg).logsumexp(1).sum().backward()
        grads.append(xg.grad)
    assert grads[1].abs().sum() > 0
    assert (grads[0] - grads[1]).abs().sum() > 1e-3 * grads[1].abs().sum()
    assert not m.training


def test_adaptive_suite_runs_on_a_real_two_block_ra_model(data):
    torch.manual_seed(0)
    m = create_model("narrow_resnet", 10, 1, ra_blocks=2, width=4).eval()
    x, y = data[0][:8], data[1][:8]
    cfg = EvalConfig.make(EPS, True, batch_size=8, pgd_steps=2, apgd_iter=2, square_queries_ra=5)
    res = run_adaptive(m, x, y, alive=torch.ones(8, dtype=torch.bool), cfg=cfg)
    names = [r.name for r in res]
    for prefix in (
        "a1-pgd-sum",
        "a1-pgd-aux0",
        "a1-apgd-dlr-aux1",
        "a1-apgd-t-aux0",
        "a1-square-aux0",
        "a2-bpda-T0.1",
        "a3-soft-T0.1",
        "a4-branch-enum",
        "a5-true-label-masks",
        "a6-transfer-ra-off-twin",
        "a6-square",
    ):
        assert prefix in names
    prev = torch.ones(8, dtype=torch.bool)
    for r in res:  # a cascade: the robust set only shrinks
        assert r.robust.shape == (8,) and not (r.robust & ~prev).any()
        prev = r.robust
    assert not m.training


def test_plain_model_adaptive_suite_reduces_to_transfer_and_square(trained_small, toy, data):
    x, y = data[0][:16], data[1][:16]
    cfg = EvalConfig.make(EPS, True, batch_size=16, square_queries_plain=20, pgd_steps=3, apgd_iter=3)
    alive = trained_small(x).argmax(1) == y
    assert [r.name for r in run_adaptive(trained_small, x, y, alive=alive, cfg=cfg)] == ["a6-square"]
    res = run_adaptive(trained_small, x, y, alive=alive, cfg=cfg, transfer_model=toy)
    assert [r.name for r in res] == ["a6-transfer-model", "a6-square"]


def test_judged_pgd_keeps_only_inputs_that_fool_the_judge(trained_small, data):
    x, y = data[0][:16], data[1][:16]
    gen = torch.Generator().manual_seed(0)

    def objective(xa, idx):
        return F.cross_entropy(trained_small(xa), y[idx], reduction="none")

    found, fooled = judged_pgd(objective, trained_small, x, y, eps=EPS, steps=10, generator=gen)
    assert fooled.float().mean() > 0.8
    with torch.no_grad():
        assert (trained_small(found[fooled]).argmax(1) != y[fooled]).all()
    assert torch.equal(found[~fooled], x[~fooled])
    assert (found - x).abs().max() <= EPS + 1e-6


def test_autoattack_reuses_finished_runs_and_restarts_interrupted_ones(trained_small, data, tmp_path):
    x, y = data[0][:16], data[1][:16]
    kw = dict(eps=EPS, quick=True, batch_size=16, out_dir=tmp_path, name="aa")
    first = run_autoattack(trained_small, x, y, **kw)
    assert first.info["resumed"] is None and first.info["version"] == "custom"
    again = run_autoattack(trained_small, x, y, **kw)
    assert again.info["resumed"] == "finished run reused" and torch.equal(again.robust, first.robust)
    # an interrupted run (AutoAttack's own state says APGD-T has not run yet) is restarted, not
    # resumed: a resumed run would return no inputs for the examples broken before the stop
    (state,) = tmp_path.glob("aa_state_*.json")
    for p in tmp_path.glob("aa_result_*.pt"):
        p.unlink()
    d = json.loads(state.read_text())
    d["_run_attacks"] = ["apgd-ce"]
    state.write_text(json.dumps(d))
    redone = run_autoattack(trained_small, x, y, **kw)
    assert redone.info["resumed"].startswith("interrupted run restarted")
    assert torch.equal(redone.robust, first.robust)
    broken = ~redone.correct
    assert broken.any() and (trained_small(redone.x_adv[broken]).argmax(1) != y[broken]).all()


def test_sanity_flags_on_synthetic_results():
    n = 100
    clean = torch.zeros(n, dtype=torch.bool)
    clean[:80] = True
    fg = torch.zeros(n, dtype=torch.bool)
    fg[:10] = True  # FGSM 10% < PGD 40%: single step stronger than iterative
    pg = torch.zeros(n, dtype=torch.bool)
    pg[:40] = True
    pg_raw = torch.ones(n, dtype=torch.bool)  # 100% correct on PGD inputs > 80% clean
    pe = {
        "clean": clean,
        "robust/clean": clean,
        "correct/clean": clean,
        "robust/fgsm": fg,
        "correct/fgsm": fg,
        "robust/pgd-20": pg,
        "correct/pgd-20": pg_raw,
        "curve/eps/pgd/0.1": pg,
        "curve/eps/pgd/0.5": pg,
        "unbounded/pgd": pg_raw,
    }
    meta = {
        k: {"group": "standard", "kind": "whitebox", "in_worst_case": True, "info": {}}
        for k in ("clean", "fgsm", "pgd-20")
    }
    flags, _ = sanity_flags(pe, meta, eps=0.1)
    codes = {f.split(":")[0] for f in flags}
    assert {"fgsm_stronger_than_pgd", "pgd_above_clean", "eps_plateau", "unbounded_below_100"} <= codes
    healthy = dict(
        pe,
        **{
            "robust/fgsm": pg,
            "correct/pgd-20": pg,
            "curve/eps/pgd/0.5": torch.zeros(n, dtype=torch.bool),
            "unbounded/pgd": torch.zeros(n, dtype=torch.bool),
        },
    )
    assert sanity_flags(healthy, meta, eps=0.1)[0] == []


def test_eps_fraction_and_bad_inputs(trained_small, data, tmp_path):
    assert eps_fraction(0.1) == "1/10" and eps_fraction(8 / 255) == "8/255" and eps_fraction(0.3) == "3/10"
    x, y = data[0][:4], data[1][:4]
    with pytest.raises(UserError, match="suite"):
        evaluate(trained_small, x, y, suite="nope", eps=EPS, out_dir=tmp_path, progress=False)
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        evaluate(trained_small, x * 255, y, eps=EPS, out_dir=tmp_path, progress=False)
    with pytest.raises(UserError, match="eps"):
        evaluate(trained_small, x, y, eps=0.0, out_dir=tmp_path, progress=False)


def test_restart_flag_says_what_was_measured():
    """restarts_keep_dropping compares PGD-20 from one start with the worst case over all starts,
    and its text says how many starts that was (not "a second restart")."""
    from ancra.evaluation.sanity import RESTARTS_KEY, STEPS_KEY, sanity_flags

    n = 400
    one_start = torch.arange(n) < 300  # PGD-20: 75%
    worst_of_five = torch.arange(n) < 280  # 70% over 5 starts
    pe = {"clean": torch.ones(n, dtype=torch.bool), f"{STEPS_KEY}/20": one_start, f"{RESTARTS_KEY}/5": worst_of_five}
    flags, _ = sanity_flags(pe, {}, eps=0.1)
    (flag,) = [f for f in flags if f.startswith("restarts_keep_dropping")]
    assert "75.0% from one random start -> 70.0%" in flag and "over 5 random starts (the first + 4 more)" in flag
    pe[f"{RESTARTS_KEY}/5"] = one_start.clone()  # no drop: no flag
    assert not any(f.startswith("restarts_keep_dropping") for f in sanity_flags(pe, {}, eps=0.1)[0])


# ------------------------------------------------------------------------------------------------
# evaluation v2: bookkeeping on the deployed model, the cascade's own checks, the registry
# ------------------------------------------------------------------------------------------------
def test_deployed_values_carry_the_deployed_output_and_the_surrogate_gradient(data):
    torch.manual_seed(0)
    m = create_model("narrow_resnet", 10, 1, ra_blocks=2, width=4).eval()
    x = data[0][:8]
    w = torch.randn(8, 10)
    for view in (RAView(m, "hard", output="aux0"), RAView(m, "soft", temperature=0.5)):
        dv = RAView(m, view.gate, temperature=view.temperature, output=view.output, deployed_values=True)
        xg = x.clone().requires_grad_(True)
        out = dv(xg)
        assert torch.allclose(out, m(x), atol=1e-6)  # values: the deployed model's
        (g_dv,) = torch.autograd.grad((out * w).sum(), xg)
        xg = x.clone().requires_grad_(True)
        (g_view,) = torch.autograd.grad((view(xg) * w).sum(), xg)
        assert torch.allclose(g_dv, g_view, atol=1e-6) and g_view.abs().sum() > 0  # gradient: the view's
    src = create_model("narrow_resnet", 10, 1, width=4)
    dv = DeployedValues(src.eval(), m)
    assert torch.allclose(dv(x), m(x), atol=1e-6) and not dv.training


def test_apgd_on_a_surrogate_attacks_the_examples_the_surrogate_already_gets_wrong(trained_small, data):
    """The reference APGD skips examples its own model misclassifies and keeps the iterates that fool
    it. On a surrogate that is wrong where the deployed model is right, those examples were never
    attacked; with the deployed model's values they are attacked and judged on the deployed model."""
    import copy

    # the same network with a bias that makes it say "class 0" everywhere: same gradients, wrong decisions
    surrogate = copy.deepcopy(trained_small)
    with torch.no_grad():
        surrogate.classifier.bias[0] += 100.0
    x, y = data
    with torch.no_grad():
        right = (trained_small(x).argmax(1) == y) & (surrogate(x).argmax(1) != y)
    assert right.sum() >= 20
    plain = apgd(surrogate, x, y, eps=EPS, n_iter=10, batch_size=N)
    assert torch.equal(plain[right], x[right])  # never attacked
    booked = apgd(DeployedValues(surrogate, trained_small), x, y, eps=EPS, n_iter=10, batch_size=N)
    with torch.no_grad():
        fooled = trained_small(booked).argmax(1) != y
    assert fooled[right].float().mean() > 0.8  # attacked, and kept where the deployed model is fooled
    assert (booked - x).abs().max() <= EPS + 1e-6


def test_the_cascade_refuses_inputs_outside_the_ball(trained_small, data):
    x, y = data[0][:16], data[1][:16]
    cfg = EvalConfig.make(EPS, quick=True, batch_size=16)
    alive = trained_small(x).argmax(1) == y
    cas = Cascade(trained_small, x, y, alive, cfg)
    with pytest.raises(RuntimeError, match="outside the eps-ball"):
        cas.run(Spec("bad", "whitebox", lambda xs, ys: [(1 - xs)]))  # fools, but far outside the ball


def test_registry_of_adaptive_families(trained_small, toy, data):
    assert list(FAMILIES) == ["a1", "a2", "a3", "a4", "a5", "a6"]
    assert [f.key for f in applicable(toy)] == list(FAMILIES)
    assert [f.key for f in applicable(trained_small)] == ["a6"]
    with pytest.raises(ValueError, match="needs an RA model"):
        run_family("a1", trained_small, data[0][:4], data[1][:4], cfg=EvalConfig.make(EPS, quick=True))
    with pytest.raises(UserError, match="unknown evaluation setting"):
        evaluate(toy, data[0][:4], data[1][:4], eps=EPS, out_dir="unused", pgd_stepz=3)


def test_standalone_families_on_every_clean_correct_example(toy, trained_small, data, tmp_path):
    x, y = data[0][:32], data[1][:32]

    def standalone(sl, out_dir):
        return evaluate(
            toy,
            x[sl],
            y[sl],
            suite="adaptive",
            eps=EPS,
            out_dir=out_dir,
            batch_size=32,
            quick=True,
            standalone=True,
            transfer_model=trained_small,
            progress=False,
        )

    r = standalone(slice(0, 32), tmp_path)
    fams = {k: v for k, v in r["attacks"].items() if v["group"] == "standalone"}
    assert set(fams) == {f"standalone-{k}" for k in FAMILIES}
    for name, v in fams.items():
        assert not v["cascade"] and name in r["worst_case_over"]
        assert r["worst_case_acc"] <= v["acc"] <= r["clean_acc"]
    # the gate attacks alone break the toy (its aux head is a plain, non-robust model)
    assert fams["standalone-a1"]["acc"] <= 0.1
    pe = load_per_example(tmp_path)["tensors"]
    assert torch.equal(pe["robust/standalone-a1"], pe["correct/standalone-a1"])
    adv = torch.load(tmp_path / "adversarial.pt", weights_only=True)
    assert len(adv["index"]) == round(32 * (r["clean_acc"] - r["worst_case_acc"]))
    # chunks merge: the standalone families' per-attack break counts add up
    halves = [standalone(sl, tmp_path / f"chunk-{i}") for i, sl in enumerate((slice(0, 16), slice(16, 32)))]
    merged = merge_reports([tmp_path / "chunk-0", tmp_path / "chunk-1"], tmp_path / "merged")
    for name in fams:
        broken = merged["attacks"][name]["info"]["broken"]
        assert broken and all(
            n == sum(h["attacks"][name]["info"]["broken"][a] for h in halves) for a, n in broken.items()
        )
        assert merged["attacks"][name]["acc"] == pytest.approx(sum(h["attacks"][name]["acc"] for h in halves) / 2)


def test_per_example_files_are_packed_and_read_back_exactly(tmp_path):
    """per_example.pt stacks its tensors by dtype and shape (booleans as bits): the same tensors,
    dtypes and order come back, at a fraction of one file entry per tensor; files written before
    the packing still load; a packed file with a damaged group is refused in one line."""
    from ancra.checkpoint import atomic_save
    from ancra.evaluation.report import pack_tensors

    g = torch.Generator().manual_seed(0)
    pe = {f"robust/a{i}": torch.rand(101, generator=g) < 0.5 for i in range(60)}  # 101: not a multiple of 8
    pe |= {"labels": torch.randint(10, (101,), generator=g), "gates": torch.randint(3, (101, 2), generator=g) > 0}
    pe |= {f"diag/{i}": torch.randn(101, generator=g, dtype=torch.float64) for i in range(5)}
    rest = {"attacks": {"a0": {"acc": 0.5}}, "context": {"eps": 0.1}}
    atomic_save(rest | pack_tensors(pe), tmp_path / "packed.pt")
    atomic_save(rest | {"tensors": pe}, tmp_path / "plain.pt")
    for name in ("packed.pt", "plain.pt"):
        back = load_per_example(tmp_path / name)
        assert list(back["tensors"]) == list(pe) and back["attacks"] == rest["attacks"]
        for k, v in pe.items():
            assert back["tensors"][k].dtype == v.dtype and torch.equal(back["tensors"][k], v), k
    assert (tmp_path / "packed.pt").stat().st_size * 2 < (tmp_path / "plain.pt").stat().st_size  # measured: 3x
    damaged = rest | pack_tensors(pe)
    damaged["groups"][0]["data"] = damaged["groups"][0]["data"][:3]
    atomic_save(damaged, tmp_path / "damaged.pt")
    with pytest.raises(UserError, match="not an evaluation's per-example file"):
        load_per_example(tmp_path / "damaged.pt")
