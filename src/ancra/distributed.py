"""Data-parallel training with torch.distributed, launched by torchrun (no process management here).

``torchrun --nproc_per_node=N -m ancra train --config ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
:func:`init_distributed` joins the process group (NCCL on GPUs, gloo on CPUs). Each rank keeps the
uint8 data set on its device and trains on its shard of every global batch
(:class:`ancra.data.DeviceLoader`), so N ranks with ``batch_size = B`` in the config (the global
batch) see exactly the examples one process with batch B sees. Gradients are averaged by
DistributedDataParallel; rank 0 writes logs and checkpoints.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn

from .errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def visible_gpus() -> list[str]:
    """The NVIDIA GPUs ``nvidia-smi -L`` lists (empty where there is no nvidia-smi or it fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        run = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in run.stdout.splitlines() if line.startswith("GPU ")] if run.returncode == 0 else []


def resolve_device(setting: str) -> str:
    """``auto`` / ``cpu`` / ``cuda`` -> ``cpu`` or ``cuda``, refusing what cannot work.

    ``auto`` takes CUDA when torch can use it. Where a GPU is visible but torch cannot use it (a
    CPU-only wheel on a GPU node, a driver older than the build), falling back to the CPU would
    silently turn hours into days: that is refused with the reason; ``cpu`` asks for the CPU."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device 'cuda' asked for, but {_why_no_cuda()}: use 'auto' or 'cpu'")
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "cuda"
    gpus = visible_gpus()
    if gpus:
        more = f" and {len(gpus) - 1} more" if len(gpus) > 1 else ""
        raise UserError(
            f"nvidia-smi sees a GPU ({gpus[0]}{more}) but {_why_no_cuda()}: install a CUDA build of torch "
            "(https://pytorch.org/get-started/locally/), or ask for the CPU with device 'cpu' "
            '(train.device = "cpu" or --device cpu)'
        )
    return "cpu"


def _why_no_cuda() -> str:
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    return f"this torch ({torch.__version__}, CUDA {torch.version.cuda}) cannot use it (driver too old, or no device)"


def init_distributed(device: str, process_group: bool = True) -> tuple[DistInfo, torch.device]:
    """Rank info from torchrun's environment and this rank's device; joins the process group
    (NCCL on GPUs, gloo on CPUs) unless ``process_group`` is False (``ancra eval`` coordinates its
    ranks through files, so that hours of uneven work never meet a collective's timeout).

    ``device`` is ``auto``, ``cpu`` or ``cuda`` (see :func:`resolve_device`); under torchrun with
    CUDA each rank takes ``cuda:LOCAL_RANK``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = resolve_device(device) == "cuda"
    if world == 1:
        return DistInfo(), torch.device("cuda" if use_cuda else "cpu")
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
        dev = torch.device("cuda", info.local_rank)
    else:
        dev = torch.device("cpu")
    if process_group and not dist.is_initialized():
        backend, timeout = ("nccl" if use_cuda else "gloo"), collective_timeout()
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        if attempt != "0" and os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"):
            # workers restarted by torchrun: the group's keys go under this attempt's prefix, so no
            # rank reads the address a killed worker of an earlier attempt left in the store
            # (seen: "Gloo connectFullMesh failed ... Connection refused" after a restart)
            from torch.distributed.rendezvous import _create_c10d_store

            store = _create_c10d_store(
                os.environ["MASTER_ADDR"],
                int(os.environ["MASTER_PORT"]),
                info.rank,
                world,
                timeout or timedelta(minutes=30),
            )
            store = dist.PrefixStore(f"ancra/attempt_{attempt}", store)
            dist.init_process_group(backend, store=store, rank=info.rank, world_size=world, timeout=timeout)
        else:
            dist.init_process_group(backend, timeout=timeout)
    return info, dev


def collective_timeout() -> timedelta | None:
    """The process group's collective timeout: ``ANCRA_COLLECTIVE_TIMEOUT_S`` seconds if set (tests
    shorten it to show that nothing waits on a collective for long), else torch's default."""
    value = os.environ.get("ANCRA_COLLECTIVE_TIMEOUT_S")
    if not value:
        return None
    try:
        return timedelta(seconds=float(value))
    except ValueError:
        raise UserError(f"ANCRA_COLLECTIVE_TIMEOUT_S must be a number of seconds, got {value!r}") from None


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_buffers(module: nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), one broadcast per dtype.

    DistributedDataParallel broadcasts buffers at the start of each of its forwards, but the
    attacks run on the inner network before that, in eval mode, with the running statistics:
    without this call rank r attacks with its own statistics (rank 0's plus its last local
    update), so ranks attack slightly different models, and a resumed run, whose ranks all load
    rank 0's statistics, is not the run that was interrupted."""
    if not info.enabled:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for buf in module.buffers():
        by_dtype.setdefault(buf.dtype, []).append(buf)
    for bufs in by_dtype.values():
        flat = torch.cat([b.detach().reshape(-1) for b in bufs])
        dist.broadcast(flat, src=0)
        offset = 0
        for b in bufs:
            b.data.copy_(flat[offset : offset + b.numel()].view_as(b))
            offset += b.numel()


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training-mode statistics span every rank (a SyncBatchNorm for any backend).

    ``torch.nn.SyncBatchNorm`` only runs on GPUs; this one all-reduces per-channel sums with the
    differentiable ``torch.distributed.nn`` all-reduce, so it also works with gloo on CPUs. In eval
    mode (attacks, evaluation) it is a plain BatchNorm with the shared running statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()  # statistics in fp32 also under bf16 autocast
        count = xf.new_tensor([x.numel() // c])
        with warnings.catch_warnings():
            # deprecated in favour of a functional collective that has no autograd support yet
            warnings.simplefilter("ignore", FutureWarning)
            stats = dist_nn.all_reduce(torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c : 2 * c] / n - mean * mean
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
            self.num_batches_tracked.add_(1)
        out = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        return (out * self.weight[None, :, None, None] + self.bias[None, :, None, None]).to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """torch's SyncBatchNorm on CUDA, :class:`GlobalBatchNorm2d` elsewhere (same parameters/buffers)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            new.load_state_dict(child.state_dict())
            setattr(model, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner
