"""Checkpoints: atomic writes, weights-only reads.

A weights file (``last.pt``, ``best.pt``) is a plain dict of tensors and builtins::

    {"format": "ancra-weights/1", "model": {"name": ..., "num_classes": ..., ...},
     "state_dict": {...}, "meta": {...}}

so ``torch.load(path, weights_only=True)`` reads it and :func:`load_model` rebuilds the model from
its spec; :func:`load_checkpoint` also returns the training config the file records, validated, which
is where ``ancra eval`` and ``ancra analyze`` both read the dataset and eps. Files are never
unpickled with code execution: a file that needs it is refused.
Writes go to a temporary file in the same folder, are fsynced, then renamed over the target, so a
crash mid-write never destroys the previous checkpoint.
"""

from __future__ import annotations

import errno
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .distributed import unwrap
from .errors import UserError, first_line
from .models import create_model

if TYPE_CHECKING:
    from .config import Config

FORMAT = "ancra-weights/1"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: permissions of files written atomically: what open() would give under this process's umask
_FILE_MODE = 0o666 & ~_umask()


def _caused_by_full_disk(e: BaseException | None) -> bool:
    """ENOSPC anywhere in the exception chain (torch.save re-raises it as a RuntimeError)."""
    while e is not None:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        e = e.__cause__ or e.__context__
    return False


def _atomic_write(path: str | os.PathLike, write, mode: str) -> None:
    """Write ``path`` through ``write(file)`` into a temp file in the same folder, fsync, rename
    over the target and fsync the folder: a crash or a full disk never leaves a half file where a
    good one was (the temp file is removed; the previous file is untouched)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; a renamed file gets the usual permissions
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if _caused_by_full_disk(e):
            raise UserError(
                f"disk full while writing {path}: free some space; the previous {path.name} is intact"
            ) from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically (the old file survives a crash)."""
    _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically, like :func:`atomic_save`."""
    _atomic_write(path, lambda f: f.write(text), "w")


def safe_load(path: str | os.PathLike, map_location="cpu", what: str = "checkpoint"):
    """``torch.load(weights_only=True)`` with one-line errors for missing, unsafe or corrupt files
    (``what`` the file is, for the message: a checkpoint, an evaluation's per-example results...)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"refusing to load {path}: it is not a weights-only {what} ({first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - any failure to parse an untrusted file is a refusal
        raise UserError(f"cannot read {what} {path}: {first_line(e)} (truncated or corrupt?)") from None


def load_state(model: nn.Module, state: dict, what: str, fix: str = "") -> None:
    """``model.load_state_dict(state)``, strict; a mismatch (missing or unexpected keys, other
    shapes) is one :class:`UserError` line: ``{what}: {torch's findings}; {fix}``."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        found = "; ".join(line.strip() for line in str(e).splitlines()[1:] if line.strip()) or first_line(e)
        raise UserError(f"{what}: {found[:240]}" + (f"; {fix}" if fix else "")) from None


def to_cpu(obj):
    """``obj`` with every tensor (in dicts, lists and tuples) detached and moved to the CPU.

    Checkpoints hold CPU tensors only: a file written on a GPU then loads with a plain
    ``torch.load(path, weights_only=True)`` on a machine without one."""
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        out = type(obj)((k, to_cpu(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # a state_dict's per-module versions
            out._metadata = obj._metadata
        return out
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def save_weights(model: nn.Module, path: str | os.PathLike, meta: dict | None = None) -> None:
    """Write a weights file of ``model`` (unwrapped from DDP / torch.compile) and its spec, on the CPU."""
    net = unwrap(model)
    state = to_cpu(net.state_dict())
    atomic_save({"format": FORMAT, "model": dict(net.spec), "state_dict": state, "meta": meta or {}}, path)


@dataclass
class Checkpoint:
    """A weights file read back: the model (eval mode), its meta (epoch, validation accuracies)
    and the training config it records (validated; ``None`` when it records none)."""

    path: Path
    model: nn.Module
    meta: dict
    config: Config | None
    given: dict = field(default_factory=dict, repr=False)  # the recorded config's keys as written

    def recorded(self, section: str, key: str):
        """The validated value the file records for ``section.key``, or None if it records none
        (a config's defaults are not a record of what the model was trained with)."""
        if self.config is None or key not in (self.given.get(section) or {}):
            return None
        return getattr(getattr(self.config, section), key)

    def dataset(self, override: str | None = None, flag: str | None = "--dataset") -> str:
        name = override or self.recorded("data", "dataset")
        if not name:
            fix = f": pass {flag}" if flag else " (use a checkpoint written by `ancra train`)"
            raise UserError(f"{self.path} records no data.dataset{fix}")
        return name.lower()  # dataset names are case-insensitive (load_dataset); compared lower-case

    def eps(self, override: float | None = None) -> float:
        eps = override if override is not None else self.recorded("objective", "eps")
        if eps is None:
            from .data.registry import find_dataset

            info = find_dataset(self.recorded("data", "dataset"))
            usual = f" (the usual eps on {info.name} is {info.default_eps:.4g})" if info else ""
            raise UserError(f"{self.path} records no objective.eps: pass --eps{usual}")
        return float(eps)

    def data_dir(self, override: str | os.PathLike | None = None) -> Path | None:
        recorded = self.recorded("data", "data_dir")
        return Path(override) if override else (Path(recorded) if recorded else None)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> Checkpoint:
    """:func:`load_model` plus the file's meta and validated training config."""
    from .config import config_from_dict  # config imports the model registry, as this module does

    model = load_model(path, map_location)
    meta = model.checkpoint_meta if isinstance(model.checkpoint_meta, dict) else {}
    raw = meta.get("config")
    config = None
    if raw is not None:
        if not isinstance(raw, dict):
            raise UserError(f"{path}: the recorded training config is not a table of sections")
        try:
            config = config_from_dict(raw)
        except UserError as e:
            raise UserError(f"{path}: its recorded training config is invalid: {e}") from None
    return Checkpoint(Path(path), model, meta, config, raw or {})


def load_model(path: str | os.PathLike, map_location="cpu") -> nn.Module:
    """Rebuild the model of a weights file, in eval mode, ready for evaluation."""
    ckpt = safe_load(path, map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise UserError(
            f"{path} is not an ancra weights file (expected format {FORMAT}; "
            "use last.pt or best.pt of an `ancra train` run)"
        )
    spec, state = ckpt["model"], ckpt.get("state_dict")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise UserError(f"{path}: its model spec {str(spec)[:120]} names no architecture")
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise UserError(f"{path}: its state_dict is not a mapping of parameter names to tensors")
    spec = dict(spec)
    try:
        model = create_model(spec.pop("name"), **spec)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a spec no constructor accepts (negative widths, ...)
        raise UserError(f"{path}: its model spec {ckpt['model']} cannot be built ({type(e).__name__}: {e})") from None
    load_state(model, state, f"{path}: weights do not match the model {ckpt['model']}")
    model.eval()
    model.checkpoint_meta = ckpt.get("meta", {})
    return model
