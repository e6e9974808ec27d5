"""``evaluate``: run a suite of docs/EVALUATION.md on a model and write the report.

Suites:

* ``standard`` ("Standard suite"): clean, FGSM, PGD-20, PGD-40, CW-inf-30, AutoAttack.
* ``adaptive`` ("Adaptive attacks"): clean, FGSM, PGD-20 and AutoAttack, then the adaptive cascade A1-A6
  (RA models; A6 only for plain models), A7 ablation and A8 diagnostics; with ``standalone`` also
  each adaptive family alone on every clean-correct example. Headline of an RA model:
  the per-example minimum over every attack that counts: the standard ones, AutoAttack and A1-A6
  (``worst_case_acc``; the report lists them in ``worst_case_over``).
* ``full``: both.

The sanity checks ("Sanity checks") run with every suite (their extra attacks are cheap PGD runs).
Every broken example's adversarial input is kept in ``adversarial.pt`` (:mod:`.adversarial`) for
``ancra verify``. On CUDA the evaluation runs with TF32 off (:func:`~.common.fp32_math`).
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
from .adaptive import a7_ra_off, run_adaptive, run_standalone
from .adversarial import AdversarialStore
from .common import AttackResult, EvalLog, fp32_math, is_ra_model, with_grad_path
from .config import SUITES, EvalConfig
from .diagnostics import a8_diagnostics
from .report import software_versions, write_report
from .sanity import run_sanity
from .standard import clean, cw_attack, default_step, fgsm_attack, pgd_attack

__all__ = ["SUITES", "EvalConfig", "evaluate"]


def _check_inputs(model, x, y) -> None:
    if not isinstance(model, nn.Module):
        raise UserError("evaluate() needs a torch.nn.Module")
    if not torch.is_tensor(x) or not torch.is_tensor(y) or x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
        raise UserError("evaluate() needs images x (N, C, H, W) and labels y (N,) of the same length")
    if len(x) == 0:
        raise UserError("no examples to evaluate")
    if not x.is_floating_point() or float(x.min()) < 0 or float(x.max()) > 1:
        raise UserError("images must be float tensors in [0, 1] (the models normalise nothing)")


def adaptive_coverage(ra: bool, transfer: bool, cfg: EvalConfig) -> dict[str, str]:
    """Which adaptive families ran on this model, and why the others did not (in the report: an
    evaluation of a model without RA heads is not an audit of RA's gate)."""
    gate = "applied" if ra else "not applicable: the model has no Reverse-Attention heads"
    square = cfg.square_queries_ra if ra else cfg.square_queries_plain
    return {
        "A1-A5 (gate attacks, BPDA, soft gate, branch enumeration, true-label masks)": gate,
        "A6 transfer": "applied" if transfer else "not run: no transfer model (--transfer-from)",
        "A6 Square": f"applied ({square} queries)"
        if square
        else "not run: 0 queries for RA models (no break in the first suite, docs/PERFORMANCE.md)",
        "A7 RA-off ablation, A8 gate diagnostics": gate,
    }


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    out_dir,
    eps: float | None = None,
    suite: str = "standard",
    config: EvalConfig | None = None,
    transfer_model: nn.Module | None = None,
    progress: bool = True,
    meta: dict | None = None,
    subset: str | None = None,
    **settings,
) -> dict:
    """Evaluate ``model`` on ``(x, y)`` under an L-inf budget ``eps``; write and return the report.

    Args:
        model: any classifier ``model(x) -> logits``; RA models (``RANet`` with ``ra_blocks > 0``)
            get the adaptive attacks A1-A5/A7 and the gate diagnostics.
        x, y: test images (float in [0, 1]) and labels, on the device to evaluate on (the model
            is moved there unless ``device`` says otherwise).
        out_dir: folder for ``report.json``, ``report.md``, the plots, ``per_example.pt``,
            ``adversarial.pt``, the AutoAttack state (resumable) and logs.
        eps, suite: the budget and the suite (see the module docstring).
        config: an :class:`EvalConfig` with every setting (then ``eps``, ``suite`` and
            ``settings`` must not be given).
        transfer_model: a same-architecture model trained without RA (A6 transfer source; used
            by the ``adaptive`` and ``full`` suites).
        meta: free-form run information (``checkpoint``, ``checkpoint_hash``, ``first_example``,
            model-selection rule...), copied into the report.
        subset: label of the example subset (e.g. ``"first 1000 test examples"``) for the report.
        settings: any other :class:`EvalConfig` field (``batch_size``, ``seed``, ``quick``,
            ``autoattack_version``, ``device``, ``dataset``, ``standalone``, adaptive budgets...).
    Returns the report dict (also in ``out_dir/report.json``).
    """
    if config is None:
        if eps is None:
            raise UserError("evaluate() needs eps (or a config)")
        try:
            config = EvalConfig.make(eps, suite=suite, **settings)
        except TypeError as e:
            raise UserError(str(e)) from None
    elif eps is not None or settings:
        raise UserError("evaluate(): give either config or eps/suite/settings, not both")
    cfg = config
    _check_inputs(model, x, y)
    device = torch.device(cfg.device) if cfg.device is not None else x.device
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = EvalLog(progress)
    cfg = cfg.with_(device=device, out_dir=out_dir, echo=log if progress else None)
    with fp32_math(device):
        report = _evaluate(model, x, y, cfg, transfer_model, log, meta, subset)
    return report


