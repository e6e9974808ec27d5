"""`ancra analyze`: distance formulas, statistics, negative sampling, report parsing, end to end."""

import json
import math

import numpy as np
import pytest
import torch

from ancra import analysis
from ancra.analysis import (
    cosine_distance,
    extract_pair_features,
    l2_distance,
    per_class_stats,
    read_acc_vs_eps,
    sample_other_class,
    separation_auc,
    summarize_pairs,
)
from ancra.checkpoint import save_weights
from ancra.cli import COMMANDS, build_parser, cmd_analyze
from ancra.errors import UserError
from ancra.models import create_model


def parse(argv):
    return build_parser().parse_args(["analyze", *argv])


# --------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------


def test_distances_match_their_formula():
    a = torch.tensor([[1.0, 0.0], [1.0, 2.0], [3.0, 4.0], [1.0, 1.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 5.0], [2.0, 4.0], [0.0, 0.0], [-1.0, -1.0], [0.0, 0.0]])
    cos = cosine_distance(a, b)
    # orthogonal -> 1, same direction (scaled) -> 0, zero vector -> 1, opposite -> 2
    assert cos[0].item() == pytest.approx(1.0, abs=1e-7)
    assert cos[1].item() == pytest.approx(0.0, abs=1e-7)
    assert cos[2].item() == pytest.approx(1.0, abs=1e-7)
    assert cos[3].item() == pytest.approx(2.0, abs=1e-7)
    l2 = l2_distance(a, b)
    assert l2.tolist() == pytest.approx([math.sqrt(1 + 25), math.sqrt(1 + 4), 5.0, math.sqrt(8), 0.0])

    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(50, 16, generator=g, dtype=torch.float64), torch.randn(50, 16, generator=g, dtype=torch.float64)
    manual_cos = 1 - (x * z).sum(1) / (x.pow(2).sum(1).sqrt() * z.pow(2).sum(1).sqrt())
    manual_l2 = (x - z).pow(2).sum(1).sqrt()
    torch.testing.assert_close(cosine_distance(x, z), manual_cos)
    torch.testing.assert_close(l2_distance(x, z), manual_l2)
    assert cosine_distance(x, x).abs().max() < 1e-12 and l2_distance(x, x).abs().max() == 0


def test_per_class_stats_are_exact():
    values = np.array([1.0, 3.0, 2.0, 10.0, 20.0, 30.0, 40.0])
    labels = np.array([0, 0, 0, 2, 2, 2, 2])
    s = per_class_stats(values, labels, 3, ("a", "b", "c"))
    assert s["overall"]["count"] == 7 and s["overall"]["mean"] == pytest.approx(values.mean())
    c0, c1, c2 = (s["per_class"][k] for k in "012")
    assert (c0["name"], c0["mean"], c0["median"], c0["count"]) == ("a", 2.0, 2.0, 3)
    assert c0["std"] == pytest.approx(math.sqrt(2 / 3))  # population std of 1, 2, 3
    assert c1 == {"name": "b", "mean": None, "std": None, "median": None, "count": 0}
    assert (c2["mean"], c2["median"]) == (25.0, 25.0)
    assert c2["std"] == pytest.approx(math.sqrt(125.0))


def test_separation_auc():
    assert separation_auc([0.1, 0.2], [0.5, 0.9, 0.3]) == 1.0
    assert separation_auc([0.5, 0.9], [0.1, 0.2]) == 0.0
    assert separation_auc([0.4, 0.4], [0.4]) == 0.5
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 40).astype(float), rng.integers(1, 7, 30).astype(float)  # many ties
    brute = ((neg[None, :] > pos[:, None]) + 0.5 * (neg[None, :] == pos[:, None])).mean()
    assert separation_auc(pos, neg) == pytest.approx(brute)


def test_sample_other_class_is_other_class_and_uniform():
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 3])
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_other_class(y, g) for _ in range(4000)])  # (4000, 9)
    assert (y[draws] != y).all()
    # anchor 0 (class 0): the 6 examples of classes 1, 2, 3 are equally likely
    freq = torch.bincount(draws[:, 0], minlength=9).float() / 4000
    assert freq[[0, 1, 7]].sum() == 0
    assert torch.allclose(freq[[2, 3, 4, 5, 6, 8]], torch.full((6,), 1 / 6), atol=0.03)
    with pytest.raises(UserError):
        sample_other_class(torch.zeros(5, dtype=torch.long))


