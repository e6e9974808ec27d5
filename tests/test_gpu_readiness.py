"""What makes a run right and fast on a GPU, checked on the CPU where it can be: every forward of a
step through the compiled network, the kernel settings a config asks for (also for a CUDA device,
without one), a step loop that never waits for the device, autocast around forwards only, CPU
tensors in checkpoints, and no silent CPU fallback when a GPU is visible."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ancra.checkpoint import save_weights, to_cpu
from ancra.config import load_config
from ancra.errors import UserError
from ancra.hardware import configure_kernels
from ancra.models import create_model
from ancra.objectives import Objective, training_step
from ancra.trainer import StepHealth, Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture
def restore_backends():
    """configure_kernels sets process-wide switches: put them back after each test."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[4], saved[5]
    if saved[6] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[6]


# --- 1. torch.compile: the network itself, so attacks and validation run compiled too -------------


def _count_eager_forwards(net, monkeypatch) -> list:
    """Record each call of the network's forward that runs as plain Python: a compiled network's
    calls replay captured graphs (its Python runs only while dynamo traces it)."""
    calls = []
    inner = type(net).forward_with_aux

    def counting(self, *args, **kwargs):
        if not torch.compiler.is_compiling():
            calls.append(1)
        return inner(self, *args, **kwargs)

    monkeypatch.setattr(type(net), "forward_with_aux", counting)
    return calls


@pytest.mark.parametrize("compiled", [False, True])
def test_every_forward_of_an_epoch_runs_the_compiled_network(tmp_path, monkeypatch, compiled, restore_backends):
    """The trainer compiles the network in place (before any DDP wrapper): the attack steps, the
    train-mode forwards and the validation PGD of an epoch all run compiled graphs. The eager
    backend keeps the test fast; dynamo's capture is the same for every backend."""
    torch._dynamo.reset()
    sets = [f"train.compile={'true' if compiled else 'false'}", "train.compile_backend=eager", "train.epochs=1"]
    trainer = Trainer(load_config(CONFIGS / "smoke.toml", sets), tmp_path / "run", progress=False)
    calls = _count_eager_forwards(trainer.net, monkeypatch)
    trainer.train_epoch()  # compiles (traces) every variant the step needs
    first = len(calls)
    trainer.epoch += 1
    trainer.train_epoch()
    if not compiled:
        # 4 steps x (2 attack steps + 2 or 3 train-mode forwards) + validation: all eager
        assert len(calls) - first >= 4 * 4
        return
    assert trainer.net._compiled_call_impl is not None and trainer.model is trainer.net
    assert len(calls) - first == 0, f"{len(calls) - first} forwards of the second epoch ran eagerly"
    # the weights file of a compiled network keeps the plain network's keys
    save_weights(trainer.model, tmp_path / "w.pt")
    keys = torch.load(tmp_path / "w.pt", weights_only=True)["state_dict"].keys()
    assert not any("_orig_mod" in k or k.startswith("module.") for k in keys)


def test_sync_bn_with_compile_is_refused():
    with pytest.raises(UserError, match="train.sync_bn = true with train.compile = true"):
        load_config(CONFIGS / "smoke.toml", ["train.sync_bn=true", "train.compile=true"])


# --- 2. kernel settings: deterministic and exact on a CPU, fast on CUDA unless asked ----------------


def test_kernel_settings_of_each_config_value(restore_backends):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
    assert configure_kernels(cpu, "auto", "fp32") == [] and torch.are_deterministic_algorithms_enabled()
    configure_kernels(cpu, False, "fp32")
    assert not torch.are_deterministic_algorithms_enabled()
    # CUDA default: cuDNN autotuning, no deterministic mode, real fp32 (TF32 off)
    assert configure_kernels(cuda, "auto", "fp32") == []
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    configure_kernels(cuda, "auto", "tf32")
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    # asked for: everything determinism needs on CUDA, and what stays nondeterministic is said
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    (note,) = configure_kernels(cuda, True, "fp32")
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert torch.are_deterministic_algorithms_enabled()
    assert "adaptive_avg_pool2d backward" in note and "nondeterministic" in note


