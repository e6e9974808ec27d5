"""AutoAttack and its component attacks through the reference implementation (``pyautoattack``).

docs/EVALUATION.md, "Standard suite" requires the reference AutoAttack (PyPI ``pyautoattack`` 0.2.0, Croce &
Hein's code; the import name is ``pyautoattack``, not ``autoattack``). Its API::

    AutoAttack(model, norm='Linf', eps=..., version='standard', device=..., seed=...)
    x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=..., state_path=Path(...))

What this module adds around it:

* **Per-example results.** AutoAttack returns only ``x_adv``; the per-example ``robust`` flag is
  recomputed by running the *judge* (the real, hard-gated model) on ``x_adv``. When AutoAttack
  attacks the real model itself, its own robust flags (in the state file) are ANDed in too.
* **Finished runs are kept.** The state file and, once finished, ``aa_result_*.pt`` (inputs, log,
  seconds) live in the output folder, named after the attacked model, data, version, budgets, eps,
  n and seed, so a rerun reuses a finished run and never reads a foreign one. An *interrupted* run
  is restarted, not resumed: pyautoattack's resume returns only the inputs of the examples it
  attacks after the restart, and every break the evaluation counts must keep its input.
* **Its checks become flags.** AutoAttack logs warnings (randomised defence, softmax output, zero
  gradients, "Square beats white-box", dynamic forward, too many target classes) on the
  ``auto-attack`` logger. They are captured, written to ``autoattack*.log`` and turned into short
  flags; the per-component accuracies and success counts are parsed from the same log.
* **A quick mode** for tests and demos: ``version='custom'`` with APGD-CE and APGD-T only and fewer
  iterations; the report records exactly what ran.

:func:`apgd`, :func:`apgd_targeted_to` and :func:`square` expose the component attacks with their
reference code for the adaptive suite (A1-A6), which attacks surrogates and judges on the real model.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path

import torch
from torch import nn

from ..attacks import attack_mode
from ..checkpoint import atomic_save
from ..errors import UserError
from .common import AttackResult, Timer, batches, predict
from .pyautoattack_compat import fixed_state_class, patched_state, set_apgd_iters

try:  # the reference AutoAttack (MIT): PyPI "pyautoattack", module "pyautoattack"
    import pyautoattack as _pyaa
    from pyautoattack import AutoAttack
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.square import SquareAttack
except ImportError:  # pragma: no cover - exercised only without the optional dependency
    _pyaa = None

#: AutoAttack's standard attack list (docs/EVALUATION.md, "Standard suite") and the quick variant.
STANDARD_ATTACKS = ["apgd-ce", "apgd-t", "fab-t", "square"]
QUICK_ATTACKS = ["apgd-ce", "apgd-t"]

#: warning text of AutoAttack's checks -> short flag name (see pyautoattack/checks.py)
_CHECK_PATTERNS = [
    ("randomized defense", "aa_randomized"),
    ("probability distribution", "aa_softmax_output"),
    ("zero gradient", "aa_zero_gradients"),
    ("Square Attack has decreased", "aa_square_beats_whitebox"),
    ("dynamic defense", "aa_dynamic_forward"),
    ("target classes", "aa_n_classes"),
    ("not possible to use", "aa_n_classes"),
]


def fingerprint(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> str:
    """Short hash of the data and the model's weights: a saved AutoAttack state or result is only
    reused for the very same model and examples."""
    import hashlib

    h = hashlib.sha1()
    for t in [x, y, *[p for p in model.state_dict().values() if torch.is_tensor(p)]]:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:10]


def require_autoattack() -> None:
    if _pyaa is None:
        raise UserError(
            "the evaluation needs the reference AutoAttack: pip install 'pyautoattack==0.2.0' "
            "(or pip install 'ancra[eval]')"
        )


def autoattack_version() -> str | None:
    return getattr(_pyaa, "__version__", None)


class _Capture(logging.Handler):
    """Collects the ``auto-attack`` logger's records (and echoes them to a progress callback)."""

    def __init__(self, echo=None) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.echo = echo

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if self.echo is not None:
            self.echo(f"  autoattack: {record.getMessage()}")


