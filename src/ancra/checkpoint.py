"""Checkpoints: atomic writes, weights-only reads.

A weights file (``last.pt``, ``best.pt``) is a plain dict of tensors and builtins::

    {"format": "ancra-weights/1", "model": {"name": ..., "num_classes": ..., ...},
     "state_dict": {...}, "meta": {...}}

so ``torch.load(path, weights_only=True)`` reads it and :func:`load_model` rebuilds the model from
its spec. Files are never unpickled with code execution: a file that needs it is refused.
Writes go to a temporary file in the same folder, are fsynced, then renamed over the target, so a
crash mid-write never destroys the previous checkpoint.
"""

from __future__ import annotations

import errno
import os
import pickle
import tempfile
from pathlib import Path

import torch
from torch import nn

from .distributed import unwrap
from .errors import UserError
from .models import create_model

FORMAT = "ancra-weights/1"


def _caused_by_full_disk(e: BaseException | None) -> bool:
    """ENOSPC anywhere in the exception chain (torch.save re-raises it as a RuntimeError)."""
    while e is not None:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        e = e.__cause__ or e.__context__
    return False


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` via temp file + fsync + rename (the old file survives a crash)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if _caused_by_full_disk(e):
            raise UserError(f"disk full while writing {path}: free some space; the previous {path.name} is intact") from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def safe_load(path: str | os.PathLike, map_location="cpu"):
    """``torch.load(weights_only=True)`` with one-line errors for missing, unsafe or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"refusing to load {path}: it is not a weights-only checkpoint ({first[:200]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"cannot read checkpoint {path}: {str(e).splitlines()[0][:200]} (truncated or corrupt?)") from None


def save_weights(model: nn.Module, path: str | os.PathLike, meta: dict | None = None) -> None:
    """Write a weights file of ``model`` (unwrapped from DDP / torch.compile) and its spec."""
    net = unwrap(model)
    atomic_save({"format": FORMAT, "model": dict(net.spec), "state_dict": net.state_dict(),
                 "meta": meta or {}}, path)


def load_model(path: str | os.PathLike, map_location="cpu") -> nn.Module:
    """Rebuild the model of a weights file, in eval mode, ready for evaluation."""
    ckpt = safe_load(path, map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise UserError(f"{path} is not an ancra weights file (expected format {FORMAT}; "
                        "use last.pt or best.pt of an `ancra train` run)")
    spec = dict(ckpt["model"])
    model = create_model(spec.pop("name"), **spec)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not match the model {ckpt['model']}: {str(e).splitlines()[0][:200]}") from None
    model.eval()
    model.checkpoint_meta = ckpt.get("meta", {})
    return model
