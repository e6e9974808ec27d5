"""Tests for ancra.data: dataset parsing/verification, safe unpickling and the DeviceLoader.

All dataset files are tiny and written by the tests; the only real dataset used is the Debian
Fashion-MNIST package (installed in CI). Nothing here touches the network: download paths are
exercised through a fake ``urlopen``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.error
import urllib.request
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ancra import data
from ancra.data import (
    DatasetSplits,
    DeviceLoader,
    load_cifar,
    load_dataset,
    load_fashion_mnist,
    load_tiny_imagenet,
    split_validation,
)
from ancra.errors import UserError

# ---------------------------------------------------------------------------------------------
# Fashion-MNIST / IDX
# ---------------------------------------------------------------------------------------------

FMNIST_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()


def write_file(path: Path, payload: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def tiny_fmnist_arrays(n_train: int = 6, n_test: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(n_train, dtype=np.uint8) % 10,
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }


def write_fmnist(directory: Path, arrays: dict[str, np.ndarray], gz: bool = True) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, array in arrays.items():
        magic = data.IDX_IMAGES_MAGIC if "images" in key else data.IDX_LABELS_MAGIC
        paths[key] = write_file(directory / FMNIST_STEMS[key], idx_bytes(array, magic), gz)
    return paths


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    """Pretend the Debian package is not installed (and keep the cache dir out of reach)."""
    monkeypatch.setattr(data.fmnist, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(data.files, "default_cache_dir", lambda: tmp_path / "cache")


@pytest.mark.parametrize("gz", [True, False])
def test_tiny_idx_files_load(tmp_path, gz):
    arrays = tiny_fmnist_arrays()
    write_fmnist(tmp_path, arrays, gz=gz)
    ds = load_fashion_mnist(tmp_path, download=False)
    assert isinstance(ds, DatasetSplits)
    assert ds.train_x.shape == (6, 1, 28, 28) and ds.test_x.shape == (4, 1, 28, 28)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert torch.equal(ds.train_x[:, 0], torch.from_numpy(arrays["train_images"]))
    assert ds.train_y.tolist() == [0, 1, 2, 3, 4, 5]
    assert ds.test_y.tolist() == [0, 3, 6, 9]
    assert (ds.num_classes, ds.name, ds.in_channels, ds.image_size) == (10, "fmnist", 1, 28)


def test_idx_bad_magic_names_file(tmp_path):
    paths = write_fmnist(tmp_path, tiny_fmnist_arrays())
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(idx_bytes(np.zeros((6, 1)), data.IDX_LABELS_MAGIC + 2)))
    with pytest.raises(UserError, match="magic") as err:
        load_fashion_mnist(tmp_path, download=False)
    assert str(paths["train_labels"]) in str(err.value)


def test_idx_truncated_gz_names_file(tmp_path):
    paths = write_fmnist(tmp_path, tiny_fmnist_arrays())
    blob = paths["test_images"].read_bytes()
    paths["test_images"].write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError, match="truncated or corrupt") as err:
        load_fashion_mnist(tmp_path, download=False)
    assert str(paths["test_images"]) in str(err.value)


def test_idx_length_mismatch_names_file(tmp_path):
    paths = write_fmnist(tmp_path, tiny_fmnist_arrays(), gz=False)
    paths["train_images"].write_bytes(paths["train_images"].read_bytes()[:-5])
    with pytest.raises(UserError, match="implies") as err:
        load_fashion_mnist(tmp_path, download=False)
    assert str(paths["train_images"]) in str(err.value)


def test_idx_count_mismatch_names_both_files(tmp_path):
    arrays = tiny_fmnist_arrays()
    arrays["train_labels"] = arrays["train_labels"][:5]
    paths = write_fmnist(tmp_path, arrays)
    with pytest.raises(UserError, match="6 images but .* 5 labels") as err:
        load_fashion_mnist(tmp_path, download=False)
    assert str(paths["train_labels"]) in str(err.value)


def test_idx_label_out_of_range(tmp_path):
    arrays = tiny_fmnist_arrays()
    arrays["test_labels"][1] = 10
    paths = write_fmnist(tmp_path, arrays)
    with pytest.raises(UserError, match="label 10") as err:
        load_fashion_mnist(tmp_path, download=False)
    assert str(paths["test_labels"]) in str(err.value)


def test_idx_md5_checked_only_at_full_size(tmp_path, monkeypatch):
    arrays = tiny_fmnist_arrays()
    paths = write_fmnist(tmp_path, arrays)
    raw = idx_bytes(arrays["train_labels"], data.IDX_LABELS_MAGIC)
    stem = FMNIST_STEMS["train_labels"]
    # Declare the tiny file "full size" with the right md5: accepted.
    monkeypatch.setitem(data.FASHION_MNIST_FILES, stem, (len(raw), hashlib.md5(raw).hexdigest()))
    assert load_fashion_mnist(tmp_path, download=False).train_y.shape == (6,)
    # Same size, wrong md5: corrupt.
    monkeypatch.setitem(data.FASHION_MNIST_FILES, stem, (len(raw), "0" * 32))
    with pytest.raises(UserError, match="corrupt") as err:
        load_fashion_mnist(tmp_path, download=False)
    assert str(paths["train_labels"]) in str(err.value)
    # Different size: md5 not checked at all.
    monkeypatch.setitem(data.FASHION_MNIST_FILES, stem, (len(raw) + 1, "0" * 32))
    assert load_fashion_mnist(tmp_path, download=False).train_y.shape == (6,)


def test_real_debian_fashion_mnist():
    # Not skipped when absent: CI installs dataset-fashion-mnist and this must then pass.
    assert data.DEBIAN_FASHION_MNIST_DIR.is_dir(), "apt-get install dataset-fashion-mnist"
    ds = load_fashion_mnist(data.DEBIAN_FASHION_MNIST_DIR, download=False)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_y.shape == (60000,) and ds.test_y.shape == (10000,)
    assert ds.train_y.min() == 0 and ds.train_y.max() == 9
    assert torch.bincount(ds.train_y, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(ds.test_y, minlength=10).tolist() == [1000] * 10
    assert ds.train_x.dtype == torch.uint8 and int(ds.train_x.max()) == 255


def test_no_source_error_names_all_three_ways(tmp_path, no_debian):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError) as err:
        load_fashion_mnist(empty, download=False)
    message = str(err.value)
    assert "\n" not in message
    assert "--data-dir" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "download" in message and data.FASHION_MNIST_URL in message
    assert str(empty) in message


class FakeUrlopen:
    """Serves tiny files by URL instead of the network; records what was fetched."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.urls: list[str] = []

    def __call__(self, url, timeout=None):
        self.urls.append(url)
        name = url.rsplit("/", 1)[-1]
        if name not in self.files:
            raise urllib.error.URLError("no route to host")
        return io.BytesIO(self.files[name])


