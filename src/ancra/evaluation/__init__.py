"""Honest robustness evaluation (docs/EVALUATION.md): standard suite, adaptive attacks on the RA gate,
sanity checks, RobustBench-like reports and the saved adversarial inputs that let anyone re-check them.

Entry points: :func:`evaluate` (a model and tensors), :func:`evaluate_checkpoint` (a weights
file, what ``ancra eval`` runs) and :func:`verify_report` (``ancra verify``). The per-attack
functions and the adaptive families (:data:`FAMILIES`) are exported for custom studies; every
attack returns an :class:`AttackResult` whose ``robust`` is a per-example boolean tensor.
"""

from .adaptive import FAMILIES, a7_ra_off, run_adaptive, run_family, run_standalone
from .adversarial import load_adversarial
from .autoattack import apgd, apgd_t, apgd_targeted_to, run_autoattack, square
from .checkpoint import evaluate_checkpoint
from .common import AttackResult, is_ra_model
from .config import SUITES, EvalConfig
from .diagnostics import a8_diagnostics
from .judged import judged_pgd
from .report import build_report, load_per_example, merge_reports, write_report
from .sanity import run_sanity, sanity_flags
from .standard import clean, cw_attack, fgsm_attack, pgd_attack
from .suite import evaluate
from .verify import verify_report
from .wrappers import DeployedValues, RAView

__all__ = [
    "evaluate",
    "evaluate_checkpoint",
    "verify_report",
    "EvalConfig",
    "SUITES",
    "AttackResult",
    "is_ra_model",
    "RAView",
    "DeployedValues",
    "clean",
    "fgsm_attack",
    "pgd_attack",
    "cw_attack",
    "run_autoattack",
    "apgd",
    "apgd_t",
    "apgd_targeted_to",
    "square",
    "judged_pgd",
    "FAMILIES",
    "run_adaptive",
    "run_family",
    "run_standalone",
    "a7_ra_off",
    "a8_diagnostics",
    "run_sanity",
    "sanity_flags",
    "build_report",
    "write_report",
    "merge_reports",
    "load_per_example",
    "load_adversarial",
]
