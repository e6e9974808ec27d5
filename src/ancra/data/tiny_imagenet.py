"""Tiny-ImageNet-200: the folder layout decoded with Pillow once, then cached as an npz next to the images."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ancra.errors import UserError

from . import files
from .files import PathLike
from .splits import DatasetSplits

log = logging.getLogger(__name__)

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
        with files.preparing(root):  # one process decodes, the others wait for its cache
            arrays = _read_tiny_cache(cache, wnids) if cache.is_file() else None
            if arrays is None:
                arrays = _decode_and_cache(root, wnids, cache)
    return DatasetSplits(
        train_x=torch.from_numpy(arrays["train_x"]),
        train_y=torch.from_numpy(arrays["train_y"]),
        test_x=torch.from_numpy(arrays["test_x"]),
        test_y=torch.from_numpy(arrays["test_y"]),
        num_classes=len(wnids),
        name="tiny-imagenet",
    )


def _decode_and_cache(root: Path, wnids: list[str], cache: Path) -> dict[str, np.ndarray]:
    """Decode every image of the folder (minutes for the 110k of Tiny-ImageNet) and cache them."""
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
    return arrays
