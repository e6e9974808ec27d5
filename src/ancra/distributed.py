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
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn


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


def init_distributed(device: str) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group if there is one; returns the rank info and this rank's device.

    ``device`` is ``auto``, ``cpu`` or ``cuda``; under torchrun with CUDA each rank takes
    ``cuda:LOCAL_RANK``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if world == 1:
        return DistInfo(), torch.device("cuda" if use_cuda else "cpu")
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
        dev = torch.device("cuda", info.local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return info, dev


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


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
