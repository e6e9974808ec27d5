"""Datasets and a device-resident batch loader for adversarial training.

Design
------
Adversarial training spends almost all of its time in the attack (several forward/backward
passes per batch), so the input pipeline must never be the bottleneck and must never make a
run irreproducible. Two decisions follow:

* **Datasets are loaded once into uint8 tensors.** Every loader here returns a
  :class:`DatasetSplits` holding ``(N, C, H, W)`` uint8 images and int64 labels. Fashion-MNIST is
  parsed straight from its IDX files, CIFAR-10/100 from the pickled python-version batches, and
  Tiny-ImageNet is decoded with Pillow once and cached as ``ancra-cache.npz`` next to the images.
  uint8 keeps CIFAR-10's training set at 150 MB (600 MB as float32), so it fits on any GPU.

* **Batches are cut and augmented on the device.** :class:`DeviceLoader` keeps the uint8 tensors
  on the training device and produces each batch with a single gather: random crops (zero
  padding) and horizontal flips are expressed as per-example index arithmetic on the padded
  batch, so there is no per-sample Python loop and no PIL pipeline for CIFAR/Fashion-MNIST,
  no worker processes and no host-to-device copy of images per step.

Reproducibility is by construction rather than by saved state: the example order of epoch ``e``
is ``torch.randperm(N, generator=Generator().manual_seed(seed + e))`` computed on the CPU (so it is
identical on every rank and every device type), and the augmentation of step ``s`` is drawn
from a generator seeded from ``(seed, e, s)``. A run resumed at ``(epoch, step)`` therefore sees
exactly the batches the uninterrupted run would have seen, and ranks of a data-parallel run
see disjoint shards of the same global batches a single-process run would see.

Everything the user can fix (missing or corrupt files, bad sizes) raises
:class:`~ancra.errors.UserError` with a one-line message that names the file and the fix.
"""

from __future__ import annotations

import builtins
import codecs
import contextlib
import gzip
import hashlib
import http.client
import logging
import math
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ancra.errors import UserError

try:  # numpy >= 2 moved the pickle reconstruction helpers to numpy._core
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _np_multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _np_numeric  # type: ignore[no-redef]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

DATASET_NAMES: tuple[str, ...] = ("fmnist", "cifar10", "cifar100", "tiny-imagenet")
"""Names accepted by :func:`load_dataset` (and by the ``dataset`` config key)."""

DOWNLOAD_TIMEOUT_S = 60.0
"""Socket timeout for downloads: long enough for a slow mirror, short enough to fail clearly."""


def default_cache_dir() -> Path:
    """Where downloads go when no data directory is given (``~/.cache/ancra``)."""
    return Path.home() / ".cache" / "ancra"


# --------------------------------------------------------------------------------------------
# Result type
# --------------------------------------------------------------------------------------------


@dataclass
class DatasetSplits:
    """A dataset as uint8 image tensors plus int64 labels, ready for :class:`DeviceLoader`.

    Images stay uint8 ``(N, C, H, W)`` until the loader converts a batch to float on the device:
    that is 4x less memory than float32 and makes the dataset cheap to keep on a GPU.
    ``test_*`` is the split used for reported robustness numbers (for Tiny-ImageNet: its
    labelled ``val`` folder, since the official test labels are not public).
    """

    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    num_classes: int
    name: str

    @property
    def in_channels(self) -> int:
        """Number of image channels (1 for Fashion-MNIST, 3 otherwise): the model's input width."""
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        """Side length in pixels (all supported datasets have square images)."""
        return int(self.train_x.shape[-1])


# --------------------------------------------------------------------------------------------
# Downloads and hashing
# --------------------------------------------------------------------------------------------

_DOWNLOAD_ERRORS = (OSError, http.client.HTTPException)  # URLError, HTTPError, timeouts are OSError


