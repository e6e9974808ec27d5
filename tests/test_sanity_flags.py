"""Sanity flags that can see masking (docs/EVALUATION.md, "Sanity checks"): per-gate flips, the
blind-gradient probe, shoulders and plateaus along the eps curve, and AutoAttack's Square and own
checks kept apart from ours.

Models, trained once per session on real Fashion-MNIST (tests/conftest.py) (about 25 s on one thread in all): a plain
narrow ResNet (``trained_small`` of conftest), the argmax-gated ``toy`` of conftest
(the same weights, logits ``10 * onehot(argmax aux)``: no gradient at all) and a real RANet with 2
RA blocks trained naturally (``ra_trained``).
"""

from __future__ import annotations

import pytest
import torch

from ancra.evaluation.common import predict, with_grad_path
from ancra.evaluation.diagnostics import BLIND_KEY, GATE_FLIP_KEY, a8_diagnostics, blind_gradient
from ancra.evaluation.report import build_report, diagnostics, to_markdown
from ancra.evaluation.sanity import (
    EPS_KEY,
    autoattack_own_checks,
    eps_curve_flags,
    flag_code,
    flat_stretches,
    sanity_flags,
)
from ancra.models import create_model

EPS = 0.1
N = 64
GRID = [0.025, 0.05, 0.1, 0.2, 0.3, 0.5]  # the F-MNIST sweep at eps 0.1


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def data(fmnist):
    return fmnist[2][:N], fmnist[3][:N]


def codes(flags):
    return [flag_code(f) for f in flags]


# ------------------------------------------------------------------------------------------------
# 1. gate flips per gate
# ------------------------------------------------------------------------------------------------
def _own_gate_flips(model, x, x_adv):
    """Per-block gate flips from the model's own forward (not through RAView)."""
    with torch.no_grad():
        clean, adv = model.forward_with_aux(x).aux_logits, model.forward_with_aux(x_adv).aux_logits
    return [c.argmax(1) != a.argmax(1) for c, a in zip(clean, adv)]


def _interpolate_until_wrong(model, x, y):
    """Handmade adversarial inputs: move each example towards a test image the model puts in
    another class, in steps of 5%, and keep the first point where the prediction changes."""
    pred = predict(model, x, N)
    target = torch.tensor([int(((pred != pred[i]) & (pred != y[i])).nonzero()[0]) for i in range(N)])
    x_adv, found = x.clone(), torch.zeros(N, dtype=torch.bool)
    for t in torch.linspace(0, 1, 21)[1:]:
        xt = (1 - t) * x + t * x[target]
        new = ~found & (predict(model, xt, N) != pred)
        x_adv[new], found = xt[new], found | new
    return x_adv, found & (pred == y)


def test_gate_flips_are_stored_and_reported_per_gate(ra_trained, data):
    """On the trained RA model every success flips both gates: the first gate already decides the
    class (measured: gate 0 = gate 1 = final class on 1000 test images), the last repeats it."""
    x, y = data
    x_adv, has_adv = _interpolate_until_wrong(ra_trained, x, y)
    assert has_adv.sum() >= 40
    d = a8_diagnostics(ra_trained, x, y, x_adv, has_adv, batch_size=N)
    for i, own in enumerate(_own_gate_flips(ra_trained, x, x_adv)):
        flip = d[f"{GATE_FLIP_KEY}/{i}"]
        assert flip.dtype == torch.bool and flip.shape == (N,) and torch.equal(flip, own)
    assert "diag/gate_flip" not in d  # the any-gate tensor is derived, not stored
    assert all(v.shape == (N,) for v in d.values())  # what merge_reports concatenates
    s = diagnostics({"clean": predict(ra_trained, x, N) == y, **d})
    assert s["gate_flip_rate_among_successes_by_gate"] == {"gate 0": 1.0, "gate 1": 1.0}
    assert s["gate_flip_rate_among_successes"] == 1.0
    assert "gate 1 (the last) flips by construction" in s["gate_flip_note"]
    md = to_markdown(_minimal_report(diagnostics=s))
    assert "gate_flip_rate_among_successes_by_gate: gate 0=1, gate 1=1" in md


