"""One configuration object for an evaluation: :class:`EvalConfig`.

Everything that decides an evaluation's numbers (suite, budgets, seed, batch size, AutoAttack
version) lives here and is passed as one object to the standard attacks, AutoAttack, the adaptive
cascade and the sanity checks; :meth:`EvalConfig.as_dict` is what the report records. The adaptive
budgets are those of docs/EVALUATION.md, "Adaptive attacks"; docs/PERFORMANCE.md, "Cost of the
evaluation", has the measurements behind them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

from ..errors import UserError

SUITES = ("standard", "adaptive", "full")
AUTOATTACK_VERSIONS = ("standard", "plus", "rand")

#: reduced adaptive budgets of ``quick`` evaluations (tests and demos; never headline numbers)
QUICK_BUDGETS = dict(
    pgd_steps=20,
    apgd_iter=20,
    apgd_t_targets=1,
    a4_targets=1,
    square_queries_aux=200,
    square_queries_ra=0,
    square_queries_plain=500,
    square_restarts=1,
)


@dataclass
class EvalConfig:
    """Settings of one evaluation (see the module docstring).

    Attributes:
        eps: L-inf budget.
        suite: ``standard``, ``adaptive`` or ``full`` (:data:`SUITES`).
        quick: reduced budgets everywhere (:data:`QUICK_BUDGETS`, custom AutoAttack); recorded.
        batch_size, seed: as in every attack.
        device: where the model and inputs live (``None``: the inputs' device).
        dataset: registry name; decides the PGD step and the eps sweep.
        pgd_step: PGD step size of the standard suite (``None``: the dataset's rule).
        autoattack_version: ``standard`` (reference), ``plus`` or ``rand``.
        square_queries: Square queries inside AutoAttack (5000 in its standard version).
        standalone: also run each adaptive family alone on every clean-correct example.
        pgd_steps: steps of our judged PGD (A1-A6).
        apgd_iter: iterations of every APGD run of the adaptive suite.
        dlr: A1 also runs APGD-DLR.
        temperatures: soft-gate temperatures of A2 (BPDA) and A3 (soft surrogate).
        apgd_t_targets: target classes of A1's APGD-T on the first aux head.
        a4_targets: classes enumerated per example by A4 (``None``: every class but the label).
        square_queries_aux: queries of A1's Square on the first aux head (0: none).
        square_queries_ra, square_queries_plain: queries of A6 Square on RA / plain models (0: none).
        square_restarts: restarts of A6 Square.
        out_dir: where AutoAttack keeps its resumable state and logs.
        echo: progress callback (one line per attack).
    """

    eps: float
    suite: str = "standard"
    quick: bool = False
    batch_size: int = 256
    seed: int = 0
    device: torch.device | None = None
    dataset: str = "fmnist"
    pgd_step: float | None = None
    autoattack_version: str = "standard"
    square_queries: int = 5000
    standalone: bool = False
    pgd_steps: int = 100
    apgd_iter: int = 100
    dlr: bool = True
    temperatures: tuple[float, ...] = (0.1,)
    apgd_t_targets: int = 3
    a4_targets: int | None = 1
    square_queries_aux: int = 1000
    square_queries_ra: int = 0
    square_queries_plain: int = 20000
    square_restarts: int = 2
    out_dir: Path | None = None
    echo: Callable | None = field(default=None, repr=False)

    @classmethod
    def make(cls, eps: float, quick: bool = False, **overrides) -> "EvalConfig":
        """Full (headline) budgets, or :data:`QUICK_BUDGETS` when ``quick``; ``overrides`` whose
        value is not ``None`` replace either."""
        base = dict(QUICK_BUDGETS) if quick else {}
        base.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(base) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown evaluation setting(s): {', '.join(sorted(unknown))}")
        cfg = cls(eps=eps, quick=quick, **base)
        cfg.check()
        return cfg

    def check(self) -> None:
        """Refuse settings no attack can run with (a :class:`~ancra.errors.UserError`, one line)."""
        if self.suite not in SUITES:
            raise UserError(f"unknown evaluation suite {self.suite!r}: choose one of {', '.join(SUITES)}")
        if not 0 < self.eps <= 1:
            raise UserError(f"eps must be in (0, 1], got {self.eps}")
        if self.batch_size < 1:
            raise UserError("batch_size must be >= 1")
        if self.autoattack_version not in AUTOATTACK_VERSIONS:
            raise UserError(
                f"unknown AutoAttack version {self.autoattack_version!r}: choose standard, plus or rand "
                "(quick=True runs the reduced custom version)"
            )
        for name in (
            "pgd_steps",
            "apgd_iter",
            "square_queries_aux",
            "square_queries_ra",
            "square_queries_plain",
            "square_restarts",
        ):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.temperatures or any(t <= 0 for t in self.temperatures):
            raise UserError("temperatures must be a non-empty list of positive numbers")

    @property
    def adaptive(self) -> bool:
        return self.suite in ("adaptive", "full")

    def with_(self, **changes) -> "EvalConfig":
        return replace(self, **changes)

    def as_dict(self) -> dict:
        """JSON-ready settings for the report (no callbacks, paths or devices)."""
        skip = {"echo", "out_dir", "device"}
        return {
            f.name: (list(v) if isinstance(v, tuple) else v)
            for f in fields(self)
            if f.name not in skip and not isinstance(v := getattr(self, f.name), Callable)
        }