def _download(url: str, dest: Path) -> None:
    """Fetch ``url`` into ``dest`` atomically (temp file in the same folder, then rename).

    Atomicity matters because an interrupted download must not leave a truncated file that a
    later run would find and try to use.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s -> %s", url, dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            shutil.copyfileobj(resp, out, 1 << 20)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def file_digest(path: PathLike, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in 1 MiB chunks (dataset checks, checkpoint hashes in reports)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)
# --------------------------------------------------------------------------------------------

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
"""Canonical download location of the four ``*.gz`` IDX files."""

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the files."""

FASHION_MNIST_FILES: dict[str, tuple[int, str]] = {
    "train-images-idx3-ubyte": (47_040_016, "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
    "train-labels-idx1-ubyte": (60_008, "9018921c3c673c538a1fc5bad174d6f9"),
    "t10k-images-idx3-ubyte": (7_840_016, "8181f5470baa50b63fa0f6fddb340f0a"),
    "t10k-labels-idx1-ubyte": (10_008, "15d484375f8d13e6eb1aabb0c3f46965"),
}
"""Decompressed size and md5 of the official files, keyed by file name without ``.gz``.

The md5 is of the *decompressed* bytes because Debian recompressed the archives (their ``.gz``
hashes differ from upstream's while the content is identical). It is only checked when a file
has exactly the full size, so small hand-made IDX files (tests, subsets) are still accepted.
"""

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (N, rows, cols)
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (N,)

_FMNIST_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
_FMNIST_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _find_idx_file(directory: Path, stem: str) -> Path | None:
    """The gzipped or the uncompressed copy of ``stem`` in ``directory``, if either exists."""
    for name in (stem + ".gz", stem):
        path = directory / name
        if path.is_file():
            return path
    return None


def _idx_stem(path: Path) -> str:
    return path.name[:-3] if path.name.endswith(".gz") else path.name


def read_idx(path: PathLike, magic: int) -> np.ndarray:
    """Parse one IDX file (gzipped or not) into a uint8 array, verifying everything it can.

    Checks, each failing with a :class:`UserError` that names the file: the gzip stream is
    complete, the magic number is ``magic``, the byte length is exactly what the header's
    dimensions imply, and, for a full-size official Fashion-MNIST file, its md5.
    """
    path = Path(path)
    if path.name.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                data = f.read()
        except (OSError, EOFError, zlib.error) as exc:
            raise UserError(
                f"{path} is not a readable gzip file ({exc}): it is truncated or corrupt; "
                "delete it and download it again"
            ) from None
    else:
        data = path.read_bytes()

    known = FASHION_MNIST_FILES.get(_idx_stem(path))
    if known is not None and len(data) == known[0]:
        actual = hashlib.md5(data).hexdigest()
        if actual != known[1]:
            raise UserError(
                f"{path} is corrupt: md5 of its decompressed content is {actual}, expected "
                f"{known[1]}; delete it and download it again"
            )

    if len(data) < 4:
        raise UserError(f"{path} is too short ({len(data)} bytes) to be an IDX file; replace it")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        kind = "images" if magic == IDX_IMAGES_MAGIC else "labels"
        raise UserError(
            f"{path} has IDX magic number {found}, expected {magic} for an {kind} file; "
            "it is not the right file (or it is corrupt)"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path} is truncated inside its IDX header; delete it and download it again")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise UserError(
            f"{path} has {len(data)} bytes but its IDX header (shape {dims}) implies {expected}: "
            "the file is truncated or corrupt; delete it and download it again"
        )
    # copy(): frombuffer over bytes is read-only, and torch wants writable memory.
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _load_idx_pair(directory: Path, images_stem: str, labels_stem: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _find_idx_file(directory, images_stem)
    labels_path = _find_idx_file(directory, labels_stem)
    assert images_path is not None and labels_path is not None  # caller checked
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise UserError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels; the files do not belong together, replace them"
        )
    if labels.size and int(labels.max()) >= 10:
        raise UserError(
            f"{labels_path} has label {int(labels.max())}, but Fashion-MNIST labels are 0..9; "
            "it is not a Fashion-MNIST labels file"
        )
    return images, labels


