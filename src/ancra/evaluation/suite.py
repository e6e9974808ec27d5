"""``evaluate``: run a suite of docs/EVALUATION.md on a model and write the report.

Suites:

* ``standard`` ("Standard suite"): clean, FGSM, PGD-20, PGD-40, CW-inf-30, AutoAttack.
* ``adaptive`` ("Adaptive attacks"): clean, FGSM, PGD-20 and AutoAttack, then the adaptive cascade A1-A6
  (RA models; A6 only for plain models), A7 ablation and A8 diagnostics. Headline of an RA model:
  the per-example minimum over every attack that counts: the standard ones, AutoAttack and A1-A6
  (``worst_case_acc``; the report lists them in ``worst_case_over``).
* ``full``: both.

The sanity checks ("Sanity checks") run with every suite (their extra attacks are cheap PGD runs).
The CLI calls ``load_model`` and then :func:`evaluate`; a multi-process evaluation runs shards of
the test set with ``evaluate`` each and merges them with :func:`~.report.merge_reports`.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from ..attacks import attack_mode
from ..errors import UserError
from ..hardware import device_info
from . import autoattack as aam
from .adaptive import AdaptiveConfig, a7_ra_off, run_adaptive
from .common import AttackResult, EvalLog, is_ra_model, with_grad_path
from .diagnostics import a8_diagnostics
from .report import software_versions, write_report
from .sanity import run_sanity
from .standard import clean, cw_attack, default_step, fgsm_attack, pgd_attack

SUITES = ("standard", "adaptive", "full")


def _check_inputs(model, x, y, suite, eps, batch_size, autoattack_version):
    if suite not in SUITES:
        raise UserError(f"unknown evaluation suite {suite!r}: choose one of {', '.join(SUITES)}")
    if not isinstance(model, nn.Module):
        raise UserError("evaluate() needs a torch.nn.Module")
    if not torch.is_tensor(x) or not torch.is_tensor(y) or x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
        raise UserError("evaluate() needs images x (N, C, H, W) and labels y (N,) of the same length")
    if len(x) == 0:
        raise UserError("no examples to evaluate")
    if not x.is_floating_point() or float(x.min()) < 0 or float(x.max()) > 1:
        raise UserError("images must be float tensors in [0, 1] (the models normalise nothing)")
    if not 0 < eps <= 1:
        raise UserError(f"eps must be in (0, 1], got {eps}")
    if batch_size < 1:
        raise UserError("batch_size must be >= 1")
    if autoattack_version not in ("standard", "plus", "rand"):
        raise UserError(
            f"unknown AutoAttack version {autoattack_version!r}: choose standard, plus or rand "
            "(quick=True runs the reduced custom version)"
        )


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    suite: str = "standard",
    eps: float,
    out_dir,
    batch_size: int = 256,
    seed: int = 0,
    transfer_model: nn.Module | None = None,
    device: str | torch.device = "cpu",
    dataset: str = "fmnist",
    progress: bool = True,
    autoattack_version: str = "standard",
    square_queries: int = 5000,
    quick: bool = False,
    meta: dict | None = None,
    pgd_step: float | None = None,
    adaptive_square_queries: int | None = None,
    subset: str | None = None,
) -> dict:
    """Evaluate ``model`` on ``(x, y)`` under an L-inf budget ``eps``; write and return the report.

    Args:
        model: any classifier ``model(x) -> logits``; RA models (``RANet`` with ``ra_blocks > 0``)
            get the adaptive attacks A1-A5/A7 and the gate diagnostics.
        x, y: test images (float in [0, 1]) and labels.
        suite: ``standard``, ``adaptive`` or ``full`` (see module docstring).
        out_dir: folder for ``report.json``, ``report.md``, the plots, ``per_example.pt``, the
            AutoAttack state (resumable) and logs.
        transfer_model: a same-architecture model trained without RA (A6 transfer source; used
            by the ``adaptive`` and ``full`` suites).
        autoattack_version: ``standard`` (reference), ``plus`` or ``rand``; ``quick`` replaces it by
            ``custom`` APGD-CE + APGD-T with 20 iterations (tests and demos only; recorded).
        square_queries: Square queries inside AutoAttack (5000 in the standard version).
        quick: reduced budgets everywhere (recorded in the report; never for headline numbers).
        meta: free-form run information (``checkpoint_hash``, model-selection rule...), copied
            into the report.
        pgd_step: PGD step size (default 2/255 on CIFAR-like data, eps/4 otherwise).
        adaptive_square_queries: A6 Square queries (default 20000, 500 when ``quick``).
        subset: label of the example subset (e.g. ``"first 1000 test examples"``) for the report.
    Returns the report dict (also in ``out_dir/report.json``).
    """
    _check_inputs(model, x, y, suite, eps, batch_size, autoattack_version)
    t_start = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    model = model.to(device)
    if transfer_model is not None:
        transfer_model = transfer_model.to(device)
    x = x.detach().to(device, torch.float32)
    y = y.detach().to(device, torch.long)
    n = len(x)
    log = EvalLog(progress)
    torch.manual_seed(seed)
    step = default_step(eps, dataset) if pgd_step is None else pgd_step
    ra = is_ra_model(model)
    log(
        f"evaluating {type(model).__name__} ({'RA' if ra else 'no RA'}) on {n} examples, eps={eps:g}, "
        f"suite={suite}{' (quick)' if quick else ''}"
    )

    extra_flags: list[str] = []
    results: list[AttackResult] = []
    x_store = x.clone()  # one successful adversarial input per example (A8)
    has_adv = torch.zeros(n, dtype=torch.bool, device=device)

    def add(r: AttackResult) -> AttackResult:
        nonlocal has_adv
        if r.x_adv is not None:
            new = clean_correct & ~r.correct & ~has_adv  # inputs this attack produced that fool the model
            if new.any():
                x_store[new] = r.x_adv[new]
                has_adv |= new
            r.x_adv = None  # free memory: only the store is kept
        results.append(r)
        if not r.cascade:  # cascade attacks print their own line as they finish
            log(f"{r.name}: acc {r.acc:.2%} in {r.seconds:.1f} s")
        return r

    with attack_mode(model):
        # ``attacked`` is what the gradient attacks differentiate: the model itself, or a zero-gradient
        # wrapper of it when its output has no autograd path to the input (see GradPath). Built in
        # eval mode: wrappers mirror the model's mode when attack_mode() restores them.
        attacked, no_path = with_grad_path(model, x)
        if no_path:
            extra_flags.append(
                "no_gradient_path: model(x) has no autograd path to x (non-differentiable output); "
                "gradient attacks on it see zero gradients"
            )
        clean_correct = add(clean(model, x, y, batch_size=batch_size)).robust
        common = dict(
            eps=eps, batch_size=batch_size, clean_correct=clean_correct, seed=seed, dataset=dataset, device=device
        )
        have = {}
        add(fgsm_attack(attacked, x, y, eps=eps, batch_size=batch_size, clean_correct=clean_correct))
        have["pgd-20"] = add(pgd_attack(attacked, x, y, steps=20, step_size=step, **common))
        if suite in ("standard", "full"):
            have["pgd-40"] = add(pgd_attack(attacked, x, y, steps=40, step_size=step, **common))
            add(cw_attack(attacked, x, y, steps=30, step_size=step, **common))
        aa_res = aam.run_autoattack(
            attacked,
            x,
            y,
            eps=eps,
            version=autoattack_version,
            quick=quick,
            square_queries=square_queries,
            batch_size=batch_size,
            seed=seed,
            device=device,
            out_dir=out_dir,
            name="autoattack",
            clean_correct=clean_correct,
            echo=log if progress else None,
        )
        add(aa_res)

        cfg = None
        diag = {}
        if suite in ("adaptive", "full"):
            cfg = AdaptiveConfig.make(
                eps,
                quick,
                batch_size=batch_size,
                seed=seed,
                device=device,
                out_dir=out_dir,
                echo=log if progress else None,
                square_queries=adaptive_square_queries,
            )
            alive = torch.stack([r.robust for r in results if r.in_worst_case]).all(0)
            log(f"adaptive suite on the {int(alive.sum())} examples that survived the attacks above")
            for r in run_adaptive(model, x, y, alive=alive, cfg=cfg, transfer_model=transfer_model):
                add(r)
            if ra:
                for r in a7_ra_off(model, x, y, eps=eps, steps=20, step_size=step, batch_size=batch_size, seed=seed):
                    add(r)
        log("A8 diagnostics and sanity checks")
        diag = a8_diagnostics(model, x, y, x_store, has_adv, batch_size=batch_size, grad_model=attacked)
        sanity = run_sanity(
            attacked,
            x,
            y,
            eps=eps,
            dataset=dataset,
            clean_correct=clean_correct,
            have=have,
            quick=quick,
            adaptive=suite in ("adaptive", "full"),
            batch_size=batch_size,
            seed=seed,
            step_size=step,
            echo=log,
            ra_model=model,
        )

    pe: dict[str, torch.Tensor] = {"clean": clean_correct, "labels": y}
    attacks: dict[str, dict] = {}
    for r in results:
        pe[f"robust/{r.name}"] = r.robust
        pe[f"correct/{r.name}"] = r.correct
        attacks[r.name] = r.meta()
    pe.update(diag)
    pe.update(sanity)
    spec = getattr(model, "spec", None)
    context = {
        "dataset": dataset,
        "eps": eps,
        "seed": seed,
        "suite": suite,
        "quick": quick,
        "model_spec": dict(spec) if isinstance(spec, dict) else None,
        "architecture": type(model).__name__,
        "is_ra_model": ra,
        "subset": subset if subset is not None else (f"subset of {n} examples" if n < 10000 else None),
        "meta": dict(meta or {}),
        "extra_flags": extra_flags,
        "software": software_versions(),
        "hardware": device_info(device),
        "total_seconds": round(time.time() - t_start, 2),
        "config": {
            "batch_size": batch_size,
            "device": str(device),
            "pgd_step": step,
            "autoattack_version": autoattack_version,
            "square_queries": square_queries,
            "quick": quick,
            "transfer_model": None
            if transfer_model is None
            else (getattr(transfer_model, "spec", None) or type(transfer_model).__name__),
            "adaptive": cfg.as_dict() if cfg is not None else None,
        },
    }
    report = write_report(pe, attacks, context, out_dir)
    log(
        f"clean {report['clean_acc']:.2%}, AutoAttack {report['autoattack_acc']:.2%}, worst case "
        f"{report['worst_case_acc']:.2%}; {len(report['flags'])} flag(s); report in {out_dir} "
        f"({report['timings']['total']:.0f} s)"
    )
    for f in report["flags"]:
        log(f"FLAG {f}")
    return report
