"""Experiment configuration: TOML files in ``configs/``, validated on load.

A config has four sections, each a dataclass (``[objective]`` is :class:`ancra.objectives.Objective`
itself); every key is an :func:`ancra.options.option` with a type, a default and, where it matters,
a range or a set of choices. Loading rejects unknown sections/keys, wrong types and
out-of-range values with one :class:`~ancra.errors.UserError` naming the key and what is valid.
``--set section.key=value`` overrides are parsed as TOML values (``train.epochs=3``,
``objective.negatives="hard_adv"``; bare words are taken as strings).
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from .data import AUGMENTATIONS, DATASET_NAMES
from .errors import UserError
from .models import MODELS
from .objectives import Objective
from .options import check_option, option
from .precision import PRECISIONS


@dataclass
class DataConfig:
    dataset: str = option("fmnist", choices=DATASET_NAMES)
    data_dir: str = option("", help="folder with the dataset files ('' = the standard places)")
    download: bool = option(True)
    val_size: int = option(5000, lo=0, help="examples held out of the training set for model selection")
    val_seed: int = option(0)
    train_subset: int = option(0, lo=0, help="use only the first N training examples (0 = all)")
    augment: str = option("none", choices=("none",) + tuple(a for a in AUGMENTATIONS if a))
    crop_padding: int = option(4, lo=0)


@dataclass
class ModelConfig:
    name: str = option("narrow_resnet", choices=tuple(MODELS))
    ra_blocks: int = option(2, lo=0, help="RA blocks at the end of the network (0 = plain baseline)")
    width: int = option(0, lo=0, help="narrow_resnet only: channels of the first stage (0 = default)")
    num_blocks: list = option([], help="narrow_resnet only: blocks per stage ([] = default)")
    pool_size: int = option(1, lo=1, help="pooled map size fed to fc (2 for 64x64 PreActResNet-18)")

    def kwargs(self) -> dict:
        """Constructor arguments beyond name/classes/channels, defaults left out."""
        kw = {"ra_blocks": self.ra_blocks}
        if self.pool_size != 1:
            kw["pool_size"] = self.pool_size
        accepted = inspect.signature(MODELS[self.name]).parameters
        for key, unset in (("width", 0), ("num_blocks", [])):
            value = getattr(self, key)
            if value != unset:
                if key not in accepted:
                    raise UserError(f"model.{key} applies to narrow_resnet only, not to {self.name}")
                kw[key] = list(value) if key == "num_blocks" else value
        return kw


@dataclass
class TrainConfig:
    epochs: int = option(10, lo=1)
    batch_size: int = option(128, lo=2)
    lr: float = option(0.01, lo=0, lo_open=True)
    momentum: float = option(0.9, lo=0, hi=1)
    weight_decay: float = option(2e-4, lo=0)
    schedule: str = option("piecewise", choices=("piecewise", "cosine", "constant"))
    milestones: list = option([], help="piecewise: epochs where the lr is multiplied by gamma")
    gamma: float = option(0.1, lo=0, lo_open=True)
    seed: int = option(0)
    deterministic: bool | str = option(
        "auto",
        choices=("auto", True, False),
        types=(str, bool),
        help='deterministic kernels: "auto" = on a CPU (runs are then bit-reproducible), off on CUDA '
        "(cuDNN autotuning); true on CUDA sets what determinism needs and says what stays nondeterministic",
    )
    device: str = option("auto", choices=("auto", "cpu", "cuda"))
    sync_bn: bool = option(False, help="multi-process runs: batch statistics over the global batch")
    precision: str = option(
        "fp32",
        choices=PRECISIONS,
        help="fp32 (TF32 off); tf32: CUDA tensor cores (approximate); bf16: autocast forwards and loss (approximate)",
    )
    channels_last: bool | str = option(
        "auto",
        choices=("auto", True, False),
        types=(str, bool),
        help='NHWC memory layout (exact; faster convolutions): "auto" = on CUDA, '
        "and on a CPU where the model avoids oneDNN issue 6035 (ancra.hardware)",
    )
    compile: bool = option(False, help="torch.compile the network: every forward of a step (GPU; long first step)")
    compile_backend: str = option(
        "inductor", choices=("inductor", "aot_eager", "eager"), help="torch.compile backend (eager ones: to debug)"
    )
    val_pgd_steps: int = option(10, lo=1)
    select: str = option(
        "val_robust",
        choices=("val_robust", "val_pgd", "last"),
        help="best.pt: the epoch with the best val_robust accuracy (plain PGD, and on an RA model also PGD on "
        "the summed CE of every head, which RA's argmax gate does not mask), val_pgd (plain PGD only, "
        "masked on RA models) or the last epoch",
    )
    val_batch_size: int = option(500, lo=1)
    max_steps_per_epoch: int = option(0, lo=0, help="cap steps per epoch (0 = full epochs; smoke tests)")
    tensorboard: bool = option(
        False, help="also write TensorBoard scalars to OUT/tensorboard (pip install 'ancra[tensorboard]')"
    )
    init_from: str = option(
        "", help="start from these weights: an ancra weights file or a state dict of the same architecture"
    )


SECTIONS = {"data": DataConfig, "model": ModelConfig, "objective": Objective, "train": TrainConfig}


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: Objective = field(default_factory=Objective)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def config_from_dict(raw: dict) -> Config:
    """Validate a nested dict (as read from TOML) into a :class:`Config`."""
    for section in raw:
        if section not in SECTIONS:
            raise UserError(f"unknown config section [{section}]: valid sections are {', '.join(SECTIONS)}")
    built = {}
    for section, cls in SECTIONS.items():
        values = raw.get(section, {})
        if not isinstance(values, dict):
            raise UserError(f"[{section}] must be a table of keys, got {values!r}")
        known = {f.name: f for f in fields(cls)}
        for key in values:
            if key not in known:
                raise UserError(f"unknown key {section}.{key}: valid keys are {', '.join(known)}")
        built[section] = cls(**{k: check_option(f"{section}.{k}", known[k], v) for k, v in values.items()})
    cfg = Config(**built)
    _check_consistency(cfg)
    return cfg


def _check_consistency(cfg: Config) -> None:
    """Cross-key rules that single-key checks cannot express."""
    cfg.model.kwargs()
    if any(not isinstance(m, int) or m < 0 for m in cfg.train.milestones):
        raise UserError(f"train.milestones must be a list of epoch numbers >= 0, got {cfg.train.milestones}")
    if cfg.train.sync_bn and cfg.train.compile:
        raise UserError(
            "train.sync_bn = true with train.compile = true: torch.compile breaks its graph at every "
            "synchronised BatchNorm (an all-reduce per layer), so little of the step is compiled, and "
            "SyncBatchNorm under compile + DDP has open torch issues: set one of them to false"
        )
    if cfg.objective.step_size > cfg.objective.eps * 2.5 + 1e-12:
        raise UserError(
            f"objective.step_size = {cfg.objective.step_size} is larger than 2.5 * eps "
            f"({cfg.objective.eps}): the attack would just bounce on the eps-ball"
        )


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"train.epochs=3"`` -> ``("train", "epochs", 3)``."""
    key, sep, value = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not name:
        raise UserError(f"--set expects section.key=value (e.g. train.epochs=3), got {text!r}")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()  # a bare word: take it as a string
    return section, name, parsed


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a TOML config (or defaults when ``path`` is None) and apply ``--set`` overrides."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist (see configs/ for the shipped ones)")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"config file {path} is not valid TOML: {e}") from None
    for text in overrides:
        section, name, value = parse_override(text)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise UserError(f"[{section}] must be a table of keys")
        raw[section][name] = value
    return config_from_dict(raw)
