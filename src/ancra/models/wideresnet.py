"""Wide ResNets (WRN-34-10, WRN-28-10), TRADES naming, with Reverse Attention.

State-dict keys: ``conv1, block1.layer.0.bn1, ..., block3.layer.N.conv2, bn1, fc``. The blocks are
pre-activation; the network's final BN+ReLU (``bn1``/``relu``) is shared: each RA block (the last
``ra_blocks`` blocks of ``block3``) applies it to its residual output before the aux head and the
mask (docs/METHOD.md, "Reverse Attention"), and without RA it runs once after the last block, as in plain WRN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ra import RANet


class WideBasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        # The TRADES WRN feeds the pre-activated input to the projection shortcut.
        shortcut = x if self.equal_in_out else self.convShortcut(act)
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(n)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(RANet):
    def __init__(
        self,
        depth: int = 34,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        ra_blocks: int = 2,
        drop_rate: float = 0.0,
        pool_size: int = 1,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.ra_blocks = ra_blocks
        self.pool_size = pool_size
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=False)
        self.fc = nn.Linear(ch[3] * pool_size * pool_size, num_classes)
        self._check_ra_blocks()

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.block1(self.conv1(x)))

    @property
    def final_stage(self) -> nn.Sequential:
        return self.block3.layer

    @property
    def classifier(self) -> nn.Linear:
        return self.fc

    def post_activation(self, z: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(z))


def wrn34_10(num_classes: int = 10, in_channels: int = 3, ra_blocks: int = 2, **kw) -> WideResNet:
    return WideResNet(34, 10, num_classes, in_channels, ra_blocks, **kw)


def wrn28_10(num_classes: int = 10, in_channels: int = 3, ra_blocks: int = 2, **kw) -> WideResNet:
    return WideResNet(28, 10, num_classes, in_channels, ra_blocks, **kw)
