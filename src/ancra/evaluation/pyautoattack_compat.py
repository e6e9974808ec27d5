"""What ancra changes in or around pyautoattack 0.2.0 to use it as the reference implementation.

Kept apart from :mod:`ancra.evaluation.autoattack` (which uses AutoAttack as published) so that
every departure from the reference code is in one place and can be dropped when upstream fixes it:

* :func:`fixed_state_class` / :func:`patched_state`: AutoAttack's resumable state file does not
  round-trip in 0.2.0 (every resume fails with "different set of attacks").
* :func:`set_apgd_iters`: changing an APGD's iterations after construction must also change the
  checkpoint schedule it derives from them in ``__init__``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch


def fixed_state_class():
    """``EvaluationState`` whose file round-trips.

    pyautoattack 0.2.0 writes the set of attacks with ``json.dump(default=str)``, i.e. as the
    string ``"{'apgd-ce', ...}"``, and compares it with a set when resuming, so every resume fails
    with "different set of attacks". This subclass writes lists and reads both forms."""
    import ast
    import json
    from dataclasses import asdict
    from datetime import datetime

    from pyautoattack.state import EvaluationState

    class FixedEvaluationState(EvaluationState):
        def to_disk(self, force: bool = False) -> None:
            since = (datetime.now() - self._last_saved).total_seconds()
            if self.path is None or (since < self._SAVE_TIMEOUT and not force):
                return
            self._last_saved = datetime.now()
            d = asdict(self)
            d["_attacks_to_run"] = sorted(self._attacks_to_run)
            d["_run_attacks"] = sorted(self._run_attacks)
            if self.robust_flags is not None:
                d["_robust_flags"] = self.robust_flags.cpu().tolist()
            tmp = Path(str(self.path) + ".tmp")
            with tmp.open("w") as f:
                json.dump(d, f, default=str)
            tmp.replace(self.path)

        @classmethod
        def from_disk(cls, path: Path) -> "FixedEvaluationState":
            with Path(path).open() as f:
                d = json.load(f)
            atr = d["_attacks_to_run"]
            d["_attacks_to_run"] = set(ast.literal_eval(atr) if isinstance(atr, str) else atr)
            d["_run_attacks"] = set(d.get("_run_attacks") or [])
            if d.get("_robust_flags") is not None:
                d["_robust_flags"] = torch.tensor(d["_robust_flags"], dtype=torch.bool)
            d["path"] = Path(path)
            d["_last_saved"] = datetime.fromisoformat(d["_last_saved"])
            return cls(**d)

    return FixedEvaluationState


@contextlib.contextmanager
def patched_state():
    """Use :func:`fixed_state_class` inside ``AutoAttack.run_standard_evaluation``."""
    import pyautoattack.autoattack as mod

    old = mod.EvaluationState
    mod.EvaluationState = fixed_state_class()
    try:
        yield mod.EvaluationState
    finally:
        mod.EvaluationState = old


def set_apgd_iters(apgd_attack, n_iter: int) -> None:
    """Change an APGD's iterations after construction: its checkpoint schedule is derived from
    ``n_iter`` in ``__init__`` and must follow (pyautoattack/autopgd_base.py)."""
    apgd_attack.n_iter = n_iter
    apgd_attack.n_iter_orig = n_iter
    apgd_attack.n_iter_2 = max(int(0.22 * n_iter), 1)
    apgd_attack.n_iter_min = max(int(0.06 * n_iter), 1)
    apgd_attack.size_decr = max(int(0.03 * n_iter), 1)