def test_fmnist_download_path_is_atomic_and_verified(tmp_path, monkeypatch, no_debian):
    src = tmp_path / "src"
    write_fmnist(src, tiny_fmnist_arrays())
    fake = FakeUrlopen({p.name: p.read_bytes() for p in src.iterdir()})
    monkeypatch.setattr(urllib.request, "urlopen", fake)
    dest = tmp_path / "dest"
    ds = load_fashion_mnist(dest, download=True)
    assert ds.train_x.shape == (6, 1, 28, 28)
    assert sorted(fake.urls) == sorted(data.FASHION_MNIST_URL + s + ".gz" for s in FMNIST_STEMS.values())
    assert sorted(p.name for p in dest.iterdir()) == sorted(s + ".gz" for s in FMNIST_STEMS.values())


def test_fmnist_download_failure_names_all_three_ways(tmp_path, monkeypatch, no_debian):
    fake = FakeUrlopen({})
    monkeypatch.setattr(urllib.request, "urlopen", fake)
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist") as err:
        load_fashion_mnist(tmp_path / "dest", download=True)
    assert "no route to host" in str(err.value) and "--data-dir" in str(err.value)
    assert not [p for p in (tmp_path / "dest").iterdir()]  # no partial files left behind


def test_fmnist_corrupt_download_is_deleted(tmp_path, monkeypatch, no_debian):
    src = tmp_path / "src"
    paths = write_fmnist(src, tiny_fmnist_arrays())
    files = {p.name: p.read_bytes() for p in src.iterdir()}
    files[paths["train_labels"].name] = files[paths["train_labels"].name][:10]  # truncated
    monkeypatch.setattr(urllib.request, "urlopen", FakeUrlopen(files))
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz"):
        load_fashion_mnist(tmp_path / "dest", download=True)
    assert list((tmp_path / "dest").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# CIFAR
# ---------------------------------------------------------------------------------------------


def write_cifar_batch(path: Path, n: int, label_key: str, num_classes: int, offset: int, protocol=None) -> None:
    rng = np.random.default_rng(offset)
    batch = {
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key.encode(): [(offset + i) % num_classes for i in range(n)],
        b"batch_label": b"tiny",
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)


def make_cifar10(root: Path, protocol=None) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{i}", 2, "labels", 10, offset=2 * (i - 1), protocol=protocol)
    write_cifar_batch(folder / "test_batch", 3, "labels", 10, offset=100, protocol=protocol)
    return folder


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_tiny_cifar10_loads(tmp_path, protocol):
    folder = make_cifar10(tmp_path, protocol)
    ds = load_cifar(tmp_path, num_classes=10, download=False)
    assert ds.train_x.shape == (10, 3, 32, 32) and ds.test_x.shape == (3, 3, 32, 32)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert ds.train_y.tolist() == list(range(10))
    assert ds.test_y.tolist() == [0, 1, 2]
    with open(folder / "data_batch_2", "rb") as f:
        raw = pickle.load(f)[b"data"]
    # Row layout is 1024 R, 1024 G, 1024 B values in row-major order.
    assert torch.equal(ds.train_x[2], torch.from_numpy(raw[0].reshape(3, 32, 32)))
    assert (ds.name, ds.num_classes, ds.in_channels, ds.image_size) == ("cifar10", 10, 3, 32)
    # Pointing at the batches folder itself works too.
    assert torch.equal(load_cifar(folder, download=False).train_x, ds.train_x)


def test_tiny_cifar100_loads(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    write_cifar_batch(folder / "train", 5, "fine_labels", 100, offset=97)
    write_cifar_batch(folder / "test", 2, "fine_labels", 100, offset=50)
    ds = load_dataset("cifar100", tmp_path, download=False)
    assert ds.train_x.shape == (5, 3, 32, 32) and ds.num_classes == 100
    assert ds.train_y.tolist() == [97, 98, 99, 0, 1]
    assert ds.test_y.tolist() == [50, 51]


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    folder = make_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": Evil(marker), b"labels": [0]}, f)
    with pytest.raises(UserError, match="refusing to load") as err:
        load_cifar(tmp_path, download=False)
    assert "system" in str(err.value) and str(folder / "data_batch_3") in str(err.value)
    assert not marker.exists()


def test_cifar_bad_contents(tmp_path):
    folder = make_cifar10(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 1000), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(UserError, match=r"\(N, 3072\)") as err:
        load_cifar(tmp_path, download=False)
    assert str(folder / "test_batch") in str(err.value)
    write_cifar_batch(folder / "test_batch", 2, "labels", 100, offset=40)  # labels 40, 41
    with pytest.raises(UserError, match="outside 0..9"):
        load_cifar(tmp_path, download=False)
    (folder / "data_batch_5").unlink()
    with pytest.raises(UserError, match="data_batch_5 is missing"):
        load_cifar(tmp_path, download=False)


def test_cifar_archive_md5_then_extract(tmp_path, monkeypatch):
    src = tmp_path / "src"
    make_cifar10(src)
    root = tmp_path / "root"
    root.mkdir()
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    with pytest.raises(UserError, match="corrupt or incomplete"):  # the real md5 does not match
        load_cifar(root, download=False)
    assert not (root / "cifar-10-batches-py").exists()
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(data.CIFAR_ARCHIVE_MD5, "cifar-10-python.tar.gz", md5)
    ds = load_cifar(root, download=False)
    assert ds.train_x.shape == (10, 3, 32, 32)
    assert (root / "cifar-10-batches-py" / "test_batch").is_file()
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_cifar_missing_without_download(tmp_path):
    with pytest.raises(UserError, match="cifar-10-python.tar.gz"):
        load_cifar(tmp_path, download=False)
    with pytest.raises(UserError, match="10 or 100"):
        load_cifar(tmp_path, num_classes=20)


# ---------------------------------------------------------------------------------------------
# Tiny-ImageNet
# ---------------------------------------------------------------------------------------------

COLORS = {"n02": (250, 10, 10), "n01": (10, 10, 250)}  # sorted order: n01 -> 0, n02 -> 1


def save_jpeg(path: Path, color, size=(64, 64)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, quality=95)


def make_tiny_imagenet(root: Path, wnids_file: bool = True) -> Path:
    for wnid, color in COLORS.items():
        for i in range(3):
            save_jpeg(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", color)
    save_jpeg(root / "val" / "images" / "val_0.JPEG", COLORS["n02"])
    save_jpeg(root / "val" / "images" / "val_1.JPEG", COLORS["n01"])
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t63\t63\nval_1.JPEG\tn01\t1\t2\t30\t40\n")
    if wnids_file:
        (root / "wnids.txt").write_text("n02\nn01\n")
    return root


@pytest.mark.parametrize("wnids_file", [True, False])
def test_tiny_imagenet_loads_and_caches(tmp_path, wnids_file):
    root = make_tiny_imagenet(tmp_path / "tiny-imagenet-200", wnids_file)
    ds = load_dataset("tiny-imagenet", tmp_path)  # the parent folder is accepted too
    assert ds.train_x.shape == (6, 3, 64, 64) and ds.test_x.shape == (2, 3, 64, 64)
    assert ds.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.test_y.tolist() == [1, 0]
    assert (ds.num_classes, ds.in_channels, ds.image_size) == (2, 3, 64)
    blue = torch.tensor(COLORS["n01"], dtype=torch.float32)[:, None, None]
    assert (ds.train_x[0].float() - blue).abs().max() <= 3  # JPEG is lossy, solid colours barely
    cache = root / data.TINY_IMAGENET_CACHE
    assert cache.is_file()
    # Break an image: the second load must come from the cache and not decode anything.
    (root / "train" / "n01" / "images" / "n01_0.JPEG").write_bytes(b"not a jpeg")
    again = load_tiny_imagenet(root)
    assert torch.equal(again.train_x, ds.train_x) and torch.equal(again.test_y, ds.test_y)
    # Without the cache the broken file is reported by name.
    cache.unlink()
    with pytest.raises(UserError, match="n01_0.JPEG"):
        load_tiny_imagenet(root)


def test_tiny_imagenet_wrong_size_is_refused(tmp_path):
    root = make_tiny_imagenet(tmp_path)
    save_jpeg(root / "val" / "images" / "val_1.JPEG", (0, 0, 0), size=(32, 32))
    with pytest.raises(UserError, match="val_1.JPEG is 32x32"):
        load_tiny_imagenet(root)


def test_tiny_imagenet_missing_folder(tmp_path):
    with pytest.raises(UserError, match="--data-dir"):
        load_tiny_imagenet(tmp_path)


def test_unknown_dataset_lists_names():
    with pytest.raises(UserError) as err:
        load_dataset("mnist")
    for name in data.DATASET_NAMES:
        assert name in str(err.value)


# ---------------------------------------------------------------------------------------------
# Validation split
# ---------------------------------------------------------------------------------------------


def test_split_validation():
    x = torch.arange(100).view(100, 1, 1, 1).to(torch.uint8)
    y = torch.arange(100)
    tx, ty, vx, vy = split_validation(x, y, 20, seed=3)
    assert len(tx) == len(ty) == 80 and len(vx) == len(vy) == 20
    assert set(ty.tolist()).isdisjoint(vy.tolist())
    assert sorted(ty.tolist() + vy.tolist()) == list(range(100))
    assert torch.equal(vx.flatten().long(), vy)  # images and labels stay paired
    assert torch.equal(split_validation(x, y, 20, seed=3)[3], vy)
    assert not torch.equal(split_validation(x, y, 20, seed=4)[3], vy)
    tx, ty, vx, vy = split_validation(x, y, 0, seed=0)
    assert len(vx) == 0 and torch.equal(ty, y)
    with pytest.raises(UserError, match="between 0 and 99"):
        split_validation(x, y, 100, seed=0)


# ---------------------------------------------------------------------------------------------
# DeviceLoader
# ---------------------------------------------------------------------------------------------


def id_dataset(n: int = 40, size: int = 8, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose pixels are all distinct (encode position) and labels equal to the index."""
    pixels = torch.arange(1, size * size + 1, dtype=torch.uint8).view(1, 1, size, size)
    images = pixels.repeat(n, channels, 1, 1)
    images[:, :, 0, 0] = torch.arange(n, dtype=torch.uint8)[:, None]  # make examples distinct
    return images, torch.arange(n)


def collect(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_batches_dtype_range_shape():
    images, labels = id_dataset(n=42)
    loader = DeviceLoader(images, labels, 8, augment="crop_flip")
    batches = collect(loader)
    assert len(loader) == len(batches) == 5  # drop_last
    for x, y in batches:
        assert x.shape == (8, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.min() >= 0 and x.max() <= 1
    seen = torch.cat([y for _, y in batches])
    assert len(set(seen.tolist())) == 40
    loader = DeviceLoader(images, labels, 8, shuffle=False, drop_last=False)
    batches = collect(loader)
    assert len(loader) == 6 and [len(y) for _, y in batches] == [8] * 5 + [2]
    assert torch.cat([y for _, y in batches]).tolist() == list(range(42))
    assert torch.equal(batches[0][0], images[:8].float() / 255)


def test_loader_is_deterministic_per_epoch():
    images, labels = id_dataset()
    a = DeviceLoader(images, labels, 8, augment="crop_flip", seed=5)
    b = DeviceLoader(images, labels, 8, augment="crop_flip", seed=5)
    a.set_epoch(3)
    b.set_epoch(3)
    first = collect(a)
    for (xa, ya), (xb, yb) in zip(first, collect(b)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(first, collect(a)):  # re-iterating repeats the epoch
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    a.set_epoch(4)
    order3 = torch.cat([y for _, y in first])
    order4 = torch.cat([y for _, y in collect(a)])
    assert not torch.equal(order3, order4)
    expected = torch.randperm(40, generator=torch.Generator().manual_seed(5 + 3))
    assert torch.equal(order3, expected)


@pytest.mark.parametrize("drop_last", [True, False])
def test_two_rank_shards_equal_one_rank_batches(drop_last):
    images, labels = id_dataset(n=44, channels=3)
    kwargs = dict(augment="crop_flip", seed=11, drop_last=drop_last)
    single = DeviceLoader(images, labels, 8, **kwargs)
    ranks = [DeviceLoader(images, labels, 4, rank=r, world_size=2, **kwargs) for r in range(2)]
    for loader in [single, *ranks]:
        loader.set_epoch(2)
    assert len(single) == len(ranks[0]) == len(ranks[1])
    one = collect(single)
    two = [collect(r) for r in ranks]
    for step, (x, y) in enumerate(one):
        assert torch.equal(torch.cat([two[0][step][1], two[1][step][1]]), y)
        # augmentation is drawn per global batch, so even the augmented pixels agree
        assert torch.equal(torch.cat([two[0][step][0], two[1][step][0]]), x)
        assert torch.equal(ranks[1].batch_indices(step), y[len(y) // 2 :])


def test_random_crop_is_a_window_of_the_padded_image():
    images, labels = id_dataset(n=64, size=8)
    pad = 2
    loader = DeviceLoader(images, labels, 64, augment="crop_flip", crop_padding=pad, seed=1)
    x, y = next(iter(loader))
    crops = (x * 255).round().to(torch.uint8)
    offsets, flips = set(), 0
    for crop, idx in zip(crops, y):
        padded = F.pad(images[idx], (pad, pad, pad, pad))
        windows = {
            (dy, dx, flip): window.flip(-1) if flip else window
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for flip in (False, True)
            for window in [padded[:, dy : dy + 8, dx : dx + 8]]
        }
        found = [key for key, window in windows.items() if torch.equal(crop, window)]
        assert len(found) == 1, "each crop must be exactly one (optionally mirrored) window"
        offsets.add(found[0][:2])
        flips += found[0][2]
    assert len(offsets) > 10 and 10 < flips < 54  # offsets and flips really vary


def test_flip_only_mirrors():
    images, labels = id_dataset(n=64)
    x, y = next(iter(DeviceLoader(images, labels, 64, augment="flip")))
    flipped = 0
    for out, idx in zip(x, y):
        original = images[idx].float() / 255
        assert torch.equal(out, original) or torch.equal(out, original.flip(-1))
        flipped += torch.equal(out, original.flip(-1))
    assert 10 < flipped < 54


def test_start_step_equals_skipping():
    images, labels = id_dataset(n=48)
    loader = DeviceLoader(images, labels, 8, augment="crop_flip", seed=2)
    loader.set_epoch(1)
    full = collect(loader)
    resumed = collect(loader.iter_from(4))
    loader.set_epoch(1, start_step=4)
    via_epoch = collect(loader)
    assert len(resumed) == len(via_epoch) == len(full) - 4
    for (xa, ya), (xb, yb), (xc, yc) in zip(full[4:], resumed, via_epoch):
        assert torch.equal(xa, xb) and torch.equal(xa, xc) and torch.equal(ya, yb) and torch.equal(ya, yc)
    loader.set_epoch(2)
    assert len(collect(loader)) == len(loader)  # start_step resets


def test_loader_rejects_bad_config():
    images, labels = id_dataset(n=10)
    with pytest.raises(UserError, match="batch_size"):
        DeviceLoader(images, labels, 8, world_size=2)
    with pytest.raises(UserError, match="augmentation"):
        DeviceLoader(images, labels, 2, augment="cutout")


def test_registry_facts_match_what_the_loaders_return(tmp_path):
    """The dataset registry is the one source of shapes and classes: it must agree with the data."""
    from ancra.config import DataConfig
    from ancra.data import DATASET_NAMES, dataset_info

    fm = load_fashion_mnist(data.DEBIAN_FASHION_MNIST_DIR, download=False)
    info = dataset_info("fmnist")
    assert (info.channels, info.size, info.num_classes) == (fm.in_channels, fm.image_size, fm.num_classes)
    assert len(info.class_names) == info.num_classes and not info.eps_in_255
    make_cifar10(tmp_path, 4)
    c10 = load_cifar(tmp_path, num_classes=10, download=False)
    info = dataset_info("CIFAR10")  # case-insensitive, as load_dataset
    assert (info.channels, info.size) == (c10.in_channels, c10.image_size) and info.num_classes == 10
    assert info.eval_pgd_step(8 / 255) == 2 / 255 and dataset_info("fmnist").eval_pgd_step(0.1) == 0.1 / 4
    assert dataset_info("cifar100").num_classes == 100 and dataset_info("tiny-imagenet").size == 64
    assert DATASET_NAMES == ("fmnist", "cifar10", "cifar100", "tiny-imagenet")
    assert [f.metadata["choices"] for f in fields(DataConfig) if f.name == "dataset"] == [DATASET_NAMES]
    with pytest.raises(UserError, match="unknown dataset 'mnist'; valid names: fmnist, cifar10"):
        dataset_info("mnist")
