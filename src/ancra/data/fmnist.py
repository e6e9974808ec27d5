"""Fashion-MNIST: the IDX file parser and the loader (local folder, Debian package, cache or download)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from ancra.errors import UserError

from . import files
from .files import _DOWNLOAD_ERRORS, PathLike, _download
from .splits import DatasetSplits

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
    cache_dir = files.default_cache_dir() / "fashion-mnist"
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
        # one process downloads, the others wait and find the files (the check runs inside)
        with files.preparing(target):
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