def test_tf32_is_refused_on_a_cpu(tmp_path):
    with pytest.raises(UserError, match='"tf32" is a CUDA setting'):
        Trainer(load_config(CONFIGS / "smoke.toml", ["train.precision=tf32", "train.device=cpu"]), tmp_path)


def test_bench_reports_the_settings_the_config_trains_with(restore_backends):
    from ancra.bench import run_bench

    cfg = load_config(CONFIGS / "smoke.toml", ["train.deterministic=false"])
    r = run_bench(cfg, batch=8, steps=1, device="cpu", warmup=1)
    assert r["precision"] == "fp32" and r["compile"] is False and r["deterministic"] is False
    assert not torch.are_deterministic_algorithms_enabled()  # what the config asked for


# --- 6. no host sync in the step loop; the checks still name the step that failed ------------------


class HostRead(AssertionError):
    pass


@pytest.fixture
def forbid_host_reads(monkeypatch):
    """Make every read of a tensor's value on the host (the sync points on a GPU) an error."""

    def read(*_a, **_k):
        raise HostRead("a tensor value was read on the host")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, read)
    yield
    monkeypatch.undo()


def test_a_training_step_reads_nothing_on_the_host(fmnist, forbid_host_reads):
    torch.manual_seed(0)
    net = create_model("narrow_resnet", 10, 1, ra_blocks=2, width=4, num_blocks=[1, 2])
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = fmnist[0][:16], fmnist[1][:16]
    obj = Objective(method="trades", eps=0.1, step_size=0.05, steps=2, zeta=3.0)
    gen = torch.Generator().manual_seed(0)
    health = StepHealth(torch.device("cpu"))
    metrics = training_step(net, opt, x, y, obj, 0, gen, sync_checks=False)
    health.record(0, metrics)
    with pytest.raises(HostRead):  # the checked variant does read (range, negatives)
        training_step(net, opt, x, y, obj, 0, gen)


def test_step_health_names_the_first_failed_step(tmp_path):
    health = StepHealth(torch.device("cpu"))
    ok = {"loss": torch.tensor(1.0), "same_class_negatives": torch.tensor(0.0)}
    for step in range(3):
        health.record(step, ok)
    health.raise_if_failed(0, 0.1, tmp_path / "state.pt")
    health.record(3, {"loss": torch.tensor(float("nan")), "same_class_negatives": torch.tensor(0.0)})
    health.record(4, {"loss": torch.tensor(float("inf")), "same_class_negatives": torch.tensor(0.0)})
    with pytest.raises(UserError, match=r"the loss became nan at epoch 2, step 4: lower train.lr"):
        health.raise_if_failed(1, 0.1, tmp_path / "state.pt")
    health = StepHealth(torch.device("cpu"))
    health.record(0, ok)
    health.record(1, {"loss": torch.tensor(1.0), "same_class_negatives": torch.tensor(0.5)})
    with pytest.raises(UserError, match=r"epoch 1, step 2: use a larger train.batch_size or a smaller objective.k"):
        health.raise_if_failed(0, 0.1, tmp_path / "state.pt")


def test_unchecked_negatives_are_counted(fmnist):
    """A batch of one class has no valid negatives: the checked step refuses it, the unchecked
    one reports every negative as same-class (which the trainer's check turns into an error)."""
    net = create_model("narrow_resnet", 10, 1, ra_blocks=0, width=4, num_blocks=[1, 2])
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = fmnist[0][:8], torch.zeros(8, dtype=torch.long)
    obj = Objective(method="pgd_at", eps=0.1, step_size=0.05, steps=1, zeta=1.0)
    with pytest.raises(ValueError, match="fewer than k=1 other-class examples"):
        training_step(net, opt, x, y, obj)
    m = training_step(net, opt, x, y, obj, sync_checks=False)
    assert m["same_class_negatives"].item() == 1.0
    m = training_step(net, opt, fmnist[0][:32], fmnist[1][:32], obj, sync_checks=False)
    assert m["same_class_negatives"].item() == 0.0


