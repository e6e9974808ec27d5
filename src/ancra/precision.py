"""Numeric precision of training steps.

fp32 is the default everywhere. ``bf16`` wraps training steps (attacks included) in bf16 autocast:
faster (about 2x for ResNet-18 on an avx512_bf16 CPU, see docs/PERFORMANCE.md) but approximate, so
it is an option, never the default. Reported evaluation attacks always run in fp32: low precision
can zero gradients and overstate robustness.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16")


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast for ``precision == 'bf16'``, a no-op context for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
