"""PreActResNet-18 (the Tiny-ImageNet recipe), naming ``conv1, layer1..4, bn, linear``, with RA.

The final BN+ReLU (``bn``) is shared: each RA block (the last ``ra_blocks`` blocks of ``layer4``)
applies it before its aux head and mask. For 64x64 inputs use ``pool_size=2``: the 8x8 map is
pooled to 2x2 and ``linear`` is Linear(512*2*2, classes), so the RA mask is ``W[j]`` reshaped to
(512, 2, 2) and upsampled x4 (each pooled cell weighted by its own classifier weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ra import RANet


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(RANet):
    def __init__(
        self,
        num_blocks=(2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        ra_blocks: int = 2,
        pool_size: int = 1,
    ) -> None:
        super().__init__()
        self.ra_blocks = ra_blocks
        self.pool_size = pool_size
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        in_planes = 64
        for i, (n, planes) in enumerate(zip(num_blocks, (64, 128, 256, 512))):
            blocks = []
            for b in range(n):
                blocks.append(PreActBlock(in_planes, planes, 1 if i == 0 or b > 0 else 2))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512 * pool_size * pool_size, num_classes)
        self._check_ra_blocks()

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.conv1(x))))

    @property
    def final_stage(self) -> nn.Sequential:
        return self.layer4

    @property
    def classifier(self) -> nn.Linear:
        return self.linear

    def post_activation(self, z: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(z))


def preactresnet18(num_classes: int = 10, in_channels: int = 3, ra_blocks: int = 2, **kw) -> PreActResNet:
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels, ra_blocks, **kw)