def test_read_acc_vs_eps_formats(tmp_path):
    def write(name, obj):
        p = tmp_path / name
        p.write_text(json.dumps(obj))
        return p

    # the format `ancra eval` writes (ancra.evaluation.sanity): {attack: {eps as "%g" string: acc}}
    r = read_acc_vs_eps(
        write(
            "eval.json",
            {
                "dataset": "fmnist",
                "eps": "1/10",
                "eps_value": 0.1,
                "sanity": {
                    "acc_vs_eps": {
                        "pgd": {"0": 0.8, "0.05": 0.6, "0.1": 0.4, "0.5": 0.0},
                        "adaptive": {"0": 0.8, "0.1": 0.3},
                    }
                },
            },
        )
    )
    assert set(r["curves"]) == {"pgd", "adaptive"} and r["eps_value"] == 0.1 and r["dataset"] == "fmnist"
    assert r["curves"]["pgd"][0].tolist() == [0, 0.05, 0.1, 0.5] and r["curves"]["pgd"][1].tolist() == [
        0.8,
        0.6,
        0.4,
        0,
    ]
    r = read_acc_vs_eps(
        write("a.json", {"dataset": "fmnist", "sanity": {"acc_vs_eps": {"acc": {"0.2": 0.1, "0": 0.9, "0.1": 0.5}}}})
    )
    eps, acc = r["curves"]["acc"]
    assert eps.tolist() == [0.0, 0.1, 0.2] and acc.tolist() == [0.9, 0.5, 0.1]  # sorted by eps
    r = read_acc_vs_eps(write("b.json", {"sanity": {"acc_vs_eps": {"acc": {"0": 0.8, "8/255": 0.4}}}}))
    assert r["curves"]["acc"][0].tolist() == pytest.approx([0.0, 8 / 255])
    r = read_acc_vs_eps(
        write("c.json", {"sanity": {"acc_vs_eps": {"pgd-20": {"0": 0.8, "0.1": 0.4}, "fgsm": {"0": 0.8, "0.1": 0.5}}}})
    )
    assert set(r["curves"]) == {"pgd-20", "fgsm"}
    with pytest.raises(UserError, match="no 'acc_vs_eps'"):
        read_acc_vs_eps(write("d.json", {"clean_acc": 0.9}))
    with pytest.raises(UserError, match="no 'acc_vs_eps'"):
        read_acc_vs_eps(write("f.json", {"sanity": {"acc_vs_eps": {}}}))
    with pytest.raises(UserError, match="no readable curve"):
        read_acc_vs_eps(write("e.json", {"sanity": {"acc_vs_eps": {"pgd": {"0.1": None}}}}))
    with pytest.raises(UserError, match="does not exist"):
        read_acc_vs_eps(tmp_path / "missing.json")


# --------------------------------------------------------------------------------------------
# Feature extraction and end to end on the real Fashion-MNIST
# --------------------------------------------------------------------------------------------


def tiny_model(ra_blocks, seed):
    torch.manual_seed(seed)
    return create_model("narrow_resnet", 10, 1, ra_blocks=ra_blocks, width=4, num_blocks=[1, 2]).eval()


def test_pairs_are_matched_to_their_anchors(fmnist):
    """With a vanishing eps, adversarial = natural: positive distances ~0 and the negative pairs
    equal the natural (anchor, negative) pairs, so rows and negative indices line up."""
    x, y = fmnist[2][:40], fmnist[3][:40]
    model = tiny_model(2, 0)
    neg_idx = sample_other_class(y, torch.Generator().manual_seed(0))
    pf = extract_pair_features(
        model, x, y, neg_idx, eps=1e-7, steps=2, batch_size=16, seed=0, device=torch.device("cpu")
    )
    assert pf.natural.shape == pf.adversarial.shape == pf.negative.shape == (40, 4 * 2)
    with torch.no_grad():
        ref = model.forward_with_aux(x)
    torch.testing.assert_close(pf.natural, ref.features)
    assert l2_distance(pf.natural, pf.adversarial).max() < 1e-3
    torch.testing.assert_close(pf.negative, pf.natural[neg_idx], atol=1e-4, rtol=1e-3)
    summary, raw = summarize_pairs(pf, y, neg_idx, 10, None)
    assert summary["distances"]["positive"]["cosine"]["overall"]["count"] == 40
    np.testing.assert_allclose(raw["negative"]["l2"], raw["negative_natural"]["l2"], atol=1e-3)
    assert summary["accuracy"]["adversarial"] == summary["accuracy"]["natural"]


def _is_nontrivial_png(path):
    import matplotlib.image as mpimg

    assert path.is_file(), path
    assert path.stat().st_size > 10_000, f"{path} is only {path.stat().st_size} bytes"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
    assert float(img[..., :3].std()) > 0.01, f"{path} is (nearly) constant"