@contextlib.contextmanager
def capture_autoattack_log(echo=None):
    logger = logging.getLogger("auto-attack")
    handler = _Capture(echo)
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # keep the root logger (and pytest's capture) quiet
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def parse_log(lines: list[str]) -> dict:
    """Cumulative accuracy after each component attack and per-attack success counts, parsed
    from AutoAttack's log lines (it returns neither)."""
    component_acc: dict[str, float] = {}
    perturbed: dict[str, int] = {}
    for line in lines:
        m = re.search(r"robust accuracy after (\S+): ([\d.]+)%", line)
        if m:
            component_acc[m.group(1).lower()] = float(m.group(2)) / 100
        m = re.search(r"initial accuracy: ([\d.]+)%", line)
        if m:
            component_acc["clean"] = float(m.group(1)) / 100
        m = re.search(r"^(\S+) - \d+/\d+ - (\d+) out of (\d+) successfully perturbed", line)
        if m:
            perturbed[m.group(1)] = perturbed.get(m.group(1), 0) + int(m.group(2))
    return {"component_acc": component_acc, "perturbed": perturbed}


def _flags_from_records(records, prefix: str) -> list[str]:
    """One flag per kind of AutoAttack warning (the first message, with a repeat count)."""
    first: dict[str, str] = {}
    count: dict[str, int] = {}
    for r in records:
        if r.levelno < logging.WARNING:
            continue
        msg = r.getMessage()
        code = next((c for pat, c in _CHECK_PATTERNS if pat in msg), "aa_warning")
        first.setdefault(code, msg)
        count[code] = count.get(code, 0) + 1
    return [
        f"{code}: AutoAttack check on {prefix}: {msg}" + (f" (warned {count[code]} times)" if count[code] > 1 else "")
        for code, msg in first.items()
    ]


