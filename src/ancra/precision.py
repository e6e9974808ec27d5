"""Numeric precision of training steps.

``fp32`` is the default everywhere and means real fp32: TF32 tensor cores are off on CUDA.
``tf32`` (CUDA only) lets matmuls and cuDNN convolutions round their inputs to TF32 (10-bit
mantissa, fp32 accumulation): faster on Ampere and later, approximate. ``bf16`` wraps the forward
passes and the loss of a training step (attacks included) in bf16 autocast: faster (about 2x for
ResNet-18 on an avx512_bf16 CPU, see docs/PERFORMANCE.md) but approximate. Backward passes and the
optimiser step run outside autocast, as PyTorch's AMP guidance asks (their ops follow the dtypes
the forward chose). Reported evaluation attacks always run in fp32 with TF32 off: low precision can
zero gradients and overstate robustness.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "tf32", "bf16")


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast for ``precision == 'bf16'``, a no-op context for fp32 and tf32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def no_autocast(device: torch.device):
    """Autocast switched off (for backward passes and optimiser steps inside an autocast region)."""
    return torch.autocast(device.type, enabled=False)


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA matmuls and cuDNN convolutions (global switches; no effect on CPUs)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