def test_analyze_end_to_end(tmp_path, fmnist):
    pytest.importorskip("sklearn", reason="t-SNE needs scikit-learn (the 'analyze' extra)")
    meta = {"config": {"objective": {"eps": 0.1}, "data": {"dataset": "fmnist"}}}
    ra_run, plain_run = tmp_path / "ra-run", tmp_path / "plain-run"
    ra_run.mkdir()
    plain_run.mkdir()
    save_weights(tiny_model(2, 0), ra_run / "best.pt", meta=meta)
    save_weights(tiny_model(0, 1), plain_run / "last.pt", meta=meta)
    with open(ra_run / "metrics.jsonl", "w") as f:
        for e in range(4):
            f.write(
                json.dumps(
                    {
                        "epoch": e,
                        "lr": 0.05,
                        "loss": 2.0 - 0.3 * e,
                        "base_loss": 1.8 - 0.3 * e,
                        "anc_loss": 0.2 - 0.02 * e,
                        "nat_acc": 0.5 + 0.1 * e,
                        "adv_acc": 0.3 + 0.08 * e,
                        "neg_acc": 0.2,
                        "val_clean_acc": 0.55 + 0.09 * e,
                        "val_pgd_acc": 0.35 + 0.07 * e,
                        "epoch_s": 10.0,
                        "images_per_s": 500.0,
                    }
                )
                + "\n"
            )
    report = tmp_path / "eval" / "report.json"
    report.parent.mkdir()
    report.write_text(
        json.dumps(
            {
                "dataset": "fmnist",
                "eps": "1/10",
                "eps_value": 0.1,
                "clean_acc": 0.8,
                "sanity": {
                    "acc_vs_eps": {
                        "pgd": {"0": 0.8, "0.05": 0.6, "0.1": 0.4, "0.2": 0.15, "0.3": 0.03, "0.5": 0.0},
                        "adaptive": {"0": 0.8, "0.05": 0.5, "0.1": 0.3, "0.2": 0.05, "0.3": 0.0, "0.5": 0.0},
                    }
                },
            }
        )
    )
    out = tmp_path / "analysis"
    args = parse(
        [
            str(ra_run / "best.pt"),
            "--compare",
            str(plain_run / "last.pt"),
            "--out",
            str(out),
            "--n-examples",
            "64",
            "--steps",
            "3",
            "--batch-size",
            "32",
            "--reports",
            str(report),
            "--embedding",
            "tsne",
        ]
    )
    assert COMMANDS[args.command] is cmd_analyze
    assert cmd_analyze(args) == 0

    for name in ("distances", "embedding", "training_curves", "acc_vs_eps"):
        _is_nontrivial_png(out / f"{name}.png")
    data = json.loads((out / "analysis.json").read_text())
    assert data["settings"]["eps"] == 0.1 and data["settings"]["n_examples"] == 64
    assert data["settings"]["step_size"] == pytest.approx(0.025)
    assert data["plots"] == {k: f"{k}.png" for k in ("distances", "embedding", "training_curves", "acc_vs_eps")}
    assert data["runs"] == {"ra-run": str(ra_run)}  # found next to the checkpoint
    assert set(data["checkpoints"]) == {"ra-run/best.pt", "plain-run/last.pt"}
    counts = torch.bincount(fmnist[3][:64], minlength=10).tolist()
    for ckpt in data["checkpoints"].values():
        assert ckpt["feature_dim"] == 8
        for v in ckpt["accuracy"].values():
            assert 0 <= v <= 1
        for kind in ("positive", "negative"):
            for dist, hi in (("cosine", 2.0), ("l2", math.inf)):
                stats = ckpt["distances"][kind][dist]
                per_class = stats["per_class"]
                assert set(per_class) == {str(c) for c in range(10)}
                assert per_class["0"]["name"] == "T-shirt/top" and per_class["9"]["name"] == "Ankle boot"
                assert [per_class[str(c)]["count"] for c in range(10)] == counts
                assert sum(counts) == stats["overall"]["count"] == 64
                for s in [stats["overall"], *per_class.values()]:
                    for key in ("mean", "std", "median"):
                        assert math.isfinite(s[key]) and 0 <= s[key] <= hi + 1e-6
        for dist in ("cosine", "l2"):
            assert 0 <= ckpt["separation"][dist]["auc"] <= 1


def test_analyze_user_errors(tmp_path):
    model = tiny_model(0, 0)
    ckpt = tmp_path / "m.pt"
    save_weights(model, ckpt, meta={"config": {"data": {"dataset": "fmnist"}}})
    out = str(tmp_path / "o")
    cases = [
        ([str(tmp_path / "nope.pt"), "--out", out], "checkpoint .* does not exist"),
        ([str(ckpt), "--out", out, "--runs", str(tmp_path / "no-run")], "run directory .* does not exist"),
        ([str(ckpt), "--out", out, "--reports", str(tmp_path / "r.json")], "report .* does not exist"),
        ([str(ckpt), "--out", out, "--n-examples", "3"], "--n-examples"),
        ([str(ckpt), "--out", out, "--embedding", "tsne"], "no objective.eps"),
    ]
    for argv, match in cases:
        with pytest.raises(UserError, match=match):
            cmd_analyze(parse(argv))
    with pytest.raises(UserError, match="metrics.jsonl"):
        analysis.read_metrics(tmp_path)