def run_autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    judge: nn.Module | None = None,
    version: str = "standard",
    attacks: list[str] | None = None,
    quick: bool = False,
    n_iter: int | None = None,
    n_target_classes: int | None = None,
    square_queries: int = 5000,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
    out_dir: Path | None = None,
    name: str = "autoattack",
    clean_correct: torch.Tensor | None = None,
    echo=None,
    group: str = "standard",
    kind: str = "whitebox",
) -> AttackResult:
    """Reference AutoAttack on ``model``; per-example success judged on ``judge`` (default: ``model``).

    Args:
        model: the module AutoAttack attacks (the real model, a BPDA wrapper of it, an aux head).
        judge: the real model that decides success (``None``: ``model`` itself). When it differs
            from ``model`` the run is a transfer and is not resumable (AutoAttack's state holds
            flags about ``model``, not about the judge).
        version: ``standard`` (APGD-CE, APGD-T 9 targets, FAB-T 9 targets, Square 5000 queries),
            ``plus``, ``rand`` or ``custom`` with ``attacks``.
        quick: ``custom`` APGD-CE + APGD-T with ``n_iter`` (default 20) iterations and 3 targets,
            for tests and demos; never for headline numbers.
        out_dir: where the state file (``aa_state_<name>...json``) and the log go.
    """
    require_autoattack()
    device = x.device if device is None else device
    same_forward = judge is None or judge is model
    judge = model if judge is None else judge
    if quick:
        version, attacks = "custom", list(attacks or QUICK_ATTACKS)
        n_iter = n_iter or 20
        n_target_classes = n_target_classes or 3
    if version != "custom":
        attacks = None
    with attack_mode(model):
        with torch.no_grad():
            n_cls = int(model(x[:2]).shape[1])
        aa = AutoAttack(model, attacks=attacks, device=device, eps=eps, norm="Linf", seed=seed, version=version)
        if version == "custom":
            aa.apgd.n_restarts = 1
            aa.fab.n_restarts = 1
        if n_iter is not None:
            set_apgd_iters(aa.apgd, n_iter)
            set_apgd_iters(aa.apgd_targeted, n_iter)
            aa.fab.n_iter = n_iter
        # more target classes than classes would crash APGD-T / FAB-T (AutoAttack only warns)
        aa.apgd_targeted.n_target_classes = min(n_target_classes or aa.apgd_targeted.n_target_classes, n_cls - 1)
        aa.fab.n_target_classes = min(n_target_classes or aa.fab.n_target_classes, n_cls - 1)
        if square_queries != 5000 or version == "custom":
            aa.square.n_queries = square_queries
        attacks_run = list(aa.attacks_to_run)
        state_path = result_path = None
        if out_dir is not None and same_forward:
            tag = (
                f"{name}_{version}_{'-'.join(attacks_run)}_it{aa.apgd.n_iter}_t{aa.apgd_targeted.n_target_classes}"
                f"_q{aa.square.n_queries}_eps{eps:.6g}_n{len(x)}_seed{seed}_{fingerprint(model, x, y)}"
            )
            tag = re.sub(r"[^A-Za-z0-9_.-]", "_", tag)
            state_path = Path(out_dir) / f"aa_state_{tag}.json"
            result_path = Path(out_dir) / f"aa_result_{tag}.pt"
        resumed = saved = None
        if result_path is not None and result_path.exists():
            try:
                saved = torch.load(result_path, map_location=x.device, weights_only=True)
            except Exception:  # noqa: BLE001 - unreadable (e.g. torn by a crash): run AutoAttack again
                result_path.unlink()
        if saved is not None:
            # a finished run of this exact configuration: reuse it (resumable evaluation)
            x_adv, records, seconds, resumed = saved["x_adv"], saved["log"], saved["seconds"], "finished run reused"
            cap_records = [logging.makeLogRecord(r) for r in records]
        else:
            if state_path is not None and state_path.exists():
                # An interrupted run could resume from AutoAttack's state, but a resumed run only
                # returns the inputs of the examples it attacks after the restart: the examples
                # broken before would be counted without an input that ``ancra verify`` can check.
                # Start afresh (runs are chunk-sized; ``ancra eval --chunk-size`` keeps finished chunks).
                state_path.unlink()
                resumed = "interrupted run restarted (a resumed run loses the inputs found before the stop)"
            with Timer() as t, capture_autoattack_log(echo) as cap, patched_state():
                try:
                    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=batch_size, state_path=state_path)
                except ValueError as e:
                    if state_path is not None and "state" in str(e):
                        raise UserError(f"{state_path}: {e} Delete the file to start AutoAttack afresh.") from None
                    raise
            cap_records, seconds = cap.records, t.seconds
            if result_path is not None:  # atomic: a torn file would be "reused" by the rerun
                atomic_save(
                    {
                        "x_adv": x_adv.detach().cpu(),
                        "seconds": seconds,
                        "log": [
                            {"levelno": r.levelno, "levelname": r.levelname, "msg": r.getMessage()} for r in cap_records
                        ],
                    },
                    result_path,
                )
    lines = [r.getMessage() for r in cap_records]
    if out_dir is not None:
        log_path = Path(out_dir) / f"{name}.log"
        log_path.write_text("\n".join(f"{r.levelname}: {r.getMessage()}" for r in cap_records) + "\n")
    parsed = parse_log(lines)
    flags = _flags_from_records(cap_records, name)
    if clean_correct is None:
        clean_correct = predict(judge, x, batch_size) == y
    correct = predict(judge, x_adv, batch_size) == y
    robust = clean_correct & correct
    if state_path is not None and state_path.exists():
        state = fixed_state_class().from_disk(state_path)
        if state.robust_flags is not None and len(state.robust_flags) == len(x):
            flags_ = state.robust_flags.to(robust.device)
            robust &= flags_
            correct &= flags_ | ~clean_correct
    info = {
        "version": version,
        "attacks": attacks_run,
        "apgd_n_iter": aa.apgd.n_iter,
        "apgd_t_n_iter": aa.apgd_targeted.n_iter,
        "apgd_t_targets": aa.apgd_targeted.n_target_classes,
        "fab_t_targets": aa.fab.n_target_classes,
        "square_queries": aa.square.n_queries,
        "quick": bool(quick),
        "seed": seed,
        "state_file": state_path.name if state_path is not None else None,
        "resumed": resumed,
        "transfer": not same_forward,
        "component_acc": parsed["component_acc"],
        "perturbed": parsed["perturbed"],
        "flags": flags,
    }
    return AttackResult(name, robust, correct, seconds, group, kind, info=info, x_adv=x_adv)