def test_gate_flip_rates_differ_per_gate_when_the_gates_do(data):
    """An untrained 2-block RA net (seed 0) whose first gate moves between test images while its
    last one stays: the per-gate rates tell them apart; old reports keep their any-gate rate."""
    torch.manual_seed(0)
    m = create_model("narrow_resnet", 10, 1, ra_blocks=2, width=8).eval()
    x, y = data
    x_adv = x.flip(0)  # another test image for each example
    has_adv = torch.arange(N) % 2 == 0
    d = a8_diagnostics(m, x, y, x_adv, has_adv, batch_size=N)
    own = _own_gate_flips(m, x, x_adv)
    assert all(torch.equal(d[f"{GATE_FLIP_KEY}/{i}"], own[i]) for i in range(2))
    s = diagnostics({"clean": torch.ones(N, dtype=torch.bool), **d})
    rates = s["gate_flip_rate_among_successes_by_gate"]
    assert rates["gate 0"] == pytest.approx(own[0][has_adv].float().mean().item())
    assert rates["gate 1"] == pytest.approx(own[1][has_adv].float().mean().item())
    assert rates["gate 0"] != rates["gate 1"]
    assert s["gate_flip_rate_among_successes"] == pytest.approx((own[0] | own[1])[has_adv].float().mean().item())
    # reports written before per-gate flips: only the any-gate tensor
    old = {k: v for k, v in d.items() if not k.startswith(GATE_FLIP_KEY)} | {"diag/gate_flip": own[0] | own[1]}
    legacy = diagnostics({"clean": torch.ones(N, dtype=torch.bool), **old})
    assert "gate_flip_rate_among_successes_by_gate" not in legacy
    assert legacy["gate_flip_rate_among_successes"] == s["gate_flip_rate_among_successes"]


def _minimal_report(**kw) -> dict:
    r = {
        "dataset": "fmnist",
        "eps": "1/10",
        "n_examples": N,
        "suite": "standard",
        "seed": 0,
        "clean_acc": 0.8,
        "autoattack_acc": None,
        "worst_case_acc": 0.5,
        "worst_case_over": [],
        "attacks": {},
        "flags": [],
    }
    return r | kw


# ------------------------------------------------------------------------------------------------
# 2. blind gradients
# ------------------------------------------------------------------------------------------------
def _probe(model, x, y):
    grad_model, _ = with_grad_path(model, x)
    clean = predict(model, x, N) == y
    pe = {
        "clean": clean,
        **a8_diagnostics(model, x, y, x, torch.zeros(N, dtype=torch.bool), grad_model=grad_model, eps=EPS),
    }
    flags, summary = sanity_flags(pe, {}, eps=EPS)
    return pe, flags, summary


def test_blind_gradient_fires_on_the_toy_not_on_the_plain_model(toy, trained_small, data):
    x, y = data
    pe, flags, summary = _probe(toy, x, y)
    blind, changed = blind_gradient(pe)
    clean = pe["clean"]
    assert blind[clean].all()  # zero gradient: nothing predicted, probed along random signs
    assert changed[clean].any()  # ... and the class changes there all the same
    assert summary["blind_gradient_fraction"] == pytest.approx(clean.float().mean().item())
    (line,) = [f for f in flags if f.startswith("blind_gradient:")]
    assert f"{int(clean.sum())} of the {N} examples" in line

    pe, flags, summary = _probe(trained_small, x, y)
    assert summary["blind_gradient_fraction"] == 0.0 and "blind_gradient" not in codes(flags)
    # the healthy gradient predicts the deployed CE at the smallest step: actual / predicted near 1
    smallest = min(k.split("/")[2] for k in pe if k.startswith(BLIND_KEY))
    ratio = pe[f"{BLIND_KEY}/{smallest}/actual"] / pe[f"{BLIND_KEY}/{smallest}/predicted"]
    assert 0.8 < ratio[pe["clean"]].median() < 2.0


def test_blind_gradient_fires_on_a_real_ra_model(ra_trained, data):
    """Measured: 42 of the 48 clean-correct examples (87.5%), every one with a float32 CE of exactly 0."""
    x, y = data
    pe, flags, summary = _probe(ra_trained, x, y)
    blind = blind_gradient(pe)[0] & pe["clean"]
    assert summary["blind_gradient_fraction"] >= 0.5
    assert pe["diag/ce_saturated"][blind].float().mean() >= 0.9  # the softmax is saturated there
    assert "blind_gradient" in codes(flags)
    assert diagnostics(pe)["blind_gradient_saturated_ce"] >= 0.9


