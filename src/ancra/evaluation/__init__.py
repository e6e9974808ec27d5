"""Honest robustness evaluation (docs/EVALUATION.md): standard suite, adaptive attacks on the RA gate,
sanity checks and RobustBench-like reports.

Entry points: :func:`evaluate` (a model and tensors) and :func:`evaluate_checkpoint` (a weights
file, what ``ancra eval`` runs). The per-attack functions are exported for custom studies; every one
returns an :class:`AttackResult` whose ``robust`` is a per-example boolean tensor.
"""

from .adaptive import (
    a1_gate_attacks,
    a2_bpda,
    a3_soft_surrogate,
    a4_branch_enumeration,
    a5_true_label_masks,
    a6_transfer_and_blackbox,
    a7_ra_off,
    judged_pgd,
    run_adaptive,
)
from .autoattack import apgd, apgd_targeted_to, run_autoattack, square
from .checkpoint import evaluate_checkpoint
from .common import AttackResult, is_ra_model
from .diagnostics import a8_diagnostics
from .report import build_report, load_per_example, merge_reports, write_report
from .sanity import run_sanity, sanity_flags
from .standard import clean, cw_attack, fgsm_attack, pgd_attack
from .suite import SUITES, evaluate
from .wrappers import RAView

__all__ = [
    "evaluate",
    "evaluate_checkpoint",
    "SUITES",
    "AttackResult",
    "is_ra_model",
    "RAView",
    "clean",
    "fgsm_attack",
    "pgd_attack",
    "cw_attack",
    "run_autoattack",
    "apgd",
    "apgd_targeted_to",
    "square",
    "judged_pgd",
    "run_adaptive",
    "a1_gate_attacks",
    "a2_bpda",
    "a3_soft_surrogate",
    "a4_branch_enumeration",
    "a5_true_label_masks",
    "a6_transfer_and_blackbox",
    "a7_ra_off",
    "a8_diagnostics",
    "run_sanity",
    "sanity_flags",
    "build_report",
    "write_report",
    "merge_reports",
    "load_per_example",
]
