"""CIFAR-style ResNets (3x3 stem, no max-pool), kuangliu naming, with Reverse Attention.

State-dict keys: ``conv1, bn1, layer1.0.conv1, ..., layer4.1.shortcut.0, fc``, the naming of the
reference ResNet18_RA, so its checkpoints load with ``strict=True``. RA blocks are the last
``ra_blocks`` blocks of the final stage (both ``layer4`` blocks for ResNet-18); the block output
(after its ReLU) is masked directly, with no extra activation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .ra import RANet


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(RANet):
    """ResNet with ``len(num_blocks)`` stages of BasicBlocks, stage ``i`` of ``widths[i]`` channels."""

    def __init__(
        self,
        num_blocks: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
        ra_blocks: int = 2,
        pool_size: int = 1,
    ) -> None:
        super().__init__()
        if len(num_blocks) != len(widths) or not num_blocks:
            raise ValueError("num_blocks and widths must be non-empty and of the same length")
        self.ra_blocks = ra_blocks
        self.pool_size = pool_size
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        self._stage_names = []
        for i, (n, planes) in enumerate(zip(num_blocks, widths)):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride=(1 if i == 0 or b > 0 else 2)))
                in_planes = planes
            name = f"layer{i + 1}"
            setattr(self, name, nn.Sequential(*blocks))
            self._stage_names.append(name)
        self.fc = nn.Linear(in_planes * pool_size * pool_size, num_classes)
        self._check_ra_blocks()

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for name in self._stage_names[:-1]:
            out = getattr(self, name)(out)
        return out

    @property
    def final_stage(self) -> nn.Sequential:
        return getattr(self, self._stage_names[-1])

    @property
    def classifier(self) -> nn.Linear:
        return self.fc


def resnet18(num_classes: int = 10, in_channels: int = 3, ra_blocks: int = 2, **kw) -> ResNet:
    return ResNet([2, 2, 2, 2], [64, 128, 256, 512], num_classes, in_channels, ra_blocks, **kw)


def resnet34(num_classes: int = 10, in_channels: int = 3, ra_blocks: int = 2, **kw) -> ResNet:
    return ResNet([3, 4, 6, 3], [64, 128, 256, 512], num_classes, in_channels, ra_blocks, **kw)


def narrow_resnet(
    num_classes: int = 10,
    in_channels: int = 1,
    ra_blocks: int = 2,
    width: int = 16,
    num_blocks: Sequence[int] = (1, 1, 2),
    **kw,
) -> ResNet:
    """A small ResNet for CPUs (Fashion-MNIST 1x28x28 by default): stage ``i`` has
    ``width * 2**i`` channels; the final stage needs at least ``ra_blocks`` blocks."""
    widths = [width * 2**i for i in range(len(num_blocks))]
    return ResNet(list(num_blocks), widths, num_classes, in_channels, ra_blocks, **kw)
