"""Faults and bad input: SIGKILL at any moment, torn writes, full disk, crafted pickles, NaN loss."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ancra.attacks import pgd
from ancra.checkpoint import atomic_save, load_model, safe_load, save_weights
from ancra.config import load_config
from ancra.errors import UserError
from ancra.evaluation import load_per_example
from ancra.models import create_model
from ancra.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMOKE = CONFIGS / "smoke.toml"
LONG = ["train.epochs=6", "train.max_steps_per_epoch=8"]


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "ancra", *args], capture_output=True, text=True, timeout=300, **kw)


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    r = _cli("train", "--quiet", "--config", str(SMOKE), "--out", str(out), *[a for s in LONG for a in ("--set", s)])
    assert r.returncode == 0, r.stderr
    return out


def _lines(path):
    return len(path.read_text().splitlines()) if path.exists() else 0


# Kill points: before any state exists (config.json written), right after the metrics line of
# epoch 1 (possibly before its state: the replay drops that line), and later mid-run.
@pytest.mark.parametrize("kill_when", ["config", "metrics>=1", "metrics>=3"])
def test_sigkill_mid_run_then_resume_gives_the_same_weights(uninterrupted, tmp_path, kill_when):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "ancra", "train", "--quiet", "--config", str(SMOKE), "--out", str(out)]
    proc = subprocess.Popen(
        args + [a for s in LONG for a in ("--set", s)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    metrics = out / "metrics.jsonl"
    ready = {
        "config": lambda: (out / "config.json").exists(),
        "metrics>=1": lambda: _lines(metrics) >= 1,
        "metrics>=3": lambda: _lines(metrics) >= 3,
    }[kill_when]
    deadline = time.time() + 120
    while time.time() < deadline and not ready():
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # really killed, not finished
    if (out / "state.pt").exists():
        assert torch.load(out / "state.pt", weights_only=True)["epoch"] < 6
    r = _cli("train", "--quiet", "--resume", str(out))
    assert r.returncode == 0, r.stderr
    a, b = _weights(uninterrupted / "last.pt"), _weights(out / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == list(range(6))


def test_write_cut_midway_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "state.pt"
    atomic_save({"v": torch.ones(3)}, path)

    class Exploding:
        def __reduce__(self):
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        atomic_save({"v": torch.zeros(3), "boom": Exploding()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temp file left behind


@pytest.fixture
def small_disk(tmp_path):
    """``mount(kilobytes)``: a tmpfs of that size in tmp_path, unmounted after the test."""
    mounted = []

    def mount(kilobytes: int) -> Path:
        mnt = tmp_path / "disk"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs", str(mnt)], capture_output=True)
        if r.returncode != 0:
            pytest.skip("a full-disk test needs to mount a small tmpfs (root)")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", str(mnt)])


@pytest.fixture
def tiny_disk(small_disk):
    return small_disk(400)


def test_full_disk_is_a_clear_error_and_keeps_the_last_good_checkpoint(tiny_disk):
    path = tiny_disk / "state.pt"
    atomic_save({"v": torch.ones(10)}, path)
    with pytest.raises(
        UserError, match="disk full while writing .*state.pt: free some space; the previous state.pt is intact"
    ):
        atomic_save({"v": torch.ones(200_000)}, path)  # 800 kB on a 400 kB disk
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.ones(10))
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["state.pt"]


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoint_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    torch.save({"format": "ancra-weights/1", "payload": _RunsCode(marker)}, bad)
    with pytest.raises(UserError, match="refusing to load .*evil.pt: it is not a weights-only checkpoint"):
        load_model(bad)
    r = _cli("analyze", str(bad), "--out", str(tmp_path / "a"))
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert (
        len(errors) == 1 and errors[0].startswith("error: refusing to load") and r.stderr.rstrip().endswith(errors[0])
    )
    assert not marker.exists()
    # a plain pickle file too
    bad2 = tmp_path / "evil.pkl"
    bad2.write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(UserError, match="refusing to load"):
        safe_load(bad2)
    assert not marker.exists()


def test_truncated_checkpoint_and_wrong_files_are_clear_errors(tmp_path):
    model = create_model("narrow_resnet", 10, 1, width=4, num_blocks=[1, 2])
    good = tmp_path / "w.pt"
    save_weights(model, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(UserError, match="cannot read checkpoint .*cut.pt"):
        load_model(cut)
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"state_dict": model.state_dict()}, other)
    with pytest.raises(UserError, match="not an ancra weights file"):
        load_model(other)


def test_checkpoint_whose_architecture_does_not_match_is_refused(tmp_path):
    model = create_model("narrow_resnet", 10, 1, width=4, num_blocks=[1, 2])
    raw = {
        "format": "ancra-weights/1",
        "model": {**model.spec, "num_classes": 7},
        "state_dict": model.state_dict(),
        "meta": {},
    }
    torch.save(raw, tmp_path / "mismatch.pt")
    with pytest.raises(UserError, match="weights do not match the model"):
        load_model(tmp_path / "mismatch.pt")


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_state(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(SMOKE, ["train.epochs=3", "train.milestones=[]"])
    trainer = Trainer(cfg, out, progress=False)
    trainer.fit(stop_after=1)
    good = (out / "state.pt").read_bytes()
    for group in trainer.optimizer.param_groups:
        group["lr"] = 1e30
    trainer.cfg.train.lr = 1e30
    with pytest.raises(UserError, match="the loss became (nan|inf).*lower train.lr.*state.pt"):
        trainer.fit()
    assert (out / "state.pt").read_bytes() == good
    assert torch.load(out / "state.pt", weights_only=True)["epoch"] == 1


def test_inputs_outside_unit_box_are_rejected():
    model = create_model("narrow_resnet", 10, 1, width=4, num_blocks=[1, 2])
    x = torch.rand(2, 1, 28, 28) * 2 - 0.5
    with pytest.raises(ValueError, match=r"attack inputs must be images in \[0, 1\]"):
        pgd(model, x, torch.tensor([0, 1]), eps=0.1, step_size=0.05, steps=1)


@pytest.mark.parametrize(
    "override,message",
    [
        ("objective.eps=0", "objective.eps = 0.0 is out of range: must be > 0"),
        ("objective.steps=0", "objective.steps = 0 is out of range: must be >= 1"),
        ("train.lr=0", "train.lr = 0.0 is out of range: must be > 0"),
        ("model.name=resnet1000", "model.name = 'resnet1000' is not valid: choose one of"),
        ("train.lr=nan", "train.lr must be a finite number"),
    ],
)
def test_out_of_range_values_exit_2_with_one_line(tmp_path, override, message):
    r = _cli("train", "--config", str(SMOKE), "--set", override, "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {r.stderr.strip()[7:]}"] and message in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()


# --- evaluation chunks under faults ---------------------------------------------------------------

EVAL_CHUNKS = ["--suite", "standard", "--quick", "--n-examples", "48", "--chunk-size", "16", "--batch-size", "16"]
STUDY_PGD_AT = Path(__file__).resolve().parents[1] / "results" / "fmnist" / "pgd-at.pt"


def _eval_cmd(out):
    return [
        sys.executable,
        "-m",
        "ancra",
        "eval",
        str(STUDY_PGD_AT),
        *EVAL_CHUNKS,
        "--device",
        "cpu",
        "--out",
        str(out),
    ]


def _robust(out):
    t = load_per_example(out)["tensors"]
    return {k: v for k, v in t.items() if k.startswith(("clean", "robust/", "correct/"))}


@pytest.fixture(scope="module")
def uninterrupted_eval_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "whole"
    r = subprocess.run(_eval_cmd(out), capture_output=True, text=True, timeout=600, env=_one_thread())
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def uninterrupted_eval(uninterrupted_eval_dir):
    return _robust(uninterrupted_eval_dir)


def _one_thread():
    return dict(os.environ, OMP_NUM_THREADS="1")


def test_eval_killed_while_a_chunk_is_written_redoes_only_that_chunk(tmp_path, uninterrupted_eval):
    """SIGKILL during the second of three chunks: the first stays as it was, the second is redone,
    and the merged report equals an uninterrupted run's (the quick attacks are seeded per chunk)."""
    out = tmp_path / "killed"
    proc = subprocess.Popen(_eval_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_one_thread())
    second = out / "chunk-000016-000032"
    deadline = time.time() + 300
    while not second.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(1.0)  # inside the chunk: attacks running, AutoAttack's files being written
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the evaluation ended before the kill"
    first = (out / "chunk-000000-000016" / "report.json").read_bytes()
    assert not (second / "report.json").exists()
    r = subprocess.run(_eval_cmd(out), capture_output=True, text=True, timeout=600, env=_one_thread())
    assert r.returncode == 0, r.stderr[-2000:]
    assert "3 chunks of up to 16 examples: 1 finished, 2 to evaluate" in r.stdout
    assert (out / "chunk-000000-000016" / "report.json").read_bytes() == first
    got = _robust(out)
    for key, value in uninterrupted_eval.items():
        assert torch.equal(value, got[key]), key
    assert subprocess.run([sys.executable, "-m", "ancra", "verify", str(out)], capture_output=True).returncode == 0


