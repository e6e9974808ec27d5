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


DATASETS: dict[str, DatasetInfo] = {
    "fmnist": DatasetInfo(
        "fmnist",
        channels=1,
        size=28,
        num_classes=10,
        class_names=(
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
        ),
        eps_in_255=False,
        default_eps=0.1,
        pgd_step=None,
        large_eps=0.5,
    ),
    "cifar10": DatasetInfo(
        "cifar10",
        channels=3,
        size=32,
        num_classes=10,
        class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        eps_in_255=True,
        default_eps=8 / 255,
        pgd_step=2 / 255,
        large_eps=64 / 255,
    ),
    "cifar100": DatasetInfo(
        "cifar100",
        channels=3,
        size=32,
        num_classes=100,
        class_names=None,
        eps_in_255=True,
        default_eps=8 / 255,
        pgd_step=2 / 255,
        large_eps=64 / 255,
    ),
    "tiny-imagenet": DatasetInfo(
        "tiny-imagenet",
        channels=3,
        size=64,
        num_classes=200,
        class_names=None,
        eps_in_255=True,
        default_eps=8 / 255,
        pgd_step=2 / 255,
        large_eps=64 / 255,
    ),
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
