"""Real torch.distributed (gloo, 2 CPU processes launched by torchrun): DDP equals one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Exact equivalence needs the same randomness in both runs: ANC negatives are drawn within each
# rank's local batch and the attack's start noise per rank, so this run uses neither (zeta = 0,
# no random start); SyncBatchNorm makes the batch statistics global. NCHW layout: the CPU's
# channels_last kernels sum in a batch-size-dependent order, and PGD's sign() amplifies such
# last-bit differences (measured: 1e-5 max weight difference in NCHW, 5e-4 in channels_last).
EQUIV = [
    "objective.zeta=0.0",
    "objective.random_start=none",
    "train.sync_bn=true",
    "train.channels_last=false",
    "train.epochs=2",
    "train.max_steps_per_epoch=3",
]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def _train(out, nproc, extra=(), resume=False):
    launch = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if nproc > 1
        else [sys.executable]
    )
    args = ["-m", "ancra", "train", "--quiet"]
    if resume:
        args += ["--resume", str(out)]
    else:
        args += ["--config", str(CONFIGS / "smoke.toml"), "--out", str(out)] + [a for s in extra for a in ("--set", s)]
    r = subprocess.run(launch + args, capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "one"
    _train(out, 1, EQUIV)
    return out


def test_two_processes_end_with_the_same_weights_as_one(single, tmp_path):
    out = tmp_path / "two"
    _train(out, 2, EQUIV)
    a, b = _weights(single / "last.pt"), _weights(out / "last.pt")
    assert a.keys() == b.keys() and not any(k.startswith("module.") for k in b)
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), rtol=1e-4, atol=1e-5), k
    # rank 0 alone wrote the metrics: one line per epoch
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_two_process_run_resumes(single, tmp_path):
    out = tmp_path / "resumed"
    _train(out, 2, EQUIV[:-2] + ["train.epochs=1", "train.max_steps_per_epoch=3"])
    # extend the finished 1-epoch run to 2 epochs by editing nothing but the saved epoch count:
    state = torch.load(out / "state.pt", weights_only=True)
    state["config"]["train"]["epochs"] = 2
    torch.save(state, out / "state.pt")
    _train(out, 2, resume=True)
    a, b = _weights(single / "last.pt"), _weights(out / "last.pt")
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), rtol=1e-4, atol=1e-5), k


LAUNCHER = """
import hashlib, sys, time
from pathlib import Path
import ancra.data.cifar as cifar
from ancra.cli import main

root = Path(sys.argv[1])
archive = root / "cifar-10-python.tar.gz"
# the tiny test archive stands in for the official one (whose md5 the loader checks)
cifar.CIFAR_ARCHIVE_MD5["cifar-10-python.tar.gz"] = hashlib.md5(archive.read_bytes()).hexdigest()
extract = cifar._extract_cifar

def counted(*args):
    print("EXTRACTING", flush=True)
    time.sleep(2)  # the official archive (170 MB) takes seconds: the window other ranks would race into
    return extract(*args)

cifar._extract_cifar = counted
sys.exit(main(sys.argv[2:]))
"""


def test_first_run_on_an_archive_only_folder_extracts_once(tmp_path):
    """Three gloo ranks start on a folder holding only the CIFAR archive: exactly one extracts it
    while the others wait (before the lock, all extracted and all but one failed renaming their
    copy onto the folder the first had put in place)."""
    import tarfile

    from test_data import make_cifar10

    src, root = tmp_path / "src", tmp_path / "data"
    make_cifar10(src)
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    (tmp_path / "launch.py").write_text(LAUNCHER)
    sets = [
        "data.dataset=cifar10",
        f'data.data_dir="{root}"',
        "data.download=false",
        "data.val_size=1",
        "train.batch_size=6",
        "train.epochs=1",
        "train.max_steps_per_epoch=1",
        "objective.zeta=0.0",
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3"]
    cmd += [str(tmp_path / "launch.py"), str(root), "train", "--quiet", "--config", str(CONFIGS / "smoke.toml")]
    cmd += ["--out", str(tmp_path / "run")] + [a for s in sets for a in ("--set", s)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("EXTRACTING") == 1, r.stdout
    assert (root / "cifar-10-batches-py" / "test_batch").is_file() and (tmp_path / "run" / "last.pt").is_file()


def test_two_processes_train_a_compiled_network(tmp_path):
    """DDP wraps the network compiled in place (eager backend: the capture is what is tested);
    the weights file keeps the plain network's keys."""
    out = tmp_path / "compiled"
    r = _train(out, 2, ["train.compile=true", "train.compile_backend=eager", "train.epochs=1"])
    sd = _weights(out / "last.pt")
    assert not any("_orig_mod" in k or k.startswith("module.") for k in sd)
    assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point()), r.stderr[-2000:]


def _worker_pid(out: Path, rank: int) -> int | None:
    """PID of the torchrun worker of ``rank`` training into ``out`` (from /proc)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(out).encode() in cmdline and f"RANK={rank}".encode() in environ and b"-m" in cmdline:
            if b"torch.distributed.run" not in cmdline:
                return int(proc.name)
    return None


LOST_RANK = [
    "objective.zeta=0.0",
    "objective.random_start=none",
    "train.channels_last=false",
    "train.epochs=3",
    "train.max_steps_per_epoch=12",
]


def test_a_killed_rank_is_restarted_by_torchrun_and_the_run_ends_as_if_uninterrupted(tmp_path):
    """SIGKILL one rank of a 2-process run after its first saved state: torchrun restarts both
    workers, which resume from state.pt (a restart implies --auto-resume), and the final weights
    equal those of an uninterrupted 2-process run. Two restarts are allowed, as a job script
    would: once, with two test suites loading the 2 cores at the same time, the restarted gloo
    group failed to connect (connection refused) and only a further restart would have run."""
    import signal
    import time

    _train(tmp_path / "whole", 2, LOST_RANK)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=2"]
    cmd += ["-m", "ancra", "train", "--quiet", "--config", str(CONFIGS / "smoke.toml"), "--out", str(out)]
    cmd += [a for s in LOST_RANK for a in ("--set", s)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.time() + 240
    killed = None
    while time.time() < deadline and proc.poll() is None:
        if (out / "state.pt").exists():
            killed = _worker_pid(out, 1)
            if killed:
                os.kill(killed, signal.SIGKILL)
                break
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=300)
    assert killed is not None, "the run ended before a rank could be killed"
    assert proc.returncode == 0, stderr[-3000:]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]  # replayed epochs are not doubled
    a, b = _weights(tmp_path / "whole" / "last.pt"), _weights(out / "last.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_auto_resume_continues_the_same_config_and_refuses_another(tmp_path):
    out = tmp_path / "run"
    _train(out, 1, ["train.epochs=1"])
    before = (out / "state.pt").read_bytes()
    base = [sys.executable, "-m", "ancra", "train", "--quiet", "--config", str(CONFIGS / "smoke.toml")]
    base += ["--out", str(out), "--auto-resume", "--set", "train.epochs=1"]
    r = subprocess.run(base, capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]  # the finished run is continued: nothing left to do
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    r = subprocess.run([*base, "--set", "train.lr=0.2"], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 2 and "holds a run of another config (differs in train.lr)" in r.stderr, r.stderr
    assert (out / "state.pt").read_bytes() == before
