"""The CUDA paths on a real GPU (marked ``cuda``: skipped, with the reason, where torch sees none;
``benchmarks/gpu.sh`` runs them before it measures anything). A training step on the GPU equals
the CPU's in fp32 with TF32 off, bf16 and compiled steps stay finite and close, a resumed run
ends where an uninterrupted one does up to kernel nondeterminism, checkpoints hold CPU tensors,
the step loop never synchronises, an evaluation agrees with the CPU's and re-checks, and NCCL runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ancra.cli import main
from ancra.config import load_config
from ancra.hardware import configure_kernels
from ancra.models import create_model
from ancra.objectives import Objective, training_step
from ancra.trainer import Trainer

pytestmark = pytest.mark.cuda
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# ANCRA-TRADES; the exact comparison leaves out what draws random numbers (ANC's negatives, the
# attack's start), since CPU and CUDA generators draw different streams from one seed
ANCRA = Objective(method="trades", eps=0.1, step_size=0.05, steps=3, zeta=3.0)
NO_RANDOMNESS = Objective(method="trades", eps=0.1, step_size=0.05, steps=3, random_start="none")


def _one_step(device, fmnist, obj=ANCRA, precision="fp32", compile=False):
    """Weights and loss after one step from the same initial weights and batch."""
    torch.manual_seed(0)
    net = create_model("narrow_resnet", 10, 1, ra_blocks=2, width=8).to(device)
    if compile:
        net.compile()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x, y = fmnist[0][:64].to(device), fmnist[1][:64].to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    configure_kernels(torch.device(device), "auto", "fp32")  # TF32 off on CUDA
    m = training_step(net, opt, x, y, obj, 0, gen, precision=precision)
    return {k: v.detach().cpu().double() for k, v in net.state_dict().items()}, m["loss"].item()


def test_cuda_step_equals_the_cpu_step_in_fp32(fmnist):
    a, loss_a = _one_step("cpu", fmnist, NO_RANDOMNESS)
    b, loss_b = _one_step("cuda", fmnist, NO_RANDOMNESS)
    assert abs(loss_a - loss_b) <= 1e-4 * abs(loss_a)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5), k


@pytest.mark.parametrize("variant", ["bf16", "compile"])
def test_bf16_and_compiled_steps_are_finite_and_close(fmnist, variant):
    ref, loss = _one_step("cuda", fmnist)
    got, loss_v = _one_step(
        "cuda", fmnist, precision="bf16" if variant == "bf16" else "fp32", compile=variant == "compile"
    )
    assert all(torch.isfinite(v).all() for v in got.values())
    assert abs(loss_v - loss) / abs(loss) < (0.05 if variant == "bf16" else 1e-3)
    diffs = [((got[k] - ref[k]).norm() / (ref[k].norm() + 1e-12)).item() for k in ref if ref[k].is_floating_point()]
    assert max(diffs) < (0.05 if variant == "bf16" else 1e-3)


def _train(out, *sets, resume=False):
    args = ["train", "--quiet"]
    args += ["--resume", str(out)] if resume else ["--config", str(CONFIGS / "smoke.toml"), "--out", str(out)]
    args += [a for s in ("train.device=cuda", *sets) for a in ("--set", s)] if not resume else []
    assert main(args) == 0


def test_resume_on_cuda_matches_an_uninterrupted_run(tmp_path):
    """Up to kernel nondeterminism (atomics in cuDNN's weight gradients): close, not equal."""
    _train(tmp_path / "full", "train.epochs=2")
    cfg = load_config(CONFIGS / "smoke.toml", ["train.device=cuda", "train.epochs=2"])
    Trainer(cfg, tmp_path / "split", progress=False).fit(stop_after=1)
    Trainer.resume(tmp_path / "split", progress=False).fit()
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["state_dict"]
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), rtol=1e-3, atol=1e-4), k


def test_checkpoints_written_on_cuda_hold_cpu_tensors(tmp_path):
    _train(tmp_path / "run", "train.epochs=1")
    for name in ("last.pt", "best.pt", "state.pt"):
        obj = torch.load(tmp_path / "run" / name, weights_only=True)  # no map_location

        def devices(o):
            if torch.is_tensor(o):
                yield o.device.type
            elif isinstance(o, dict):
                for v in o.values():
                    yield from devices(v)
            elif isinstance(o, (list, tuple)):
                for v in o:
                    yield from devices(v)

        assert set(devices(obj)) == {"cpu"}, name


def test_the_step_loop_never_synchronises(fmnist):
    net = create_model("narrow_resnet", 10, 1, ra_blocks=2, width=8).cuda()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x, y = fmnist[0][:64].cuda(), fmnist[1][:64].cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    obj = ANCRA
    training_step(net, opt, x, y, obj, 0, gen, sync_checks=False)  # warm-up: allocations, cuDNN
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            training_step(net, opt, x, y, obj, 0, gen, sync_checks=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_small_evaluation_on_cuda_agrees_with_the_cpu_and_verifies(tmp_path):
    _train(tmp_path / "run", "train.epochs=1")
    ckpt = tmp_path / "run" / "best.pt"
    reports = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"eval-{device}"
        args = ["eval", str(ckpt), "--suite", "full", "--quick", "--n-examples", "64", "--out", str(out)]
        assert main([*args, "--device", device]) == 0
        reports[device] = json.loads((out / "report.json").read_text())
        assert main(["verify", str(out), "--device", device]) == 0
    a, b = reports["cpu"], reports["cuda"]
    assert a["clean_acc"] == b["clean_acc"]
    assert abs(a["worst_case_acc"] - b["worst_case_acc"]) <= 3 / 64


NCCL_STEP = """
import os, sys, torch, torch.distributed as dist
from ancra.models import create_model
from ancra.objectives import Objective, training_step
dist.init_process_group("nccl")
torch.manual_seed(0)
net = create_model("narrow_resnet", 10, 1, ra_blocks=2, width=8).cuda()
ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[0])
opt = torch.optim.SGD(net.parameters(), lr=0.05)
x, y = torch.rand(32, 1, 28, 28, device="cuda"), torch.arange(32, device="cuda") % 10
obj = Objective(method="trades", eps=0.1, step_size=0.05, steps=2, zeta=3.0)
gen = torch.Generator(device="cuda").manual_seed(0)
m = training_step(ddp, opt, x, y, obj, 0, gen)
assert torch.isfinite(m["loss"]), m
dist.barrier()
dist.destroy_process_group()
print("NCCL OK", m["loss"].item())
"""


def test_one_process_nccl_training_step(tmp_path):
    (tmp_path / "step.py").write_text(NCCL_STEP)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=1",
        str(tmp_path / "step.py"),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert r.returncode == 0 and "NCCL OK" in r.stdout, r.stderr[-3000:]