def _load_fashion_mnist_dir(directory: Path) -> DatasetSplits:
    train_x, train_y = _load_idx_pair(directory, *_FMNIST_TRAIN)
    test_x, test_y = _load_idx_pair(directory, *_FMNIST_TEST)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise UserError(
            f"Fashion-MNIST files in {directory} disagree on image size "
            f"(train {train_x.shape[1:]}, test {test_x.shape[1:]}); replace them"
        )
    return DatasetSplits(
        train_x=torch.from_numpy(train_x).unsqueeze(1),
        train_y=torch.from_numpy(train_y).long(),
        test_x=torch.from_numpy(test_x).unsqueeze(1),
        test_y=torch.from_numpy(test_y).long(),
        num_classes=10,
        name="fmnist",
    )


def _missing_fmnist_files(directory: Path) -> list[str]:
    return [stem for stem in FASHION_MNIST_FILES if _find_idx_file(directory, stem) is None]


def load_fashion_mnist(data_dir: PathLike | None = None, download: bool = True) -> DatasetSplits:
    """Load Fashion-MNIST (60000 train / 10000 test, 1x28x28, 10 classes).

    Search order: ``data_dir`` (if given), the Debian package folder
    :data:`DEBIAN_FASHION_MNIST_DIR`, ``~/.cache/ancra/fashion-mnist`` (only without ``data_dir``),
    then, if ``download``, fetch the missing files from :data:`FASHION_MNIST_URL` into
    ``data_dir`` (or the cache). The first folder holding all four files (``.gz`` or
    uncompressed) is used; its files are fully verified (see :func:`read_idx`).
    """
    user_dir = Path(data_dir).expanduser() if data_dir is not None else None
    cache_dir = default_cache_dir() / "fashion-mnist"
    candidates = [user_dir] if user_dir is not None else []
    candidates.append(DEBIAN_FASHION_MNIST_DIR)
    if user_dir is None:
        candidates.append(cache_dir)
    for directory in candidates:
        if not _missing_fmnist_files(directory):
            return _load_fashion_mnist_dir(directory)

    target = user_dir if user_dir is not None else cache_dir
    if download:
        fetched: list[Path] = []
        try:
            for stem in _missing_fmnist_files(target):
                dest = target / f"{stem}.gz"
                _download(FASHION_MNIST_URL + dest.name, dest)
                fetched.append(dest)
        except _DOWNLOAD_ERRORS as exc:
            reason = f"the download from {FASHION_MNIST_URL} failed ({exc})"
        else:
            try:
                return _load_fashion_mnist_dir(target)
            except UserError as exc:
                for path in fetched:  # never leave a bad download behind to be found next time
                    with contextlib.suppress(OSError):
                        path.unlink()
                raise UserError(f"{exc} (the downloaded files were deleted; retry)") from None
    else:
        reason = "downloading is disabled"
    looked = ", ".join(str(d) for d in candidates)
    raise UserError(
        f"Fashion-MNIST not found (looked in {looked}; {reason}); fix it in one of three ways: "
        f"pass --data-dir DIR holding {', '.join(s + '.gz' for s in FASHION_MNIST_FILES)}, "
        f"or run `apt-get install dataset-fashion-mnist` (installs {DEBIAN_FASHION_MNIST_DIR}), "
        f"or allow the network download from {FASHION_MNIST_URL}"
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python-version pickles)
# --------------------------------------------------------------------------------------------

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


