"""CIFAR-10/100: the python-version pickles, read with a restricted unpickler, archive check and extraction."""

from __future__ import annotations

import builtins
import codecs
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from ancra.errors import UserError

from . import files
from .files import _DOWNLOAD_ERRORS, PathLike, _download, _safe_extractall, file_digest
from .splits import DatasetSplits

try:  # numpy >= 2 moved the pickle reconstruction helpers to numpy._core
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _np_multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _np_numeric  # type: ignore[no-redef]

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
"""Where the official ``cifar-*-python.tar.gz`` archives live."""

CIFAR_ARCHIVE_MD5: dict[str, str] = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
}
"""md5 of the official archives, checked before extracting (so a truncated download is caught)."""


@dataclass(frozen=True)
class _CifarLayout:
    archive: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: str


_CIFAR_LAYOUTS = {
    10: _CifarLayout(
        archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        label_key="labels",
    ),
    100: _CifarLayout(
        archive="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        label_key="fine_labels",
    ),
}


def _safe_pickle_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR batch needs: plain containers and numpy array reconstruction.

    Both old (``numpy.core``) and new (``numpy._core``) module names are accepted because the
    official files were written by numpy 1 and files re-saved by numpy 2 use the new names.
    ``_codecs.encode`` is how Python 3 writes ``bytes`` at protocol 2; it is a pure function.
    """
    allowed: dict[tuple[str, str], Any] = {}
    for module in ("builtins", "__builtin__"):  # __builtin__: Python 2 pickles
        for name in ("dict", "list", "bytes", "str", "int"):
            allowed[(module, name)] = getattr(builtins, name)
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = _np_multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = _np_multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = _np_numeric._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    allowed[("_codecs", "encode")] = codecs.encode
    return allowed


_SAFE_PICKLE_GLOBALS = _safe_pickle_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that cannot run code: any global outside the allowlist is refused.

    A plain ``pickle.load`` executes whatever callable the file names, so a tampered
    "dataset" file could run arbitrary commands; CIFAR batches only need the allowlisted names.
    """

    def __init__(self, file: BinaryIO, path: Path) -> None:
        # latin1 is numpy's recommended encoding for the Python 2 pickles CIFAR ships.
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise UserError(
                f"refusing to load {self._path}: it references {module}.{name}, which a CIFAR "
                f"batch never contains (the file may be malicious); replace it with a fresh "
                f"copy from {CIFAR_URL}"
            ) from None


def _safe_unpickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, path).load()
    except UserError:
        raise
    except Exception as exc:  # a corrupt pickle can raise almost anything (EOFError, ValueError...)
        raise UserError(
            f"{path} is not a readable CIFAR batch ({type(exc).__name__}: {exc}); "
            "delete the folder and extract the archive again"
        ) from None


def _load_cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise UserError(
            f"{path} is missing: the CIFAR-{num_classes} folder is incomplete; delete "
            f"{path.parent} and extract the archive again"
        )
    obj = _safe_unpickle(path)
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a CIFAR batch dict; replace it")
    # Official files have bytes keys (Python 2 str); files re-saved by Python 3 may have str keys.
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in batch or label_key not in batch:
        raise UserError(
            f"{path} lacks the 'data' or '{label_key}' entry: it is not a CIFAR-{num_classes} batch "
            f"(CIFAR-10 uses 'labels', CIFAR-100 'fine_labels'); check num_classes and the file"
        )
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise UserError(
            f"{path}: 'data' must be a uint8 array of shape (N, 3072), got "
            f"{type(data).__name__} {getattr(data, 'dtype', '')} {shape}; replace the file"
        )
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{path}: '{label_key}' is not a list of integers ({exc}); replace the file") from None
    if labels.shape != (data.shape[0],):
        raise UserError(
            f"{path} has {data.shape[0]} images but '{label_key}' has shape {labels.shape}; replace the file"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(
            f"{path} has labels in [{labels.min()}, {labels.max()}], outside 0..{num_classes - 1}; "
            f"is it really CIFAR-{num_classes}?"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _extract_cifar(archive: Path, layout: _CifarLayout) -> None:
    """Extract into a temporary folder, then rename: an interrupted extraction leaves no half folder."""
    root = archive.parent
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            _safe_extractall(tar, tmp)
        extracted = tmp / layout.folder
        if not extracted.is_dir():
            raise UserError(f"{archive} does not contain {layout.folder}/; it is not the right archive")
        os.replace(extracted, root / layout.folder)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UserError(f"could not extract {archive} ({exc}); delete it and download it again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_cifar(root: PathLike | None = None, num_classes: int = 10, download: bool = True) -> DatasetSplits:
    """Load CIFAR-10 or CIFAR-100 (50000 train / 10000 test, 3x32x32) from the python version.

    ``root`` may hold the extracted folder (``cifar-10-batches-py/`` or ``cifar-100-python/``),
    may be that folder itself, or may hold the official ``.tar.gz`` (md5-checked, then
    extracted next to it). Otherwise, if ``download``, the archive is fetched from
    :data:`CIFAR_URL` into ``root`` (default ``~/.cache/ancra/cifar``). Batches are unpickled
    with an allowlist, so a tampered file cannot execute code.
    """
    if num_classes not in _CIFAR_LAYOUTS:
        raise UserError(f"CIFAR num_classes must be 10 or 100, got {num_classes}")
    layout = _CIFAR_LAYOUTS[num_classes]
    root = Path(root).expanduser() if root is not None else files.default_cache_dir() / "cifar"
    folder = root / layout.folder
    if not folder.is_dir() and (root / layout.test[0]).is_file():
        folder = root  # the user pointed at the batches folder itself
    if not folder.is_dir():
        with files.preparing(root):  # one process downloads and extracts, the others wait
            if not folder.is_dir():
                archive = root / layout.archive
                if not archive.is_file():
                    url = CIFAR_URL + layout.archive
                    if not download:
                        raise UserError(
                            f"CIFAR-{num_classes} not found: neither {folder} nor {archive} exists; "
                            f"download {url} into {root} (or pass --data-dir DIR holding it), or allow downloading"
                        )
                    try:
                        _download(url, archive)
                    except _DOWNLOAD_ERRORS as exc:
                        raise UserError(
                            f"could not download {url} to {archive} ({exc}); fetch it by hand into {root} "
                            "or pass --data-dir DIR holding it"
                        ) from None
                expected = CIFAR_ARCHIVE_MD5[layout.archive]
                actual = file_digest(archive)
                if actual != expected:
                    raise UserError(
                        f"{archive} is corrupt or incomplete (md5 {actual}, expected {expected}); "
                        "delete it and download it again"
                    )
                _extract_cifar(archive, layout)

    def load(names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [_load_cifar_batch(folder / n, layout.label_key, num_classes) for n in names]
        # concatenate always copies, so the result is writable even if unpickled from bytes.
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        return torch.from_numpy(x), torch.from_numpy(y)

    train_x, train_y = load(layout.train)
    test_x, test_y = load(layout.test)
    return DatasetSplits(train_x, train_y, test_x, test_y, num_classes=num_classes, name=f"cifar{num_classes}")