def test_diagnostics_of_shards_concatenate_to_the_whole_run(ra_trained, data):
    """What merge_reports relies on: every diag tensor is per example, so two shards' tensors,
    concatenated, are the single run's (a model with non-zero gradients: no random directions)."""
    x, y = data
    x_adv, has_adv = x.flip(0), torch.ones(N, dtype=torch.bool)
    whole = a8_diagnostics(ra_trained, x, y, x_adv, has_adv, batch_size=N, eps=EPS)
    parts = [
        a8_diagnostics(ra_trained, x[s], y[s], x_adv[s], has_adv[s], eps=EPS) for s in (slice(0, 24), slice(24, N))
    ]
    assert set(parts[0]) == set(whole) and any(k.startswith(BLIND_KEY) for k in whole)
    for k, v in whole.items():
        assert torch.allclose(torch.cat([p[k] for p in parts]).double(), v.double(), rtol=1e-4, atol=1e-6), k


# ------------------------------------------------------------------------------------------------
# 3. along the eps curve
# ------------------------------------------------------------------------------------------------
def curve_pe(n: int, curves: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Per-example tensors of a sweep on :data:`GRID`: ``k`` correct examples at each eps."""
    pe = {"clean": torch.ones(n, dtype=torch.bool)}
    for atk, counts in curves.items():
        for e, k in zip(GRID, counts):
            pe[f"{EPS_KEY}/{atk}/{e:g}"] = torch.arange(n) < k
    return pe


def curve_codes(n, curves):
    return codes(sanity_flags(curve_pe(n, curves), {}, eps=EPS)[0])


@pytest.mark.parametrize(
    "counts, expected",
    [
        ([160, 159, 158, 4, 1, 0], set()),  # adversarially trained: flat up to eps, gone at 2 eps
        ([160, 150, 120, 40, 10, 0], set()),  # plain decay
        ([160, 160, 160, 160, 159, 150], {"eps_curve_plateau", "eps_plateau"}),  # never falls
        ([160, 160, 160, 160, 20, 0], {"eps_shoulder"}),  # holds to 2 eps, then collapses
        ([160, 160, 160, 159, 100, 60], {"eps_curve_plateau", "eps_plateau"}),  # holds, then a slow fall
    ],
)
def test_eps_curve_shapes(counts, expected):
    found = set(curve_codes(200, {"pgd": counts})) & {"eps_curve_plateau", "eps_shoulder", "eps_plateau"}
    assert found == expected


def test_eps_curve_rules_are_those_documented():
    tol, floor = 1 / 64 + 1e-9, 1 / 64 + 1e-9  # 64 examples: one example is noise
    # one example lost over 0.1 -> 0.2 is noise: flat; two are not
    assert flat_stretches(GRID, [0.5, 0.5, 0.5, 31 / 64, 0.3, 0.2], eps=EPS, tol=tol, floor=floor) == [
        (0, 3),
        (1, 3),
        (2, 3),
    ]
    assert flat_stretches(GRID, [0.5, 0.5, 0.5, 30 / 64, 0.3, 0.2], eps=EPS, tol=tol, floor=floor) == []
    # 0.2 -> 0.3 is flat but no doubling; 0.025 -> 0.05 doubles but stays below the budget
    assert flat_stretches(GRID, [0.9, 0.9, 0.6, 0.3, 0.3, 0.0], eps=EPS, tol=tol, floor=floor) == []
    # flat at ~0 is no plateau
    assert flat_stretches(GRID, [0.5, 0.3, 0.1, 1 / 64, 1 / 64, 0.0], eps=EPS, tol=tol, floor=floor) == []
    # the shoulder says where the curve broke; the plateau how far it stayed flat
    (shoulder,) = eps_curve_flags({"pgd": dict(zip(GRID, [0.8, 0.8, 0.8, 0.8, 0.1, 0.0]))}, eps=EPS, n=200)
    assert shoulder.startswith("eps_shoulder: pgd accuracy holds at 80.0% -> 80.0% from eps=0.025 to eps=0.2")
    assert "then falls to 10.0% at eps=0.3" in shoulder
    (plateau,) = eps_curve_flags({"pgd": dict(zip(GRID, [0.8, 0.8, 0.8, 0.8, 0.8, 0.8]))}, eps=EPS, n=200)
    assert "from eps=0.025 to eps=0.5 (eps x20" in plateau


def test_eps_curve_gap_between_the_curves_of_one_sweep():
    masked = {"pgd": [160, 158, 150, 80, 60, 40], "adaptive": [156, 140, 120, 4, 0, 0]}
    (gap,) = [f for f in sanity_flags(curve_pe(200, masked), {}, eps=EPS)[0] if "gap" in f]
    assert gap.startswith(
        "eps_curve_gap: at eps=0.2 the pgd curve is at 40.0%, more than twice the adaptive curve's 2.0%"
    )
    close = {"pgd": [160, 158, 150, 10, 2, 0], "adaptive": [158, 156, 148, 8, 0, 0]}
    assert "eps_curve_gap" not in curve_codes(200, close)
    # near 0 a factor two is noise: 3 examples against 1 of 200
    assert "eps_curve_gap" not in curve_codes(
        200, {"pgd": [160, 150, 120, 3, 0, 0], "adaptive": [160, 150, 120, 1, 0, 0]}
    )


# ------------------------------------------------------------------------------------------------
# 4. AutoAttack's Square and own checks apart from ours
# ------------------------------------------------------------------------------------------------
def _aa_line(msg: str, times: int = 1, shard: int | None = None) -> str:
    line = f"aa_square_beats_whitebox: AutoAttack check on autoattack: {msg}"
    line += f" (warned {times} times)" if times > 1 else ""
    return line + (f" [shard {shard}]" if shard is not None else "")


def test_square_flags_are_distinct_and_autoattack_checks_have_their_own_section():
    n = 200
    clean = torch.arange(n) < 160
    survived = torch.arange(n) < 100
    pe = {
        "clean": clean,
        "robust/clean": clean,
        "correct/clean": clean,
        "robust/autoattack": survived,
        "correct/autoattack": survived | ~clean,
        "robust/a6-square": torch.arange(n) < 95,
        "correct/a6-square": ~((torch.arange(n) >= 95) & survived),
    }
    std = {"group": "standard", "kind": "whitebox", "in_worst_case": True, "seconds": 1.0}
    aa_flags = [_aa_line("Square decreased the robust accuracy of 2.00%.", 2, 0), _aa_line("... of 1.00%.", 1, 1)]
    attacks = {
        "clean": {**std, "kind": "clean", "info": {}},
        "autoattack": {**std, "info": {"perturbed": {"apgd-ce": 50, "square": 3}, "flags": aa_flags}},
        "a6-square": {
            **std,
            "group": "adaptive",
            "kind": "blackbox",
            "cascade": True,
            "info": {"broken": 5, "attacked": 100},
        },
    }
    report = build_report(pe, attacks, {"eps": EPS, "dataset": "fmnist", "software": {"ancra": "test"}})
    flags = report["flags"]
    assert sorted(c for c in codes(flags) if "square" in c) == [  # one line each
        "aa_square_beats_whitebox",
        "autoattack_square_beats_its_whitebox",
        "square_beats_whitebox",
    ]
    ours = next(f for f in flags if f.startswith("square_beats_whitebox:"))
    theirs = next(f for f in flags if f.startswith("autoattack_square_beats_its_whitebox:"))
    logged = next(f for f in flags if f.startswith("aa_"))
    assert "a6-square broke 5 of the 100" in ours
    assert "AutoAttack's Square broke 3 examples" in theirs
    assert (
        "3 warning(s) (autoattack: 3;" in logged and "first: Square decreased the robust accuracy of 2.00%." in logged
    )

    md = to_markdown(report)
    flags_part, rest = md.split("## Flags", 1)[1].split("## AutoAttack's own checks", 1)
    assert ours in flags_part and theirs in flags_part and logged not in flags_part
    assert logged in rest.split("##", 1)[0]
    # reports written before the split: AutoAttack's Square line is recognised by its text
    old = "square_beats_whitebox: AutoAttack's Square broke 12 examples that survived APGD-CE/APGD-T/FAB-T"
    assert flag_code(old) == "autoattack_square_beats_its_whitebox" and flag_code(ours) == "square_beats_whitebox"


def test_autoattack_checks_are_grouped_per_code():
    attacks = {
        "autoattack": {"info": {"flags": [_aa_line("a", shard=i) for i in range(3)]}},
        "a2-autoattack-bpda-T1": {
            "info": {"flags": ["aa_zero_gradients: AutoAttack check on a2-autoattack-bpda-T1: zero grad"]}
        },
    }
    lines = autoattack_own_checks(attacks)
    assert codes(lines) == ["aa_square_beats_whitebox", "aa_zero_gradients"]
    assert "3 warning(s) (autoattack: 3;" in lines[0] and "1 warning(s) (a2-autoattack-bpda-T1: 1;" in lines[1]
    assert autoattack_own_checks({"clean": {"info": {}}}) == []
