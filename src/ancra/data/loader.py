"""Getting batches: :func:`load_dataset` by config name, :func:`split_validation` and :class:`DeviceLoader`."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ancra.errors import UserError

from . import files
from .cifar import load_cifar
from .files import PathLike
from .fmnist import load_fashion_mnist
from .registry import DATASET_NAMES
from .splits import DatasetSplits
from .tiny_imagenet import load_tiny_imagenet


def load_dataset(name: str, data_dir: PathLike | None = None, download: bool = True) -> DatasetSplits:
    """Load a dataset by its config name (one of :data:`DATASET_NAMES`).

    ``data_dir`` is the folder given by ``--data-dir``; without it each dataset uses its
    default location (Debian package or ``~/.cache/ancra``). Tiny-ImageNet is never downloaded.
    """
    key = name.lower()
    if key == "fmnist":
        return load_fashion_mnist(data_dir, download=download)
    if key in ("cifar10", "cifar100"):
        return load_cifar(data_dir, num_classes=int(key[5:]), download=download)
    if key == "tiny-imagenet":
        root = data_dir if data_dir is not None else files.default_cache_dir() / "tiny-imagenet-200"
        return load_tiny_imagenet(root)
    raise UserError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")


def split_validation(
    x: torch.Tensor, y: torch.Tensor, val_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hold out ``val_size`` random training examples (e.g. for early stopping on robust accuracy).

    The split depends only on ``seed`` and ``len(x)`` (CPU generator), so every rank and every
    resumed run holds out the same examples. Both parts keep the original example order.
    Returns ``(train_x, train_y, val_x, val_y)``; ``val_size=0`` gives an empty validation set.
    """
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"x has {n} examples but y has {y.shape[0]}")
    if not 0 <= val_size < n:
        raise UserError(
            f"validation size {val_size} must be between 0 and {n - 1} (the training set has {n} "
            "examples); lower val_size in the config"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx = perm[:val_size].sort().values.to(x.device)
    train_idx = perm[val_size:].sort().values.to(x.device)
    return x[train_idx], y[train_idx.to(y.device)], x[val_idx], y[val_idx.to(y.device)]


# --------------------------------------------------------------------------------------------
# Device-resident loader with batched augmentation
# --------------------------------------------------------------------------------------------

AUGMENTATIONS: tuple[str | None, ...] = (None, "crop_flip", "flip")


def _mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from several integers (seed + epoch + step would collide)."""
    state = np.random.SeedSequence([v % (1 << 64) for v in values]).generate_state(2, dtype=np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


class DeviceLoader:
    """Iterate ``(float32 images in [0, 1], int64 labels)`` batches from uint8 tensors on a device.

    The whole dataset lives on ``device`` as uint8; each step gathers one batch, augments it
    with a single batched index operation and converts it to float there. Nothing is stateful
    except ``(epoch, start_step)``: the batches of an epoch are a pure function of
    ``(seed, epoch, rank, world_size)``, so resuming is ``set_epoch(e, start_step=s)``.

    Sharding follows :class:`torch.utils.data.DistributedSampler` in spirit but keeps global
    batches intact: step ``s`` of epoch ``e`` uses positions ``[s*G, (s+1)*G)`` of the epoch's
    permutation, ``G = batch_size * world_size``, and rank ``r`` takes positions
    ``[r*batch_size, (r+1)*batch_size)`` of that window. Augmentation parameters are drawn for
    the whole global batch from a generator seeded with ``(seed, epoch, step)`` and each rank
    uses its slice, so a 2-rank run with ``batch_size=B/2`` trains on exactly the same augmented
    examples as a 1-rank run with ``batch_size=B``.

    With ``drop_last=False`` the final partial global batch is split evenly across ranks (padded
    by wrapping around the permutation when it does not divide, as DistributedSampler does), so
    every rank runs the same number of steps.

    Args:
        images: ``(N, C, H, W)`` uint8 tensor (any device; it is moved to ``device`` once).
        labels: ``(N,)`` integer tensor.
        batch_size: examples per step on this rank.
        shuffle: a fresh permutation per epoch; ``False`` iterates in dataset order (evaluation).
        drop_last: drop the final partial global batch (keeps batch statistics uniform).
        augment: ``None``, ``"flip"`` (random horizontal flip) or ``"crop_flip"`` (random crop
            after zero padding by ``crop_padding`` pixels, then random flip; the CIFAR recipe).
        crop_padding: padding for the random crop, in pixels.
        seed: base seed of the permutation and the augmentation.
        device: where data lives and batches are produced.
        rank, world_size: this process's position in a data-parallel group.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = True,
        augment: str | None = None,
        crop_padding: int = 4,
        seed: int = 0,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a (N, C, H, W) uint8 tensor, got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if augment not in AUGMENTATIONS:
            raise UserError(f"unknown augmentation {augment!r}; valid values: none, crop_flip, flip")
        if crop_padding < 0:
            raise UserError(f"crop_padding must be >= 0, got {crop_padding}")
        if seed < 0:
            raise UserError(f"seed must be >= 0, got {seed}")
        n = images.shape[0]
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if drop_last and batch_size * world_size > n:
            raise UserError(
                f"batch_size {batch_size} x {world_size} process(es) exceeds the {n} examples, so an "
                "epoch would have no step; lower batch_size"
            )
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.crop_padding = crop_padding
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_step = 0

    @property
    def num_examples(self) -> int:
        return int(self.images.shape[0])

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        """Steps in a full epoch (the same on every rank), regardless of ``start_step``."""
        full, rest = divmod(self.num_examples, self.global_batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch whose batches ``iter(self)`` yields, starting at ``start_step``.

        Call it before every epoch (as with DistributedSampler); ``start_step`` resumes an
        interrupted epoch, and the next ``set_epoch`` call starts at step 0 again by default.
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if not 0 <= start_step <= len(self):
            raise ValueError(f"start_step must be in [0, {len(self)}], got {start_step}")
        self.epoch = epoch
        self.start_step = start_step

    def _permutation(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_examples)
        return torch.randperm(self.num_examples, generator=torch.Generator().manual_seed(self.seed + self.epoch))

    def _global_batches(self) -> list[tuple[torch.Tensor, int]]:
        """Each step's global batch (CPU indices, all ranks) and this rank's shard size."""
        perm = self._permutation()
        g = self.global_batch_size
        full = self.num_examples // g
        batches = [(chunk, self.batch_size) for chunk in perm[: full * g].view(full, g)]
        rest = perm[full * g :]
        if rest.numel() and not self.drop_last:
            pad = -rest.numel() % self.world_size
            if pad:  # wrap around so every rank gets an equal, non-empty shard
                rest = torch.cat([rest, perm[torch.arange(pad) % self.num_examples]])
            batches.append((rest, rest.numel() // self.world_size))
        return batches

    def batch_indices(self, step: int) -> torch.Tensor:
        """Dataset indices (CPU) of this rank's examples at ``step`` of the current epoch."""
        batch, size = self._global_batches()[step]
        return batch[self.rank * size : (self.rank + 1) * size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(self.start_step)

    def iter_from(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the current epoch's batches from ``step`` on (equal to skipping ``step`` batches)."""
        batches = self._global_batches()
        for s in range(step, len(batches)):
            batch, size = batches[s]
            lo, hi = self.rank * size, (self.rank + 1) * size
            idx = batch[lo:hi].to(self.device, non_blocking=True)
            x = self.images[idx]
            if self.augment is not None:
                x = self._augment(x, s, batch.numel(), lo, hi)
            yield x.float().div_(255.0), self.labels[idx]

    def _augment(self, x: torch.Tensor, step: int, global_size: int, lo: int, hi: int) -> torch.Tensor:
        """Random crop + flip of a uint8 batch as one gather on the padded batch.

        Parameters are drawn on the CPU for the whole global batch (identical on every rank and
        device type) and this rank keeps rows ``lo:hi``. A flip is a reversed column index, so
        crop and flip together are a single advanced-indexing operation.
        """
        b, c, h, w = x.shape
        pad = self.crop_padding if self.augment == "crop_flip" else 0
        gen = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch, step))
        params = torch.stack(
            [
                torch.randint(0, 2 * pad + 1, (global_size,), generator=gen),  # row offset
                torch.randint(0, 2 * pad + 1, (global_size,), generator=gen),  # column offset
                torch.randint(0, 2, (global_size,), generator=gen),  # flip?
            ]
        )[:, lo:hi].to(self.device, non_blocking=True)
        dy, dx, flip = params
        if pad:
            x = F.pad(x, (pad, pad, pad, pad))  # zero padding, once for the whole batch
        dev = x.device
        rows = dy[:, None] + torch.arange(h, device=dev)  # (b, h)
        cols_fwd = torch.arange(w, device=dev)
        cols = dx[:, None] + torch.where(flip[:, None].bool(), cols_fwd.flip(0), cols_fwd)  # (b, w)
        return x[
            torch.arange(b, device=dev)[:, None, None, None],
            torch.arange(c, device=dev)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