def test_eval_on_a_full_disk_keeps_the_finished_chunks(
    small_disk, tmp_path, uninterrupted_eval, uninterrupted_eval_dir
):
    """The first chunk fits on the disk, the second does not (a disk of 1.5 chunks, as the
    uninterrupted run measured them): one line, exit 2, no torn file; after space is freed (the
    folder moved to a larger disk) the same command finishes the run, equal to an uninterrupted one."""
    chunk_bytes = max(sum(f.stat().st_size for f in c.rglob("*")) for c in uninterrupted_eval_dir.glob("chunk-*"))
    out = small_disk(int(1.5 * chunk_bytes / 1024)) / "eval"
    r = subprocess.run(_eval_cmd(out), capture_output=True, text=True, timeout=600, env=_one_thread())
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "disk full" in errors[0] and "free some space" in errors[0], r.stderr[-2000:]
    assert (out / "chunk-000000-000016" / "report.json").is_file()
    assert not (out / "chunk-000016-000032" / "report.json").exists()
    assert not [p for p in out.rglob("*.tmp")]  # no temporary file left behind
    moved = tmp_path / "eval"
    shutil.copytree(out, moved)
    r = subprocess.run(_eval_cmd(moved), capture_output=True, text=True, timeout=600, env=_one_thread())
    assert r.returncode == 0, r.stderr[-2000:]
    assert "3 chunks of up to 16 examples: 1 finished, 2 to evaluate" in r.stdout
    got = _robust(moved)
    for key, value in uninterrupted_eval.items():
        assert torch.equal(value, got[key]), key