def apgd(
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    loss: str = "ce",
    n_iter: int = 100,
    restarts: int = 1,
    seed: int = 0,
    batch_size: int = 256,
    device=None,
) -> torch.Tensor:
    """Reference untargeted APGD (``ce`` or ``dlr``) on ``module``; returns adversarial inputs.

    APGD keeps, per example, the last iterate that fooled ``module`` (else the clean input), so the
    caller judges the returned inputs on the real model."""
    require_autoattack()
    device = x.device if device is None else device

    def make():
        return APGDAttack(
            module, n_iter=n_iter, norm="Linf", n_restarts=restarts, eps=eps, seed=seed, loss=loss, device=device
        )

    return _perturb_batches(module, x, y, make, batch_size=batch_size)


def _perturb_batches(module, x, y, make_attack, *, batch_size: int, grad: bool = True) -> torch.Tensor:
    """``perturb`` of a reference attack, one fresh attack per batch (``make_attack()``), as
    AutoAttack runs it: each batch starts from the attack's seed. ``grad=False`` for the
    black-box Square Attack."""
    out = []
    with attack_mode(module), torch.set_grad_enabled(grad):
        for s in batches(len(x), batch_size):
            out.append(make_attack().perturb(x[s], y[s]).detach())
    return torch.cat(out) if out else x.clone()


def _single_runs(module, x, y, make_attack, *, seed: int, batch_size: int) -> list[torch.Tensor]:
    """One ``attack_single_run`` of an APGD attack per batch, on every example of the batch.

    ``module``: a module, or ``module(batch_slice) -> nn.Module``; ``make_attack(module,
    batch_slice)`` builds the attack. Returns two candidates per example: the iterate of highest
    loss and the last iterate that fooled ``module`` (the clean input where none did)."""
    best, fooled = [], []
    for s in batches(len(x), batch_size):
        m = module if isinstance(module, nn.Module) else module(s)
        with attack_mode(m):
            xs, ys = x[s].detach().clone(), y[s].detach().clone()
            atk = make_attack(m, s)
            atk.init_hyperparam(xs)
            torch.random.manual_seed(seed)
            x_best, _, _, x_best_adv = atk.attack_single_run(xs, ys)
            best.append(x_best.detach())
            fooled.append(x_best_adv.detach())
    if not best:
        return [x.clone()]
    return [torch.cat(best), torch.cat(fooled)]


def apgd_all_examples(
    module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    loss: str = "dlr",
    n_iter: int = 100,
    seed: int = 0,
    batch_size: int = 256,
    device=None,
) -> list[torch.Tensor]:
    """Reference APGD (one run, ``ce`` or ``dlr``) on ``module``, on *every* example, also those
    ``module`` already misclassifies (``perturb`` would skip them and attack a subset of the batch).

    ``module`` is a module, or a callable ``module(batch_slice) -> nn.Module`` (a view whose gate
    depends on the batch's examples, e.g. A5's true-label masks).

    Returns two candidates per example for the caller to judge on the deployed model: the iterate
    of highest surrogate loss and the last iterate that fooled the surrogate. On a surrogate's own
    values this complements :func:`apgd` on a view with deployed values: the search follows the
    surrogate's own loss landscape, which was measured to find examples the deployed-value search
    misses (docs/PERFORMANCE.md, "Cost of the evaluation")."""
    require_autoattack()
    device = x.device if device is None else device

    def make(m, s):
        return APGDAttack(m, n_iter=n_iter, norm="Linf", n_restarts=1, eps=eps, seed=seed, loss=loss, device=device)

    return _single_runs(module, x, y, make, seed=seed, batch_size=batch_size)


