"""The one registry of dataset facts: shape, classes, eps conventions and evaluation PGD step per dataset.

Everything that differs between datasets outside their file formats (model input shape for
``ancra bench``, whether eps is shown in /255, the evaluation PGD step, the end of the sanity eps
sweep, class names for plots) is read from :data:`DATASETS`; nothing else keeps its own copy.
"""

from __future__ import annotations

from dataclasses import dataclass

from ancra.errors import UserError


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about one dataset, keyed by its config name (``data.dataset``).

    ``pgd_step`` is the evaluation PGD step (docs/EVALUATION.md, "Standard suite"): a fixed step,
    or ``None`` for ``eps / 4``; use :meth:`eval_pgd_step`.
    """

    name: str
    channels: int
    size: int
    num_classes: int
    #: class names in label order, ``None`` where the code does not know them
    class_names: tuple[str, ...] | None
    #: eps shown in /255 (CIFAR-like data) rather than on the [0, 1] pixel scale
    eps_in_255: bool
    #: the usual L-inf eps on this dataset (the configs' threat model), suggested when a checkpoint records none
    default_eps: float
    #: fixed evaluation PGD step, ``None`` for ``eps / 4``
    pgd_step: float | None
    #: end of the sanity checks' accuracy-vs-eps sweep
    large_eps: float

    def eval_pgd_step(self, eps: float) -> float:
        """Evaluation PGD step for budget ``eps``: 2/255 on CIFAR-like data, ``eps / 4`` on F-MNIST."""
        return self.pgd_step if self.pgd_step is not None else eps / 4


# the threat-model conventions of the CIFAR-like datasets (RobustBench's): eps shown in /255,
# 8/255 budgets, a 2/255 PGD step, the sanity sweep up to 64/255
_CIFAR_LIKE = {"channels": 3, "eps_in_255": True, "default_eps": 8 / 255, "pgd_step": 2 / 255, "large_eps": 64 / 255}

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "fmnist",
            channels=1,
            size=28,
            num_classes=10,
            class_names=FASHION_MNIST_CLASSES,
            eps_in_255=False,
            default_eps=0.1,
            pgd_step=None,
            large_eps=0.5,
        ),
        DatasetInfo("cifar10", size=32, num_classes=10, class_names=CIFAR10_CLASSES, **_CIFAR_LIKE),
        DatasetInfo("cifar100", size=32, num_classes=100, class_names=None, **_CIFAR_LIKE),
        DatasetInfo("tiny-imagenet", size=64, num_classes=200, class_names=None, **_CIFAR_LIKE),
    )
}
#: names accepted by :func:`ancra.data.load_dataset` and by the ``dataset`` config key
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """The facts of dataset ``name`` (case-insensitive, as :func:`ancra.data.load_dataset`);
    :class:`~ancra.errors.UserError` naming the valid names if unknown."""
    try:
        return DATASETS[name.lower()]
    except (KeyError, AttributeError):
        raise UserError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}") from None


def find_dataset(name: str | None) -> DatasetInfo | None:
    """The facts of ``name`` (case-insensitive), or ``None`` for a name the registry does not know.

    For names that come from outside a validated config (a ``report.json``, a caller's string),
    where an unknown dataset falls back to the F-MNIST-style conventions instead of failing."""
    return DATASETS.get((name or "").lower())