def _safe_extractall(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract without letting member names escape ``dest`` or create links/devices."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = dest.resolve()  # pragma: no cover - Python without extraction filters
    for member in tar.getmembers():
        target = (dest / member.name).resolve()
        if not (member.isfile() or member.isdir()) or not target.is_relative_to(root):
            raise UserError(f"{tar.name}: refusing to extract suspicious member {member.name!r}")
    tar.extractall(dest)


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
    root = Path(root).expanduser() if root is not None else default_cache_dir() / "cifar"
    folder = root / layout.folder
    if not folder.is_dir() and (root / layout.test[0]).is_file():
        folder = root  # the user pointed at the batches folder itself
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


# --------------------------------------------------------------------------------------------
# Tiny-ImageNet-200 (JPEG folders, decoded once and cached)
# --------------------------------------------------------------------------------------------

TINY_IMAGENET_CACHE = "ancra-cache.npz"
"""Decoded uint8 arrays are stored under this name in the dataset folder and reused."""

TINY_IMAGENET_SIZE = 64
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def _tiny_imagenet_wnids(root: Path) -> list[str]:
    """Class ids in label order: sorted ``wnids.txt`` if present, else sorted train folder names."""
    wnids_file = root / "wnids.txt"
    if wnids_file.is_file():
        wnids = [line.strip() for line in wnids_file.read_text().splitlines() if line.strip()]
        if len(set(wnids)) != len(wnids):
            raise UserError(f"{wnids_file} lists a class id twice; fix or delete the file")
    else:
        wnids = [p.name for p in (root / "train").iterdir() if p.is_dir()]
    if not wnids:
        raise UserError(f"no classes found in {root} (empty wnids.txt and train/); is it Tiny-ImageNet-200?")
    return sorted(wnids)


def _image_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)


def _tiny_imagenet_files(root: Path, wnids: list[str]) -> tuple[list[Path], list[int], list[Path], list[int]]:
    label_of = {w: i for i, w in enumerate(wnids)}
    train_paths: list[Path] = []
    train_labels: list[int] = []
    for wnid in wnids:
        images_dir = root / "train" / wnid / "images"
        if not images_dir.is_dir():
            raise UserError(f"{images_dir} is missing (class {wnid} is listed but has no images); fix the folder")
        files = _image_files(images_dir)
        train_paths += files
        train_labels += [label_of[wnid]] * len(files)

    annotations = root / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise UserError(f"{annotations} is missing; Tiny-ImageNet needs it to label the val (test) split")
    test_paths: list[Path] = []
    test_labels: list[int] = []
    for lineno, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label_of:
            raise UserError(
                f"{annotations} line {lineno}: expected 'filename<TAB>wnid<TAB>...' with a wnid "
                f"from the class list, got {line[:80]!r}"
            )
        test_paths.append(root / "val" / "images" / fields[0])
        test_labels.append(label_of[fields[1]])
    if not train_paths or not test_paths:
        raise UserError(f"{root} has no train or no val images; is it an extracted tiny-imagenet-200?")
    return train_paths, train_labels, test_paths, test_labels


