"""`ancra eval` end to end on a trained checkpoint: one process, torchrun shards, resumable chunks, user errors."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ancra.cli import main
from ancra.evaluation import load_per_example
from ancra.evaluation.checkpoint import SELECTION_RULES

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
N = 48


def _eval_cmd(ckpt, out, *extra):
    return [
        "-m",
        "ancra",
        "eval",
        str(ckpt),
        "--suite",
        "standard",
        "--quick",
        "--n-examples",
        str(N),
        "--batch-size",
        "16",
        "--out",
        str(out),
        *extra,
    ]


def _torchrun(ckpt, out, *extra, **env_extra):
    """`ancra eval` under torchrun with 2 CPU processes, one thread each."""
    cmd = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += _eval_cmd(ckpt, out, "--device", "cpu", *extra)
    env = dict(os.environ, OMP_NUM_THREADS="1", **env_extra)
    return subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env=env, timeout=600)


def _verify(report_dir, *extra):
    return subprocess.run(
        [sys.executable, "-m", "ancra", "verify", str(report_dir), *extra], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("evalrun") / "run"
    # best.pt = the last epoch: the smoke run's first epoch is a near-constant predictor that a
    # validation rule may prefer, and nothing would be left to break
    cmd = ["train", "--quiet", "--config", str(CONFIGS / "smoke.toml"), "--set", "train.select=last"]
    assert main([*cmd, "--out", str(out)]) == 0
    return out / "best.pt"


@pytest.fixture(scope="module")
def single(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval1") / "report"
    r = subprocess.run([sys.executable, *_eval_cmd(checkpoint, out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_report_fields_and_table(single):
    out, r = single
    rep = json.loads((out / "report.json").read_text())
    assert rep["n_examples"] == N and rep["eps"] == "1/10" and rep["dataset"] == "fmnist"
    assert rep["checkpoint_hash"].startswith("sha256:") and rep["quick"] is True
    # best.pt: the report names the rule the run selected it by
    assert rep["meta"]["model_selection"] == SELECTION_RULES["last"]
    accs = {k: v["acc"] for k, v in rep["attacks"].items()}
    for name in ("clean", "fgsm", "pgd-20", "pgd-40", "cw-30", "autoattack"):
        assert name in accs, accs
        assert rep["worst_case_acc"] <= accs[name] <= rep["clean_acc"] + 1e-9
    assert "worst case" in r.stdout and str(out / "report.md") in r.stdout
    for f in ("report.md", "acc_vs_eps.png", "acc_vs_steps.png"):
        assert (out / f).stat().st_size > 0


def test_torchrun_shards_merge_to_the_single_process_result(checkpoint, single, tmp_path):
    out = tmp_path / "sharded"
    r = _torchrun(checkpoint, out)
    assert r.returncode == 0, r.stderr[-3000:]
    one = load_per_example(single[0] / "per_example.pt")["tensors"]
    two = load_per_example(out / "per_example.pt")["tensors"]
    assert len(two["clean"]) == N
    # deterministic attacks agree example by example
    for key in ("clean", "labels", "robust/fgsm", "correct/fgsm"):
        assert torch.equal(one[key], two[key]), key
    # random-start attacks draw their noise per shard: equal up to a few examples
    rep1 = json.loads((single[0] / "report.json").read_text())
    rep2 = json.loads((out / "report.json").read_text())
    for name in ("pgd-20", "pgd-40", "cw-30", "autoattack"):
        assert abs(rep1["attacks"][name]["acc"] - rep2["attacks"][name]["acc"]) <= 3 / N, name
    # one chunk per rank
    assert (out / "chunk-000000-000024" / "report.json").exists()
    assert (out / "chunk-000024-000048" / "report.json").exists()
    # the merged inputs carry the shards' offsets: every broken example re-checks against its test image
    v = _verify(out)
    assert v.returncode == 0, v.stdout + v.stderr


def test_torchrun_ranks_share_the_chunks(checkpoint, single, tmp_path):
    out = tmp_path / "chunks2"
    r = _torchrun(checkpoint, out, "--chunk-size", "16")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "3 chunks of up to 16 examples: 0 finished, 3 to evaluate" in r.stdout
    # every chunk evaluated exactly once, shared by the two ranks
    done = [int(m) for m in re.findall(r"rank \d evaluated (\d) of 3 chunks", r.stdout)]
    assert sorted(done) in ([1, 2], [0, 3]), r.stdout
    assert sorted(re.findall(r"\[eval\] chunk (\d+-\d+)", r.stdout)) == ["0-15", "16-31", "32-47"], r.stdout
    one = load_per_example(single[0] / "per_example.pt")["tensors"]
    merged = load_per_example(out / "per_example.pt")["tensors"]
    for key in ("clean", "labels", "robust/fgsm", "correct/fgsm"):
        assert torch.equal(one[key], merged[key]), key


def test_torchrun_ranks_finishing_far_apart_do_not_time_out(checkpoint, single, tmp_path):
    """Uneven work: two of three chunks are already finished, so one rank evaluates the last
    chunk while the other has nothing to do, under a 1-second collective timeout. A barrier
    after the uneven work would kill the waiting rank; the ranks coordinate through files."""
    out = tmp_path / "uneven"
    first = [sys.executable, *_eval_cmd(checkpoint, out, "--chunk-size", "16")]
    first[first.index("--n-examples") + 1] = "32"
    r = subprocess.run(first, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    start = time.perf_counter()
    r = _torchrun(checkpoint, out, "--chunk-size", "16", ANCRA_COLLECTIVE_TIMEOUT_S="1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert time.perf_counter() - start > 3  # the busy rank worked well past the timeout
    assert "3 chunks of up to 16 examples: 2 finished, 1 to evaluate" in r.stdout
    done = sorted(int(m) for m in re.findall(r"rank \d evaluated (\d) of 1 chunks", r.stdout))
    assert done == [0, 1], r.stdout
    merged = load_per_example(out / "per_example.pt")["tensors"]
    one = load_per_example(single[0] / "per_example.pt")["tensors"]
    for key in ("clean", "labels", "robust/fgsm", "correct/fgsm"):
        assert torch.equal(one[key], merged[key]), key


def test_eval_user_errors(tmp_path, checkpoint):
    r = subprocess.run(
        [sys.executable, "-m", "ancra", "eval", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.strip() == f"error: checkpoint {tmp_path / 'nope.pt'} does not exist"
    r = subprocess.run(
        [sys.executable, *_eval_cmd(checkpoint, tmp_path / "o", "--eps", "3")], capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stderr.strip() == "error: --eps must be in (0, 1], got 3.0"
    r = subprocess.run(
        [sys.executable, *_eval_cmd(checkpoint, tmp_path / "o", "--chunk-size", "-1")], capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stderr.strip() == "error: --chunk-size must be >= 0, got -1"
    # a CIFAR-shaped checkpoint against Fashion-MNIST data
    from ancra.checkpoint import save_weights
    from ancra.models import create_model

    m = create_model("narrow_resnet", 10, 3, width=4, num_blocks=[1, 2])
    save_weights(m, tmp_path / "rgb.pt", meta={"config": {"data": {"dataset": "fmnist"}, "objective": {"eps": 0.1}}})
    r = subprocess.run(
        [sys.executable, *_eval_cmd(tmp_path / "rgb.pt", tmp_path / "o")], capture_output=True, text=True
    )
    assert r.returncode == 2 and "3-channel images but fmnist has 10 classes and 1 channels" in r.stderr


def test_chunked_eval_survives_sigkill_and_merges_to_the_single_result(checkpoint, single, tmp_path):
    out = tmp_path / "chunked"
    cmd = [sys.executable, *_eval_cmd(checkpoint, out, "--chunk-size", "16")]
    first = out / "chunk-000000-000016" / "report.json"
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not first.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)  # a real kill while the second chunk runs
    p.wait()
    assert first.exists() and not (out / "report.json").exists()
    stamp = first.stat().st_mtime_ns

    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    done, todo = map(int, re.search(r"(\d+) finished, (\d+) to evaluate", r.stdout).groups())
    assert done >= 1 and todo >= 1 and done + todo == 3
    assert first.stat().st_mtime_ns == stamp  # the finished chunk was reused, not redone
    one = load_per_example(single[0] / "per_example.pt")["tensors"]
    merged = load_per_example(out / "per_example.pt")["tensors"]
    for key in ("clean", "labels", "robust/fgsm", "correct/fgsm"):  # deterministic: equal per example
        assert torch.equal(one[key], merged[key]), key
    rep = json.loads((out / "report.json").read_text())
    assert rep["n_examples"] == N and "3 chunks of up to 16" in rep["subset"]
    v = _verify(out)  # chunks start at test examples 0, 16, 32: their inputs merge with offsets
    assert v.returncode == 0, v.stdout + v.stderr
    assert _verify(out / "chunk-000016-000032").returncode == 0  # a chunk is a report of its own

    # a rerun with other settings must not mix its numbers into the finished chunks
    r = subprocess.run(cmd + ["--seed", "1"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "different seed" in r.stderr, r.stderr
    r = subprocess.run(cmd + ["--autoattack-version", "plus"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "different autoattack_version" in r.stderr, r.stderr
    assert first.stat().st_mtime_ns == stamp


def test_eval_and_analyze_read_a_checkpoint_the_same_way(tmp_path, checkpoint):
    """load_checkpoint gives the validated training config; eval and analyze take the dataset
    and eps from it alike, and both refuse a file that records none."""
    from ancra.checkpoint import load_checkpoint, save_weights
    from ancra.config import load_config
    from ancra.models import create_model

    ckpt = load_checkpoint(checkpoint)
    assert ckpt.config == load_config(CONFIGS / "smoke.toml", ["train.select=last"])
    assert (ckpt.dataset(), ckpt.eps(), ckpt.eps(0.05), ckpt.data_dir()) == ("fmnist", 0.1, 0.05, None)
    bare = tmp_path / "bare.pt"
    save_weights(create_model("narrow_resnet", 10, 1, width=4, num_blocks=[1, 2]), bare)
    for cmd in (
        ["eval", str(bare), "--out", str(tmp_path / "e")],
        ["analyze", str(bare), "--out", str(tmp_path / "a")],
    ):
        r = subprocess.run([sys.executable, "-m", "ancra", *cmd], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]  # after progress lines
        assert len(errors) == 1 and "records no" in errors[0]
    assert not (tmp_path / "e").exists() and not (tmp_path / "a").exists()
    # a recorded config that is not valid is named as such
    save_weights(create_model("narrow_resnet", 10, 1, width=4), bare, meta={"config": {"objective": {"eps": 7}}})
    r = subprocess.run(
        [sys.executable, "-m", "ancra", "eval", str(bare), "--out", str(tmp_path / "e")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "recorded training config is invalid: objective.eps = 7.0" in r.stderr


def test_verify_rechecks_every_broken_example_and_catches_tampering(checkpoint, single, tmp_path):
    """`ancra verify` passes on a fresh report and fails (exit 1, one MISMATCH line per problem) on
    an input moved out of the eps-ball, an input replaced by its clean image, a different
    checkpoint; a folder without saved inputs is a user error (exit 2, one line)."""
    import shutil

    out, _ = single
    v = _verify(out)
    assert v.returncode == 0, v.stdout + v.stderr
    rep = json.loads((out / "report.json").read_text())
    adv = torch.load(out / "adversarial.pt", weights_only=True)
    n_broken = round(N * (rep["clean_acc"] - rep["worst_case_acc"]))
    assert len(adv["index"]) == n_broken > 0
    assert "verified:" in v.stdout and "fools_model" in v.stdout
    for name in set(adv["attacks"]):
        assert name in rep["attacks"]  # every input names the attack that found it

    def tampered(edit):
        d = tmp_path / f"t{len(list(tmp_path.iterdir()))}"
        shutil.copytree(out, d)
        a = torch.load(d / "adversarial.pt", weights_only=True)
        edit(a)
        torch.save(a, d / "adversarial.pt")
        return _verify(d, "--checkpoint", str(checkpoint))

    def out_of_ball(a):
        a["x_adv"][0] = (a["x_adv"][0] + 0.3).clamp(0, 1)

    r = tampered(out_of_ball)
    assert r.returncode == 1 and "outside the eps-ball" in r.stdout, r.stdout

    from ancra.data import load_fashion_mnist

    test_x = load_fashion_mnist(download=False).test_x

    def clean_image(a):
        a["x_adv"][0] = test_x[int(a["index"][0])].float() / 255

    r = tampered(clean_image)
    assert r.returncode == 1 and "not fooling" in r.stdout, r.stdout

    def dropped(a):
        for k in ("index", "x_adv", "label", "attack"):
            a[k] = a[k][1:]

    r = tampered(dropped)
    assert r.returncode == 1 and "1 broken example(s) have no saved input" in r.stdout, r.stdout

    from ancra.checkpoint import save_weights
    from ancra.models import create_model

    other = tmp_path / "other.pt"
    save_weights(create_model("narrow_resnet", 10, 1, width=4, num_blocks=[1, 2]), other)
    r = _verify(out, "--checkpoint", str(other))
    assert r.returncode == 1 and "the report was made from sha256:" in r.stdout, r.stdout

    bare = tmp_path / "no-inputs"
    shutil.copytree(out, bare)
    (bare / "adversarial.pt").unlink()
    r = _verify(bare)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "has no adversarial.pt" in r.stderr, r.stderr