def _evaluate(model, x, y, cfg: EvalConfig, transfer_model, log: EvalLog, meta, subset) -> dict:
    t_start = time.time()
    device, eps, bs, out_dir = cfg.device, cfg.eps, cfg.batch_size, cfg.out_dir
    model = model.to(device)
    if transfer_model is not None:
        transfer_model = transfer_model.to(device)
    x = x.detach().to(device, torch.float32)
    y = y.detach().to(device, torch.long)
    n = len(x)
    torch.manual_seed(cfg.seed)
    step = default_step(eps, cfg.dataset) if cfg.pgd_step is None else cfg.pgd_step
    ra = is_ra_model(model)
    log(
        f"evaluating {type(model).__name__} ({'RA' if ra else 'no RA'}) on {n} examples, eps={eps:g}, "
        f"suite={cfg.suite}{' (quick)' if cfg.quick else ''}"
    )

    extra_flags: list[str] = []
    results: list[AttackResult] = []
    store: AdversarialStore | None = None

    def add(r: AttackResult) -> AttackResult:
        store.add(r)  # keeps the inputs that broke new examples, frees r.x_adv
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
        first = clean(model, x, y, batch_size=bs)
        clean_correct = first.robust
        store = AdversarialStore(x, y, clean_correct)
        add(first)
        common = dict(
            eps=eps, batch_size=bs, clean_correct=clean_correct, seed=cfg.seed, dataset=cfg.dataset, device=device
        )
        have = {}
        add(fgsm_attack(attacked, x, y, eps=eps, batch_size=bs, clean_correct=clean_correct))
        have["pgd-20"] = add(pgd_attack(attacked, x, y, steps=20, step_size=step, **common))
        if cfg.suite in ("standard", "full"):
            have["pgd-40"] = add(pgd_attack(attacked, x, y, steps=40, step_size=step, **common))
            add(cw_attack(attacked, x, y, steps=30, step_size=step, **common))
        add(
            aam.run_autoattack(
                attacked,
                x,
                y,
                eps=eps,
                version=cfg.autoattack_version,
                quick=cfg.quick,
                square_queries=cfg.square_queries,
                batch_size=bs,
                seed=cfg.seed,
                device=device,
                out_dir=out_dir,
                name="autoattack",
                clean_correct=clean_correct,
                echo=cfg.echo,
            )
        )

        if cfg.adaptive:
            alive = torch.stack([r.robust for r in results if r.in_worst_case]).all(0)
            log(f"adaptive suite on the {int(alive.sum())} examples that survived the attacks above")
            for r in run_adaptive(model, x, y, alive=alive, cfg=cfg, transfer_model=transfer_model):
                add(r)
            if cfg.standalone:
                for r in run_standalone(
                    model, x, y, clean_correct=clean_correct, cfg=cfg, transfer_model=transfer_model
                ):
                    add(r)
            if ra:
                for r in a7_ra_off(model, x, y, eps=eps, steps=20, step_size=step, batch_size=bs, seed=cfg.seed):
                    add(r)
        log("A8 diagnostics and sanity checks")
        diag = a8_diagnostics(
            model, x, y, store.x_adv, store.has, batch_size=bs, grad_model=attacked, eps=eps, seed=cfg.seed
        )
        sanity = run_sanity(
            attacked, x, y, cfg=cfg, clean_correct=clean_correct, have=have, step_size=step, ra_model=model
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
        "dataset": cfg.dataset,
        "eps": eps,
        "seed": cfg.seed,
        "suite": cfg.suite,
        "quick": cfg.quick,
        "model_spec": dict(spec) if isinstance(spec, dict) else None,
        "architecture": type(model).__name__,
        "is_ra_model": ra,
        "adaptive_applied": adaptive_coverage(ra, transfer_model is not None, cfg) if cfg.adaptive else None,
        "subset": subset if subset is not None else (f"subset of {n} examples" if n < 10000 else None),
        "meta": dict(meta or {}),
        "extra_flags": extra_flags,
        "software": software_versions(),
        "hardware": device_info(device),
        "total_seconds": round(time.time() - t_start, 2),
        "config": {
            **cfg.as_dict(),
            "device": str(device),
            "pgd_step": step,
            "tf32": False if device.type == "cuda" else None,
            "transfer_model": None
            if transfer_model is None
            else (getattr(transfer_model, "spec", None) or type(transfer_model).__name__),
        },
    }
    store.save(out_dir)  # before the report: a report.json always has its inputs beside it
    report = write_report(pe, attacks, context, out_dir)
    log(
        f"clean {report['clean_acc']:.2%}, AutoAttack {report['autoattack_acc']:.2%}, worst case "
        f"{report['worst_case_acc']:.2%}; {len(report['flags'])} flag(s); report in {out_dir} "
        f"({report['timings']['total']:.0f} s)"
    )
    for f in report["flags"]:
        log(f"FLAG {f}")
    return report
