"""Where a model to evaluate comes from: an ancra weights file, or a network built elsewhere.

``ancra eval`` and ``ancra verify`` open four kinds of model, all through :func:`load_source`:

==============  ==========================================================================
``ancra``        a weights file of ``ancra train`` (``best.pt`` / ``last.pt``): architecture,
                 dataset and eps come from the file
``state_dict``   ``--arch NAME --state-dict FILE``: a registry architecture and a state dict
                 saved elsewhere (``module.`` and ``_orig_mod.`` prefixes of DDP and
                 torch.compile are stripped; a dict holding ``state_dict`` or ``model`` is
                 unwrapped), read weights-only
``torchscript``  ``--torchscript FILE``: a scripted or traced module; loading it runs no Python
``module``       ``--model pkg.mod:build``: imports ``pkg.mod`` and calls ``build()``, which
                 returns an ``nn.Module``. This RUNS THE USER'S CODE: it is an explicit flag,
                 and a report never makes ``ancra verify`` import anything by itself
==============  ==========================================================================

A foreign model takes images in [0, 1] and returns ``(N, classes)`` logits; any normalisation it
expects is its own business (put it inside the module). Everything a report needs to find the
model again is in :attr:`ModelSource.record`, and :attr:`ModelSource.digest` is the SHA-256 of the
file (``ancra verify`` checks it), or of the weights for a ``module`` model, which has no file.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checkpoint import Checkpoint, load_checkpoint, load_state, safe_load
from .data import file_digest
from .data.registry import DatasetInfo, dataset_info
from .errors import UserError, first_line
from .models import MODELS, create_model

KINDS = ("ancra", "state_dict", "torchscript", "module")
#: wrapper prefixes of saved state dicts: DistributedDataParallel, torch.compile
PREFIXES = ("module.", "_orig_mod.")


@dataclass
class ModelSource:
    """A model to evaluate, how to find it again, and what its file says (for ancra files)."""

    kind: str
    model: nn.Module
    record: dict  # JSON-able: what `ancra verify` needs to rebuild the model (paths, arch, ...)
    digest: str  # "sha256:..." of the file, or of the weights (module kind)
    path: Path | None = None
    checkpoint: Checkpoint | None = None  # the ancra file's meta and training config
    notes: list[str] = field(default_factory=list)

    @property
    def is_foreign(self) -> bool:
        return self.kind != "ancra"


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``model``'s state dict, in key order."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def strip_prefixes(state: dict) -> dict:
    """Keys without the ``module.`` / ``_orig_mod.`` prefixes DDP and torch.compile add."""
    out = {}
    for key, value in state.items():
        while key.startswith(PREFIXES):
            key = key[len(next(p for p in PREFIXES if key.startswith(p))) :]
        out[key] = value
    return out


def state_dict_of(obj, path: Path) -> dict:
    """The tensors of a saved state dict, unwrapped from the usual containers."""
    for _ in range(3):  # {"state_dict": ...}, {"model": ...}, {"model": {"state_dict": ...}}
        if isinstance(obj, dict) and not any(torch.is_tensor(v) for v in obj.values()):
            inner = next((obj[k] for k in ("state_dict", "model", "net", "model_state_dict") if k in obj), None)
            if isinstance(inner, dict):
                obj = inner
                continue
        break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise UserError(
            f"{path} holds no state dict (a mapping of parameter names to tensors, possibly under "
            f"'state_dict' or 'model'): save one with torch.save(model.state_dict(), path)"
        )
    return strip_prefixes(obj)


def _from_state_dict(
    arch: str, path: Path, info: DatasetInfo, num_classes: int, ra_blocks: int, options: dict
) -> nn.Module:
    if arch not in MODELS:
        raise UserError(f"unknown --arch {arch!r}: choose one of {', '.join(sorted(MODELS))}")
    state = state_dict_of(safe_load(path), path)
    model = create_model(arch, num_classes, info.channels, ra_blocks=ra_blocks, **options)
    load_state(
        model,
        state,
        f"{path} does not fit --arch {arch} with {num_classes} classes",
        "check --arch, --arch-option (e.g. width) and --num-classes",
    )
    return model


def _from_torchscript(path: Path) -> nn.Module:
    if not path.is_file():
        raise UserError(f"--torchscript {path} does not exist")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - any failure to read it means: not a TorchScript file
        raise UserError(
            f"{path} is not a TorchScript file ({first_line(e, 160)}): save one with "
            f"torch.jit.script(model).save(path) or torch.jit.trace(model, example).save(path)"
        ) from None


def _from_module(spec: str) -> nn.Module:
    mod_name, sep, fn_name = spec.partition(":")
    if not sep or not mod_name or not fn_name:
        raise UserError(f"--model expects module:callable (e.g. mypkg.nets:build), got {spec!r}")
    if os.getcwd() not in sys.path:  # `ancra` as a console script: modules beside the user's files
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - the user's import failed: say why in one line
        raise UserError(f"--model {spec}: cannot import {mod_name} ({type(e).__name__}: {e})") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise UserError(f"--model {spec}: {mod_name} has no callable {fn_name}")
    try:
        model = fn()
    except Exception as e:  # noqa: BLE001
        raise UserError(f"--model {spec}: {fn_name}() failed ({type(e).__name__}: {e})") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"--model {spec}: {fn_name}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def check_logits(model: nn.Module, x: torch.Tensor, num_classes: int, what: str) -> None:
    """Refuse a model whose output on a batch of two images is not ``(2, num_classes)`` logits."""
    model.eval()
    try:
        with torch.no_grad():
            out = model(x[:2])
    except Exception as e:  # noqa: BLE001
        raise UserError(
            f"{what} fails on a batch of {tuple(x[:2].shape)} images in [0, 1]: {first_line(e, 160)}"
        ) from None
    if not torch.is_tensor(out) or out.shape != (len(x[:2]), num_classes):
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise UserError(
            f"{what} returns {got} for {len(x[:2])} images; it must return (N, {num_classes}) logits "
            f"(check --num-classes; wrap models that return tuples or dicts)"
        )
    if not out.is_floating_point() or not torch.isfinite(out).all():
        raise UserError(f"{what} returns non-finite or non-float outputs; it must return (N, {num_classes}) logits")


def load_source(
    checkpoint: Path | None = None,
    *,
    arch: str | None = None,
    state_dict: Path | None = None,
    torchscript: Path | None = None,
    module: str | None = None,
    dataset: str | None = None,
    num_classes: int | None = None,
    ra_blocks: int = 0,
    arch_options: dict | None = None,
) -> ModelSource:
    """Open the one model the arguments name (see the module docstring); foreign models need
    ``dataset``. Every problem is one :class:`UserError` line, raised before anything is written."""
    given = [
        k for k, v in (("CHECKPOINT", checkpoint), ("--state-dict", state_dict), ("--torchscript", torchscript),
                       ("--model", module)) if v
    ]  # fmt: skip
    if (arch or arch_options) and not state_dict:
        raise UserError("--arch and --arch-option go with --state-dict FILE")
    if len(given) != 1:
        raise UserError(
            "name one model: an ancra CHECKPOINT, --arch NAME --state-dict FILE, --torchscript FILE or "
            f"--model module:callable (got {', '.join(given) if given else 'none'})"
        )
    if state_dict and not arch:
        raise UserError(f"--state-dict needs --arch NAME (one of {', '.join(sorted(MODELS))})")
    if checkpoint:
        for flag, value in (("--num-classes", num_classes), ("--ra-blocks", ra_blocks or None)):
            if value is not None:
                raise UserError(f"{flag} is for foreign models: an ancra checkpoint records its architecture")
        checkpoint = Path(checkpoint)
        ckpt = load_checkpoint(checkpoint)
        return ModelSource(
            "ancra",
            ckpt.model,
            {"kind": "ancra", "path": str(checkpoint)},
            "sha256:" + file_digest(checkpoint, "sha256"),
            path=checkpoint,
            checkpoint=ckpt,
        )
    if not dataset:
        raise UserError("a model built outside ancra needs --dataset NAME (fmnist, cifar10, cifar100, tiny-imagenet)")
    info = dataset_info(dataset)
    classes = num_classes or info.num_classes
    if classes < 2:
        raise UserError(f"--num-classes must be >= 2, got {classes}")
    if ra_blocks < 0:
        raise UserError(f"--ra-blocks must be >= 0, got {ra_blocks}")
    record = {"num_classes": classes, "in_channels": info.channels}
    if state_dict:
        path = Path(state_dict)
        options = dict(arch_options or {})
        model = _from_state_dict(arch, path, info, classes, ra_blocks, options)
        record = {"kind": "state_dict", "path": str(path), "arch": arch, "ra_blocks": ra_blocks, **record}
        if options:
            record["arch_options"] = options
        digest = "sha256:" + file_digest(path, "sha256")
    elif torchscript:
        path = Path(torchscript)
        model = _from_torchscript(path)
        record = {"kind": "torchscript", "path": str(path), **record}
        digest = "sha256:" + file_digest(path, "sha256")
    else:
        path = None
        model = _from_module(module)
        record = {"kind": "module", "callable": module, **record}
        digest = weights_digest(model)
    model = model.float().eval()
    probe = torch.rand(2, info.channels, info.size, info.size)
    check_logits(model, probe, classes, f"the model of {record.get('path') or module}")
    return ModelSource(record["kind"], model, record, digest, path=path)


def source_from_record(
    record: dict, *, path: Path | None = None, module: str | None = None, dataset: str
) -> ModelSource:
    """Rebuild the model a report recorded (``ancra verify``). A ``module`` model is imported only
    when the caller passes ``module`` itself: a report is data and never makes us run code."""
    kind = record.get("kind", "ancra")
    if kind not in KINDS:
        raise UserError(f"the report records an unknown model kind {kind!r}")
    file = path or (Path(record["path"]) if record.get("path") else None)
    if kind in ("ancra", "state_dict", "torchscript") and (file is None or not file.is_file()):
        raise UserError(f"model file {file} not found: pass --checkpoint PATH")
    if kind == "ancra":
        return load_source(file)
    if kind == "module":
        if not module:
            raise UserError(
                f"the report's model was built by --model {record.get('callable')}: pass --model "
                f"{record.get('callable')} to verify it (a report never makes ancra import code by itself)"
            )
        return load_source(module=module, dataset=dataset, num_classes=record.get("num_classes"))
    if kind == "torchscript":
        return load_source(torchscript=file, dataset=dataset, num_classes=record.get("num_classes"))
    return load_source(
        arch=record.get("arch"),
        state_dict=file,
        dataset=dataset,
        num_classes=record.get("num_classes"),
        ra_blocks=int(record.get("ra_blocks", 0)),
        arch_options=record.get("arch_options") or None,
    )
