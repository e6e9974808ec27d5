"""Datasets and a device-resident batch loader for adversarial training.

Modules, one job each: :mod:`.registry` (dataset facts: shape, classes, eps conventions),
:mod:`.files` (cache folder, downloads, digests, safe tar extraction), :mod:`.splits` (the
:class:`DatasetSplits` result type), :mod:`.fmnist` (IDX parser, Fashion-MNIST), :mod:`.cifar`
(CIFAR-10/100 pickles, restricted unpickler), :mod:`.tiny_imagenet` (folder decoding, npz cache),
:mod:`.loader` (:func:`load_dataset`, :func:`split_validation`, :class:`DeviceLoader`). This
package re-exports their public names, so ``from ancra.data import X`` is the way to use them.

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

from .cifar import CIFAR_ARCHIVE_MD5, CIFAR_URL, load_cifar
from .files import DOWNLOAD_TIMEOUT_S, PathLike, default_cache_dir, file_digest
from .fmnist import (
    DEBIAN_FASHION_MNIST_DIR,
    FASHION_MNIST_FILES,
    FASHION_MNIST_URL,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    load_fashion_mnist,
    read_idx,
)
from .loader import AUGMENTATIONS, DeviceLoader, load_dataset, split_validation
from .registry import DATASET_NAMES, DATASETS, DatasetInfo, dataset_info, find_dataset
from .splits import DatasetSplits
from .tiny_imagenet import TINY_IMAGENET_CACHE, TINY_IMAGENET_SIZE, load_tiny_imagenet

__all__ = [
    "AUGMENTATIONS",
    "CIFAR_ARCHIVE_MD5",
    "CIFAR_URL",
    "DATASETS",
    "DATASET_NAMES",
    "DEBIAN_FASHION_MNIST_DIR",
    "DOWNLOAD_TIMEOUT_S",
    "DatasetInfo",
    "DatasetSplits",
    "DeviceLoader",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_URL",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "PathLike",
    "TINY_IMAGENET_CACHE",
    "TINY_IMAGENET_SIZE",
    "dataset_info",
    "default_cache_dir",
    "file_digest",
    "find_dataset",
    "load_cifar",
    "load_dataset",
    "load_fashion_mnist",
    "load_tiny_imagenet",
    "read_idx",
    "split_validation",
]
