"""Reverse Attention (RA), docs/METHOD.md, "Reverse Attention": one mechanism shared by every architecture.

The last ``ra_blocks`` residual blocks of a network's final stage become RA blocks. For each, with
``z`` the block's output after the architecture's post-activation:

    aux = fc(pool(z))                 auxiliary logits of this block
    j   = y (labels given) | argmax(aux) (inference: the block's own prediction)
    z'  = z * W[j]                    mask from the shared classifier, NOT detached

``z'`` feeds the next block; the final logits are ``fc(pool(z'_last))``. Because pooling is linear,
the last block masks the pooled vector instead of the map (identical result, cheaper).

An architecture subclasses :class:`RANet` and supplies ``stem`` (everything before the final stage),
``final_stage`` (an ``nn.Sequential`` of blocks), ``post_activation`` (identity for ResNet, the
shared final BN+ReLU for WRN / PreAct) and ``classifier`` (the ``fc`` Linear). The modules keep their
community names (``layer4``, ``block3``, ``fc``, ``linear``...) so published checkpoints load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class RAOutput:
    """What a training forward returns: final logits, one aux logits tensor per RA block
    (empty without RA) and the pooled penultimate feature (the input of the final ``fc``)."""

    logits: torch.Tensor
    aux_logits: list[torch.Tensor] = field(default_factory=list)
    features: torch.Tensor | None = None


class RANet(nn.Module):
    """Base class: runs a network with Reverse Attention on its last ``ra_blocks`` blocks.

    ``model(x)`` returns logits only and masks with each block's own prediction, so it needs no
    labels and never touches ``train()``/``eval()`` (the RobustBench / AutoAttack interface).
    ``forward_with_aux(x, labels)`` is the training call: with labels the masks come from the
    labels, whatever the module's mode; without, from each block's prediction.
    """

    #: spatial size of the pooled map fed to ``fc`` (1 = global average pooling; the
    #: Tiny-ImageNet PreActResNet-18 pools its 8x8 map to 2x2, see docs/METHOD.md, "Reverse Attention").
    pool_size: int = 1
    ra_blocks: int = 0

    # --- supplied by each architecture -------------------------------------------------------
    def stem(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def final_stage(self) -> nn.Sequential:
        raise NotImplementedError

    @property
    def classifier(self) -> nn.Linear:
        raise NotImplementedError

    def post_activation(self, z: torch.Tensor) -> torch.Tensor:
        return z

    # --- RA mechanics ------------------------------------------------------------------------
    def _check_ra_blocks(self) -> None:
        n = len(self.final_stage)
        if not 0 <= self.ra_blocks <= n:
            raise ValueError(
                f"ra_blocks={self.ra_blocks} but the final stage has {n} blocks: choose 0 (plain network) to {n}"
            )

    def pool(self, z: torch.Tensor) -> torch.Tensor:
        """Pooled feature vector (B, D) that ``fc`` takes."""
        if self.pool_size == 1:
            return z.mean(dim=(2, 3))
        return F.adaptive_avg_pool2d(z, self.pool_size).flatten(1)

    def _mask_map(self, w: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Turn per-example classifier rows ``w`` (B, D) into a mask broadcastable to map ``z``.

        With pooling to PxP each pooled cell is weighted by its own classifier weights, so the
        (C*P*P) row is reshaped to (C, P, P) and upsampled to the map size."""
        b, c, h, wd = z.shape
        p = self.pool_size
        if p == 1:
            return w.view(b, c, 1, 1)
        m = w.view(b, c, p, p)
        return m.repeat_interleave(h // p, dim=2).repeat_interleave(wd // p, dim=3)

    def forward_with_aux(self, x: torch.Tensor, labels: torch.Tensor | None = None, mask_fn=None) -> RAOutput:
        """Training forward: final logits, aux logits of every RA block and the pooled feature.

        ``labels`` drive the masks when given (training), else each block's own argmax.
        ``mask_fn(aux, W) -> (B, D) rows or None`` replaces that gate; it exists for the adaptive
        evaluation (BPDA, soft and fixed-class gates, RA removed: ``ancra.evaluation.wrappers``)."""
        h = self.stem(x)
        blocks = list(self.final_stage)
        n_plain = len(blocks) - self.ra_blocks
        for block in blocks[:n_plain]:
            h = block(h)
        fc = self.classifier
        if self.ra_blocks == 0:
            features = self.pool(self.post_activation(h))
            return RAOutput(fc(features), [], features)

        aux_logits = []
        for i, block in enumerate(blocks[n_plain:]):
            z = self.post_activation(block(h))
            pooled = self.pool(z)
            aux = fc(pooled)
            aux_logits.append(aux)
            if mask_fn is not None:
                w = mask_fn(aux, fc.weight)
            else:
                # the mask keeps its gradient path to fc.weight (not detached)
                w = fc.weight[labels if labels is not None else aux.argmax(dim=1)]  # (B, D)
            if i == self.ra_blocks - 1:
                features = pooled if w is None else pooled * w  # == pool(z * mask): pooling is linear
                return RAOutput(fc(features), aux_logits, features)
            h = z if w is None else z * self._mask_map(w, z)
        raise AssertionError("unreachable")

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, *, with_aux: bool = False):
        """``model(x)``: logits with predicted-label RA. The optional arguments exist so that a
        DistributedDataParallel wrapper can route training forwards: ``model(x, y, with_aux=True)``
        is ``forward_with_aux(x, y)``."""
        out = self.forward_with_aux(x, labels)
        return out if with_aux else out.logits