def _decode_images(paths: list[Path]) -> np.ndarray:
    """Decode JPEGs to a ``(N, 3, 64, 64)`` uint8 array; other sizes are refused, not resized."""
    try:
        from PIL import Image
    except ImportError:
        raise UserError("Tiny-ImageNet needs Pillow to decode its JPEGs: pip install 'ancra[data]'") from None
    size = TINY_IMAGENET_SIZE
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                if image.size != (size, size):
                    raise UserError(
                        f"{path} is {image.size[0]}x{image.size[1]}, but Tiny-ImageNet images are "
                        f"{size}x{size}; use the unmodified tiny-imagenet-200 release"
                    )
                out[i] = np.asarray(image.convert("RGB"))  # some images are grayscale
        except UserError:
            raise
        except FileNotFoundError:
            raise UserError(f"{path} is missing (listed in val_annotations.txt); fix the folder") from None
        except Exception as exc:  # PIL raises OSError, SyntaxError, DecompressionBombError...
            raise UserError(f"cannot decode {path} ({exc}); replace the file") from None
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _read_tiny_cache(cache: Path, wnids: list[str]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the cache is unreadable or was built for other classes."""
    keys = ("train_x", "train_y", "test_x", "test_y", "wnids")
    try:
        with np.load(cache, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in keys}
    except Exception as exc:  # zip/format errors, missing keys: rebuild rather than fail
        log.warning("ignoring unreadable cache %s (%s); rebuilding it", cache, exc)
        return None
    if arrays["wnids"].tolist() != wnids or arrays["train_x"].shape[0] != arrays["train_y"].shape[0]:
        log.warning("cache %s does not match the folder; rebuilding it", cache)
        return None
    return arrays


def _write_tiny_cache(cache: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically; a read-only dataset folder only costs the decode next time."""
    try:
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=f".{cache.name}.", suffix=".part")
    except OSError as exc:
        log.warning("cannot write cache %s (%s); images will be decoded again next time", cache, exc)
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, cache)
    except OSError as exc:
        log.warning("cannot write cache %s (%s); images will be decoded again next time", cache, exc)
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def load_tiny_imagenet(root: PathLike) -> DatasetSplits:
    """Load Tiny-ImageNet-200 (100000 train / 10000 val, 3x64x64, 200 classes) from its folder.

    ``root`` is the extracted ``tiny-imagenet-200`` folder (or its parent). Labels are the index
    of the class id in sorted ``wnids.txt`` order. The labelled ``val`` split serves as the test
    split. Decoding 110k JPEGs takes minutes, so the result is cached as
    ``root/ancra-cache.npz`` and reused while the class list is unchanged (delete it after
    editing images).
    """
    root = Path(root).expanduser()
    if not (root / "train").is_dir() and (root / "tiny-imagenet-200" / "train").is_dir():
        root = root / "tiny-imagenet-200"
    if not (root / "train").is_dir():
        raise UserError(
            f"{root / 'train'} not found: pass --data-dir pointing at the extracted tiny-imagenet-200 "
            "folder (http://cs231n.stanford.edu/tiny-imagenet-200.zip)"
        )
    wnids = _tiny_imagenet_wnids(root)
    cache = root / TINY_IMAGENET_CACHE
    arrays = _read_tiny_cache(cache, wnids) if cache.is_file() else None
    if arrays is None:
        train_paths, train_labels, test_paths, test_labels = _tiny_imagenet_files(root, wnids)
        count = len(train_paths) + len(test_paths)
        log.info("decoding %d Tiny-ImageNet images (cached afterwards in %s)", count, cache)
        arrays = {
            "train_x": _decode_images(train_paths),
            "train_y": np.asarray(train_labels, dtype=np.int64),
            "test_x": _decode_images(test_paths),
            "test_y": np.asarray(test_labels, dtype=np.int64),
            "wnids": np.asarray(wnids),  # unicode array: loadable with allow_pickle=False
        }
        _write_tiny_cache(cache, arrays)
    return DatasetSplits(
        train_x=torch.from_numpy(arrays["train_x"]),
        train_y=torch.from_numpy(arrays["train_y"]),
        test_x=torch.from_numpy(arrays["test_x"]),
        test_y=torch.from_numpy(arrays["test_y"]),
        num_classes=len(wnids),
        name="tiny-imagenet",
    )


# --------------------------------------------------------------------------------------------
# Entry point, validation split
# --------------------------------------------------------------------------------------------


def load_dataset(name: str, data_dir: PathLike | None = None, download: bool = True) -> DatasetSplits:
    """Load a dataset by its config name (one of :data:`DATASET_NAMES`).

    ``data_dir`` is the folder given by ``--data-dir``; without it each dataset uses its
    default location (Debian package or ``~/.cache/ancra``). Tiny-ImageNet is never downloaded.
    """
    key = name.lower()
    if key == "fmnist":
        return load_fashion_mnist(data_dir, download=download)
    if key in ("cifar10", "cifar100"):
        return load_cifar(data_dir, num_classes=int(key[5:]), download=download)
    if key == "tiny-imagenet":
        root = data_dir if data_dir is not None else default_cache_dir() / "tiny-imagenet-200"
        return load_tiny_imagenet(root)
    raise UserError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")