def apgd_t(
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    n_iter: int = 100,
    n_targets: int = 9,
    seed: int = 0,
    batch_size: int = 256,
    device=None,
) -> torch.Tensor:
    """Reference APGD-T (targeted DLR, the ``n_targets`` highest-ranked classes of ``module``'s
    output in turn, as in AutoAttack) on ``module``; returns adversarial inputs, which the caller
    judges on the deployed model. On a view with ``deployed_values`` the ranking and every success
    check are the deployed model's."""
    require_autoattack()
    device = x.device if device is None else device

    def make():
        return APGDAttack_targeted(
            module,
            n_iter=n_iter,
            norm="Linf",
            n_restarts=1,
            eps=eps,
            seed=seed,
            device=device,
            n_target_classes=n_targets,
        )

    return _perturb_batches(module, x, y, make, batch_size=batch_size)


def apgd_targeted_to(
    module,
    x: torch.Tensor,
    y: torch.Tensor,
    target: int | torch.Tensor,
    *,
    eps: float,
    n_iter: int = 100,
    seed: int = 0,
    batch_size: int = 256,
    device=None,
) -> list[torch.Tensor]:
    """Reference APGD descending the CE to a *chosen* class ``target`` (A4 branch enumeration):
    one class for every example, or a ``(N,)`` tensor with one class per example.

    ``module`` is a module, or a callable ``module(batch_slice) -> nn.Module`` that builds the
    module for one batch (a view whose gate depends on the examples' targets).
    ``APGDAttack_targeted.perturb`` picks its own targets from the ranking of the output, so this
    calls its single-run routine with ``loss='ce-targeted'`` and ``y_target`` set to ``target``.
    Returns two candidates per example, the highest-objective iterate and the last iterate that
    fooled ``module``; the caller keeps whichever fools the deployed model."""
    require_autoattack()
    device = x.device if device is None else device
    targets = target if torch.is_tensor(target) else torch.full_like(y, int(target))

    def make(m, s):
        atk = APGDAttack_targeted(m, n_iter=n_iter, norm="Linf", n_restarts=1, eps=eps, seed=seed, device=device)
        atk.loss = "ce-targeted"
        atk.y_target = targets[s].to(y.device)
        return atk

    return _single_runs(module, x, y, make, seed=seed, batch_size=batch_size)


def square(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    n_queries: int = 5000,
    restarts: int = 1,
    seed: int = 0,
    batch_size: int = 256,
    device=None,
) -> torch.Tensor:
    """Reference Square Attack (margin loss, ``p_init=0.8``) on ``model``; the query schedule is
    rescaled to ``n_queries`` (``resc_schedule=True``) so 500 or 20000 queries both use the
    whole schedule."""
    require_autoattack()
    device = x.device if device is None else device

    def make():
        return SquareAttack(
            model,
            p_init=0.8,
            n_queries=int(n_queries),
            eps=eps,
            norm="Linf",
            n_restarts=restarts,
            seed=seed,
            verbose=False,
            device=device,
            resc_schedule=True,
        )

    return _perturb_batches(model, x, y, make, batch_size=batch_size, grad=False)


def n_classes(model: nn.Module, x: torch.Tensor) -> int:
    with attack_mode(model), torch.no_grad():
        return int(model(x[:1]).shape[1])


__all__ = [
    "run_autoattack",
    "apgd",
    "apgd_all_examples",
    "apgd_t",
    "apgd_targeted_to",
    "square",
    "autoattack_version",
    "parse_log",
    "STANDARD_ATTACKS",
    "QUICK_ATTACKS",
]
