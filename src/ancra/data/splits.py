"""The result type of every dataset loader: uint8 image tensors plus int64 labels per split."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class DatasetSplits:
    """A dataset as uint8 image tensors plus int64 labels, ready for :class:`DeviceLoader`.

    Images stay uint8 ``(N, C, H, W)`` until the loader converts a batch to float on the device:
    that is 4x less memory than float32 and makes the dataset cheap to keep on a GPU.
    ``test_*`` is the split used for reported robustness numbers (for Tiny-ImageNet: its
    labelled ``val`` folder, since the official test labels are not public).
    """

    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    num_classes: int
    name: str

    @property
    def in_channels(self) -> int:
        """Number of image channels (1 for Fashion-MNIST, 3 otherwise): the model's input width."""
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        """Side length in pixels (all supported datasets have square images)."""
        return int(self.train_x.shape[-1])