def split_validation(
    x: torch.Tensor, y: torch.Tensor, val_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hold out ``val_size`` random training examples (e.g. for early stopping on robust accuracy).

    The split depends only on ``seed`` and ``len(x)`` (CPU generator), so every rank and every
    resumed run holds out the same examples. Both parts keep the original example order.
    Returns ``(train_x, train_y, val_x, val_y)``; ``val_size=0`` gives an empty validation set.
    """
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"x has {n} examples but y has {y.shape[0]}")
    if not 0 <= val_size < n:
        raise UserError(
            f"validation size {val_size} must be between 0 and {n - 1} (the training set has {n} "
            "examples); lower val_size in the config"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx = perm[:val_size].sort().values.to(x.device)
    train_idx = perm[val_size:].sort().values.to(x.device)
    return x[train_idx], y[train_idx.to(y.device)], x[val_idx], y[val_idx.to(y.device)]


# --------------------------------------------------------------------------------------------
# Device-resident loader with batched augmentation
# --------------------------------------------------------------------------------------------

AUGMENTATIONS: tuple[str | None, ...] = (None, "crop_flip", "flip")


def _mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from several integers (seed + epoch + step would collide)."""
    state = np.random.SeedSequence([v % (1 << 64) for v in values]).generate_state(2, dtype=np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


class DeviceLoader:
    """Iterate ``(float32 images in [0, 1], int64 labels)`` batches from uint8 tensors on a device.

    The whole dataset lives on ``device`` as uint8; each step gathers one batch, augments it
    with a single batched index operation and converts it to float there. Nothing is stateful
    except ``(epoch, start_step)``: the batches of an epoch are a pure function of
    ``(seed, epoch, rank, world_size)``, so resuming is ``set_epoch(e, start_step=s)``.

    Sharding follows :class:`torch.utils.data.DistributedSampler` in spirit but keeps global
    batches intact: step ``s`` of epoch ``e`` uses positions ``[s*G, (s+1)*G)`` of the epoch's
    permutation, ``G = batch_size * world_size``, and rank ``r`` takes positions
    ``[r*batch_size, (r+1)*batch_size)`` of that window. Augmentation parameters are drawn for
    the whole global batch from a generator seeded with ``(seed, epoch, step)`` and each rank
    uses its slice, so a 2-rank run with ``batch_size=B/2`` trains on exactly the same augmented
    examples as a 1-rank run with ``batch_size=B``.

    With ``drop_last=False`` the final partial global batch is split evenly across ranks (padded
    by wrapping around the permutation when it does not divide, as DistributedSampler does), so
    every rank runs the same number of steps.

    Args:
        images: ``(N, C, H, W)`` uint8 tensor (any device; it is moved to ``device`` once).
        labels: ``(N,)`` integer tensor.
        batch_size: examples per step on this rank.
        shuffle: a fresh permutation per epoch; ``False`` iterates in dataset order (evaluation).
        drop_last: drop the final partial global batch (keeps batch statistics uniform).
        augment: ``None``, ``"flip"`` (random horizontal flip) or ``"crop_flip"`` (random crop
            after zero padding by ``crop_padding`` pixels, then random flip; the CIFAR recipe).
        crop_padding: padding for the random crop, in pixels.
        seed: base seed of the permutation and the augmentation.
        device: where data lives and batches are produced.
        rank, world_size: this process's position in a data-parallel group.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = True,
        augment: str | None = None,
        crop_padding: int = 4,
        seed: int = 0,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a (N, C, H, W) uint8 tensor, got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if augment not in AUGMENTATIONS:
            raise UserError(f"unknown augmentation {augment!r}; valid values: none, crop_flip, flip")
        if crop_padding < 0:
            raise UserError(f"crop_padding must be >= 0, got {crop_padding}")
        if seed < 0:
            raise UserError(f"seed must be >= 0, got {seed}")
        n = images.shape[0]
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if drop_last and batch_size * world_size > n:
            raise UserError(
                f"batch_size {batch_size} x {world_size} process(es) exceeds the {n} examples, so an "
                "epoch would have no step; lower batch_size"
            )
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.crop_padding = crop_padding
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_step = 0

    @property
    def num_examples(self) -> int:
        return int(self.images.shape[0])

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        """Steps in a full epoch (the same on every rank), regardless of ``start_step``."""
        full, rest = divmod(self.num_examples, self.global_batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch whose batches ``iter(self)`` yields, starting at ``start_step``.

        Call it before every epoch (as with DistributedSampler); ``start_step`` resumes an
        interrupted epoch, and the next ``set_epoch`` call starts at step 0 again by default.
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if not 0 <= start_step <= len(self):
            raise ValueError(f"start_step must be in [0, {len(self)}], got {start_step}")
        self.epoch = epoch
        self.start_step = start_step

    def _permutation(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_examples)
        return torch.randperm(self.num_examples, generator=torch.Generator().manual_seed(self.seed + self.epoch))

    def _global_batches(self) -> list[tuple[torch.Tensor, int]]:
        """Each step's global batch (CPU indices, all ranks) and this rank's shard size."""
        perm = self._permutation()
        g = self.global_batch_size
        full = self.num_examples // g
        batches = [(chunk, self.batch_size) for chunk in perm[: full * g].view(full, g)]
        rest = perm[full * g :]
        if rest.numel() and not self.drop_last:
            pad = -rest.numel() % self.world_size
            if pad:  # wrap around so every rank gets an equal, non-empty shard
                rest = torch.cat([rest, perm[torch.arange(pad) % self.num_examples]])
            batches.append((rest, rest.numel() // self.world_size))
        return batches

    def batch_indices(self, step: int) -> torch.Tensor:
        """Dataset indices (CPU) of this rank's examples at ``step`` of the current epoch."""
        batch, size = self._global_batches()[step]
        return batch[self.rank * size : (self.rank + 1) * size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(self.start_step)

    def iter_from(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the current epoch's batches from ``step`` on (equal to skipping ``step`` batches)."""
        batches = self._global_batches()
        for s in range(step, len(batches)):
            batch, size = batches[s]
            lo, hi = self.rank * size, (self.rank + 1) * size
            idx = batch[lo:hi].to(self.device, non_blocking=True)
            x = self.images[idx]
            if self.augment is not None:
                x = self._augment(x, s, batch.numel(), lo, hi)
            yield x.float().div_(255.0), self.labels[idx]

    def _augment(self, x: torch.Tensor, step: int, global_size: int, lo: int, hi: int) -> torch.Tensor:
        """Random crop + flip of a uint8 batch as one gather on the padded batch.

        Parameters are drawn on the CPU for the whole global batch (identical on every rank and
        device type) and this rank keeps rows ``lo:hi``. A flip is a reversed column index, so
        crop and flip together are a single advanced-indexing operation.
        """
        b, c, h, w = x.shape
        pad = self.crop_padding if self.augment == "crop_flip" else 0
        gen = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch, step))
        params = torch.stack(
            [
                torch.randint(0, 2 * pad + 1, (global_size,), generator=gen),  # row offset
                torch.randint(0, 2 * pad + 1, (global_size,), generator=gen),  # column offset
                torch.randint(0, 2, (global_size,), generator=gen),  # flip?
            ]
        )[:, lo:hi].to(self.device, non_blocking=True)
        dy, dx, flip = params
        if pad:
            x = F.pad(x, (pad, pad, pad, pad))  # zero padding, once for the whole batch
        dev = x.device
        rows = dy[:, None] + torch.arange(h, device=dev)  # (b, h)
        cols_fwd = torch.arange(w, device=dev)
        cols = dx[:, None] + torch.where(flip[:, None].bool(), cols_fwd.flip(0), cols_fwd)  # (b, w)
        return x[
            torch.arange(b, device=dev)[:, None, None, None],
            torch.arange(c, device=dev)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