# --- 9. autocast around forwards and the loss only -------------------------------------------------


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_bf16_autocast_covers_forwards_but_not_backward_or_step(fmnist):
    net = create_model("narrow_resnet", 10, 1, ra_blocks=2, width=4, num_blocks=[1, 2])
    seen = {"forward": [], "backward": [], "step": []}
    net.register_forward_pre_hook(lambda *_: seen["forward"].append(torch.is_autocast_enabled("cpu")))
    first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_full_backward_pre_hook(lambda *_: seen["backward"].append(torch.is_autocast_enabled("cpu")))

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            seen["step"].append(torch.is_autocast_enabled("cpu"))
            return super().step(closure)

    opt = Recording(net.parameters(), lr=0.01)
    obj = Objective(method="trades", eps=0.1, step_size=0.05, steps=2, zeta=3.0)
    m = training_step(net, opt, fmnist[0][:16], fmnist[1][:16], obj, precision="bf16")
    assert torch.isfinite(m["loss"])
    # 2 attack steps + 3 train-mode forwards; their backward passes (attack input gradients
    # included) and the optimiser step run outside autocast
    assert seen["forward"] == [True] * 5 and seen["step"] == [False]
    assert len(seen["backward"]) == 5 and not any(seen["backward"])
    # a caller's own autocast region does not reach backward or step either
    seen = {k: [] for k in seen}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        training_step(net, opt, fmnist[0][:16], fmnist[1][:16], obj)
    assert all(seen["forward"]) and not any(seen["backward"]) and seen["step"] == [False]


# --- 7. checkpoints hold CPU tensors --------------------------------------------------------------


def test_to_cpu_keeps_structure_and_state_dict_versions():
    net = create_model("narrow_resnet", 10, 1, ra_blocks=0, width=4, num_blocks=[1, 2])
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.rand(2, 1, 28, 28)).sum().backward()
    opt.step()
    sd = to_cpu(net.state_dict())
    assert sd._metadata == net.state_dict()._metadata and list(sd) == list(net.state_dict())
    osd = to_cpu(opt.state_dict())
    assert osd["param_groups"] == opt.state_dict()["param_groups"]
    assert all(
        torch.equal(osd["state"][i]["momentum_buffer"], v["momentum_buffer"])
        for i, v in opt.state_dict()["state"].items()
    )
    assert not any(t.requires_grad for t in sd.values())


# --- 8. the device a run uses: logged, and no silent CPU fallback ---------------------------------


def _fake_nvidia_smi(folder: Path) -> dict:
    """An environment whose PATH has an ``nvidia-smi`` listing one GPU, as on a GPU node."""
    folder.mkdir()
    exe = folder / "nvidia-smi"
    exe.write_text('#!/bin/sh\necho "GPU 0: NVIDIA H200 (UUID: GPU-00000000-0000-0000-0000-000000000000)"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return dict(os.environ, PATH=f"{folder}:{os.environ['PATH']}", OMP_NUM_THREADS="1")


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a machine whose torch has CUDA, auto takes the GPU")
def test_auto_device_refuses_a_visible_gpu_that_torch_cannot_use(tmp_path):
    env = _fake_nvidia_smi(tmp_path / "bin")
    train = [sys.executable, "-m", "ancra", "train", "--config", str(CONFIGS / "smoke.toml")]
    r = subprocess.run([*train, "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    (line,) = r.stderr.strip().splitlines()
    assert "nvidia-smi sees a GPU (GPU 0: NVIDIA H200" in line and "CPU-only build" in line
    assert 'train.device = "cpu"' in line and not (tmp_path / "run").exists()
    # asking for the CPU works, and the log says which device the run uses
    sets = ["--set", "train.device=cpu", "--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=1"]
    r = subprocess.run(
        [*train, "--out", str(tmp_path / "cpu"), *sets], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "device: cpu (" in r.stderr and torch.backends.cpu.get_cpu_capability() in r.stderr
