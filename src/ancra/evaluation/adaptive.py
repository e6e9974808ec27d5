"""Adaptive suite for RA models, docs/EVALUATION.md, "Adaptive attacks" (A1-A8).

The standard attacks differentiate ``model(x)``, whose argmax gate has no gradient: a model can
look robust to them while being easy to fool (the shattered-gradient pattern). Every attack here
takes its *gradient* from some view of the model (:class:`~ancra.evaluation.wrappers.RAView`:
aux heads, a BPDA or soft gate, fixed masks, the RA-removed twin) or from another model, but the
*success* of every adversarial input is always judged on the real, hard-gated model ``model(x)``.
That is what makes the numbers honest lower bounds on the error: each judged input lies in the
eps-ball and fools the real classifier.

Attacks run as a **cascade** (like AutoAttack): each one attacks only the examples that survived
all earlier attacks (standard suite, AutoAttack and the previous adaptive attacks), so the
``robust`` tensor of attack ``k`` is the cumulative per-example worst case after it, and its
``info['broken']`` counts the examples it broke that nothing before it could. Ordering: A1-A5
(gradient attacks), then A6 (transfer, then Square), so "transfer / Square beat every gradient
attack on N examples" falls out of the counts (a sanity check, docs/EVALUATION.md).

Our own PGD here is :func:`judged_pgd`: fixed-sign steps with a decaying step size (eps/4, eps/8,
eps/16 over 50/25/25 % of the steps) on any objective, checking the real model after every step and
keeping the first iterate that fools it. APGD and Square are the reference implementations
(:mod:`ancra.evaluation.autoattack`).

A7 (RA off) is an ablation and never enters the worst case; A8 diagnostics are per-example
tensors summarised by the report.

Why one module of ~600 lines: the eight families share the cascade, the judged PGD and the
configuration, and are read side by side. The next step (one evaluation config object and the
families as a registry instead of near-copies of one wrapper) restructures this module as a
whole, together with the rest of ``evaluation/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import autoattack as aa
from .common import AttackResult, Timer, acc, batches, frozen, generator, is_ra_model, predict, with_grad_path
from .wrappers import RAView


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------
@dataclass
class AdaptiveConfig:
    """Budgets of the adaptive suite. :meth:`make` gives the full (headline) or quick (tests,
    demos) settings; every value ends up in the report."""

    eps: float
    quick: bool = False
    pgd_steps: int = 100
    pgd_restarts: int = 1
    apgd_iter: int = 100
    dlr: bool = True  # also APGD-DLR in A1
    temperatures: tuple[float, ...] = (0.1, 0.5, 1.0)
    autoattack_on_bpda: bool = True  # A2: full AutoAttack on the BPDA wrapper (else APGD-CE)
    aa_version: str = "standard"
    n_targets: int | None = None  # A4: None = every class t != y
    square_queries: int = 20000
    square_restarts: int = 2
    batch_size: int = 256
    seed: int = 0
    device: str | torch.device = "cpu"
    out_dir: object = None
    echo: Callable | None = field(default=None, repr=False)

    @classmethod
    def make(cls, eps: float, quick: bool, **kw) -> "AdaptiveConfig":
        if quick:
            base = dict(
                pgd_steps=20,
                apgd_iter=20,
                dlr=False,
                autoattack_on_bpda=False,
                n_targets=3,
                square_queries=500,
                square_restarts=1,
            )
            base.update({k: v for k, v in kw.items() if v is not None})
            return cls(eps=eps, quick=True, **base)
        return cls(eps=eps, quick=False, **{k: v for k, v in kw.items() if v is not None})

    def as_dict(self) -> dict:
        return {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in self.__dict__.items()
            if k not in ("echo", "out_dir", "device")
        }


# ----------------------------------------------------------------------------------------------
# our PGD with the real model as judge
# ----------------------------------------------------------------------------------------------
def step_schedule(eps: float, steps: int) -> list[float]:
    """eps/4 for the first half of the steps, eps/8 for the next quarter, eps/16 for the rest."""
    a, b = steps // 2, steps // 4
    return [eps / 4] * a + [eps / 8] * b + [eps / 16] * (steps - a - b)


def judged_pgd(
    objective: Callable,
    judge: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    restarts: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sign-gradient ascent of ``objective`` in the L-inf ball, success judged on ``judge``.

    Args:
        objective: ``objective(x_adv, idx) -> value (B,)`` to *ascend*, or ``(value, logits)``
            when the forward already computes the real model's logits (exact-forward BPDA), which
            saves the judge's forward. ``idx`` indexes the rows of ``x``/``y`` in ``x_adv`` (for
            per-example targets); examples leave the batch as soon as they are fooled.
        judge: real model; an input is a success when ``judge(x).argmax(1) != y``.
        y: true labels.
    Returns ``(x_found, fooled)``: per example the first iterate that fooled the judge (else the
    clean input), and whether one did.
    """
    x = x.detach()
    n = len(x)
    fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    found = x.clone()
    sched = step_schedule(eps, steps)

    def check(idx, xa, logits=None):
        if logits is None:
            with torch.no_grad():
                logits = judge(xa)
        bad = logits.argmax(1) != y[idx]
        if bad.any():
            found[idx[bad]] = xa[bad].detach()
            fooled[idx[bad]] = True
        return ~bad

    with torch.enable_grad():
        for _ in range(restarts):
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xs = x[idx]
            noise = torch.rand(xs.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
            xa = (xs + eps * noise).clamp(0, 1)
            keep = check(idx, xa)
            idx, xs, xa = idx[keep], xs[keep], xa[keep]
            for k in range(steps):
                if idx.numel() == 0:
                    break
                xa = xa.detach().requires_grad_(True)
                res = objective(xa, idx)
                value, logits = res if isinstance(res, tuple) else (res, None)
                (grad,) = torch.autograd.grad(value.sum(), xa)
                keep_pre = check(idx, xa.detach(), logits.detach()) if logits is not None else None
                xa = xa.detach() + sched[k] * grad.sign()
                xa = torch.min(torch.max(xa, xs - eps), xs + eps).clamp_(0, 1)
                keep = check(idx, xa) if logits is None else keep_pre
                idx, xs, xa = idx[keep], xs[keep], xa[keep]
            if idx.numel() and steps > 0:
                check(idx, xa)  # the last step's point (checked lazily on the exact-forward path)
    return found, fooled


def _ce_heads(heads: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    return torch.stack([F.cross_entropy(h, target, reduction="none") for h in heads]).sum(0)


# ----------------------------------------------------------------------------------------------
# cascade
# ----------------------------------------------------------------------------------------------
@dataclass
class Spec:
    """One adaptive attack: ``fn(x, y) -> [candidate x_adv, ...]`` or ``(candidates, info)``;
    candidates are judged on the real model, an example is broken if any candidate fools it."""

    name: str
    kind: str
    fn: Callable
    info: dict = field(default_factory=dict)


def _pick(model, x, y, cands, batch_size):
    """Per example, the first candidate that fools ``model`` (else the last); and who is fooled."""
    out = cands[-1].clone()
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for c in cands:
        bad = (predict(model, c, batch_size) != y) & ~fooled
        out[bad] = c[bad]
        fooled |= bad
    return out, fooled


class Cascade:
    """Runs :class:`Spec` attacks on the examples still robust, keeps per-example results."""

    def __init__(self, model, x, y, alive, cfg: AdaptiveConfig, group="adaptive") -> None:
        self.model, self.x, self.y, self.cfg, self.group = model, x, y, cfg, group
        self.alive = alive.clone()
        self.results: list[AttackResult] = []

    def run(self, spec: Spec) -> AttackResult:
        cfg = self.cfg
        idx = self.alive.nonzero().squeeze(1)
        n_before = int(idx.numel())
        x_adv = self.x.clone()
        correct = torch.ones_like(self.alive)  # "not fooled by this attack" (unattacked rows: True)
        info = dict(spec.info)
        with Timer() as t:
            if n_before:
                xs, ys = self.x[idx], self.y[idx]
                out = spec.fn(xs, ys)
                cands, extra = out if isinstance(out, tuple) else (out, {})
                info.update(extra)
                best, fooled = _pick(self.model, xs, ys, cands, cfg.batch_size)
                x_adv[idx] = best
                correct[idx] = ~fooled
        robust = self.alive & correct
        broken = n_before - int(robust.sum())
        info.update({"attacked": n_before, "broken": broken})
        self.alive = robust.clone()
        res = AttackResult(
            spec.name,
            robust,
            correct,
            t.seconds,
            self.group,
            spec.kind,
            in_worst_case=True,
            cascade=True,
            info=info,
            x_adv=x_adv,
        )
        self.results.append(res)
        if cfg.echo:
            cfg.echo(f"{spec.name}: broke {broken}/{n_before}, cumulative acc {acc(robust):.2%} ({t.seconds:.1f} s)")
        return res


# ----------------------------------------------------------------------------------------------
# A1-A6 attack specifications
# ----------------------------------------------------------------------------------------------
def _pgd_candidate(objective_for_batch, model, x, y, cfg: AdaptiveConfig, seed_offset=0):
    """Batched :func:`judged_pgd`; ``objective_for_batch(yb)`` builds the objective of one batch."""
    gen = generator(cfg.seed + seed_offset, x.device)
    out = []
    for s in batches(len(x), cfg.batch_size):
        found, _ = judged_pgd(
            objective_for_batch(y[s]),
            model,
            x[s],
            y[s],
            eps=cfg.eps,
            steps=cfg.pgd_steps,
            restarts=cfg.pgd_restarts,
            generator=gen,
        )
        out.append(found)
    return torch.cat(out)


def _apgd(module, x, y, cfg, loss="ce"):
    return aa.apgd(
        module,
        x,
        y,
        eps=cfg.eps,
        loss=loss,
        n_iter=cfg.apgd_iter,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        device=cfg.device,
    )


def a1_specs(model, cfg: AdaptiveConfig) -> list[Spec]:
    """A1 gate attack: PGD on CE(a1)+...+CE(f) and on each aux head, APGD-CE(/DLR) on the product
    of experts of all heads and on each aux head, AutoAttack on the first aux head as a
    standalone classifier; everything judged (transferred) on the real model."""
    n_aux = model.ra_blocks
    hard = RAView(model, "hard")
    specs = []

    def sum_ce(yb):
        def obj(xa, i):
            final, aux = hard.heads(xa)
            return _ce_heads([final, *aux], yb[i]), final

        return obj

    specs.append(
        Spec(
            "a1-pgd-sum",
            "whitebox",
            lambda x, y: [_pgd_candidate(sum_ce, model, x, y, cfg, 1)],
            {"objective": "CE(final)+sum_h CE(aux_h), hard gate", "steps": cfg.pgd_steps},
        )
    )
    for h in range(n_aux):

        def aux_ce(yb, h=h):
            return lambda xa, i: F.cross_entropy(hard.heads(xa)[1][h], yb[i], reduction="none")

        specs.append(
            Spec(
                f"a1-pgd-aux{h}",
                "surrogate",
                lambda x, y, f=aux_ce, h=h: [_pgd_candidate(f, model, x, y, cfg, 2 + h)],
                {"objective": f"CE(aux{h})", "steps": cfg.pgd_steps},
            )
        )
    losses = ["ce", "dlr"] if cfg.dlr else ["ce"]
    poe = RAView(model, "hard", output="poe")
    for loss in losses:
        specs.append(
            Spec(
                f"a1-apgd-{loss}-poe",
                "surrogate",
                lambda x, y, loss=loss: [_apgd(poe, x, y, cfg, loss)],
                {"objective": f"APGD-{loss.upper()} on sum_h log_softmax(head_h)", "n_iter": cfg.apgd_iter},
            )
        )
        for h in range(n_aux):
            view = RAView(model, "hard", output=f"aux{h}")
            specs.append(
                Spec(
                    f"a1-apgd-{loss}-aux{h}",
                    "surrogate",
                    lambda x, y, v=view, loss=loss: [_apgd(v, x, y, cfg, loss)],
                    {"objective": f"APGD-{loss.upper()} on aux{h}", "n_iter": cfg.apgd_iter},
                )
            )

    def aa_aux0(x, y):
        r = aa.run_autoattack(
            RAView(model, "hard", output="aux0"),
            x,
            y,
            eps=cfg.eps,
            judge=model,
            version=cfg.aa_version,
            quick=cfg.quick,
            n_iter=cfg.apgd_iter if cfg.quick else None,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            device=cfg.device,
            out_dir=cfg.out_dir,
            name="a1-autoattack-aux0",
            echo=None,
            group="adaptive",
            kind="surrogate",
        )
        return [r.x_adv], {k: r.info[k] for k in ("version", "attacks", "apgd_n_iter", "flags", "component_acc")}

    specs.append(Spec("a1-autoattack-aux0", "surrogate", aa_aux0, {"classifier": "aux0 standalone, transferred"}))
    return specs


def a2_specs(model, cfg: AdaptiveConfig) -> list[Spec]:
    """A2 BPDA / straight-through: exact forward, backward through ``softmax(aux/T) @ W``, for each
    T. AutoAttack on the wrapper (full) or APGD-CE (quick), plus our judged PGD."""
    specs = []
    for T in cfg.temperatures:
        view = RAView(model, "bpda", temperature=T)

        def fn(x, y, view=view, T=T):
            cands, info = [], {"temperature": T}
            if cfg.autoattack_on_bpda:
                r = aa.run_autoattack(
                    view,
                    x,
                    y,
                    eps=cfg.eps,
                    judge=model,
                    version=cfg.aa_version,
                    batch_size=cfg.batch_size,
                    seed=cfg.seed,
                    device=cfg.device,
                    out_dir=cfg.out_dir,
                    name=f"a2-autoattack-bpda-T{T}",
                    group="adaptive",
                )
                cands.append(r.x_adv)
                info.update(
                    {
                        "autoattack": r.info["attacks"],
                        "flags": r.info["flags"],
                        "component_acc": r.info["component_acc"],
                    }
                )
            else:
                cands.append(_apgd(view, x, y, cfg))
                info["apgd"] = f"APGD-CE {cfg.apgd_iter} iterations"

            def obj(yb):
                def f(xa, i):
                    logits = view(xa)
                    return F.cross_entropy(logits, yb[i], reduction="none"), logits

                return f

            cands.append(_pgd_candidate(obj, model, x, y, cfg, 10))
            return cands, info

        specs.append(Spec(f"a2-bpda-T{T:g}", "whitebox", fn))
    return specs


def a3_specs(model, cfg: AdaptiveConfig) -> list[Spec]:
    """A3 soft surrogate: ``softmax(aux/T) @ W`` forward and backward; APGD-CE on its final head
    and judged PGD on the CE of all its heads, transferred to the hard model."""
    specs = []
    for T in cfg.temperatures:
        soft = RAView(model, "soft", temperature=T)

        def fn(x, y, soft=soft):
            def obj(yb):
                def f(xa, i):
                    final, aux = soft.heads(xa)
                    return _ce_heads([final, *aux], yb[i])

                return f

            return [_apgd(soft, x, y, cfg), _pgd_candidate(obj, model, x, y, cfg, 20)]

        specs.append(Spec(f"a3-soft-T{T:g}", "surrogate", fn, {"temperature": T}))
    return specs


def _targets(model, x, y, n_targets, batch_size=256):
    """(B, K) bool: which classes t != y to enumerate per example (A4). With ``n_targets`` only
    the most likely classes under the product of experts of the real model's heads."""
    with torch.no_grad():
        poe = torch.cat([RAView(model, "hard", output="poe")(x[s]) for s in batches(len(x), batch_size)])
    k = poe.shape[1]
    poe = poe.masked_fill(F.one_hot(y, k).bool(), float("-inf"))
    if n_targets is None or n_targets >= k - 1:
        return ~F.one_hot(y, k).bool()
    top = poe.topk(n_targets, dim=1).indices
    return torch.zeros_like(poe, dtype=torch.bool).scatter_(1, top, True)


def a4_specs(model, cfg: AdaptiveConfig, num_classes: int) -> list[Spec]:
    """A4 branch enumeration: for each class t != y, every mask fixed to W[t] (the network is then
    differentiable), targeted APGD (CE to t on the product of experts of every head) and targeted
    judged PGD (sum over heads of CE to t), so that t wins in every aux head and the final head;
    then the real gates pick t and the real model says t."""

    def fn(x, y):
        with frozen(model):
            want = _targets(model, x, y, cfg.n_targets, cfg.batch_size)
        best = x.clone()
        fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for t in range(num_classes):
            sel = (want[:, t] & ~fooled).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            xs, ys = x[sel], y[sel]
            fixed = RAView(model, "fixed", fixed_class=t)
            poe = RAView(model, "fixed", fixed_class=t, output="poe")

            def obj(yb, fixed=fixed, t=t):
                def f(xa, i):
                    final, aux = fixed.heads(xa)
                    return -_ce_heads([final, *aux], torch.full_like(yb[i], t))

                return f  # noqa: B023 - f closes over obj's arguments, bound per class

            cands = [_pgd_candidate(obj, model, xs, ys, cfg, 30 + t)]
            cands += aa.apgd_targeted_to(
                poe,
                xs,
                ys,
                t,
                eps=cfg.eps,
                n_iter=cfg.apgd_iter,
                seed=cfg.seed,
                batch_size=cfg.batch_size,
                device=cfg.device,
            )
            b, f = _pick(model, xs, ys, cands, cfg.batch_size)
            best[sel[f]] = b[f]
            fooled[sel[f]] = True
        return [best], {"targets_per_example": "all" if cfg.n_targets is None else cfg.n_targets}

    return [Spec("a4-branch-enum", "surrogate", fn)]


def a5_specs(model, cfg: AdaptiveConfig) -> list[Spec]:
    """A5 true-label masks: masks fixed to W[y] (the examples of each class attacked as a group),
    untargeted judged PGD on the CE of every head and APGD-CE on their product of experts. The
    masked network leaks the label: it is only a gradient source, success is judged on the real
    model, and it is never reported as a classifier."""

    def fn(x, y):
        best = x.clone()
        for c in y.unique().tolist():
            sel = (y == c).nonzero().squeeze(1)
            xs, ys = x[sel], y[sel]
            fixed = RAView(model, "fixed", fixed_class=c)

            def obj(yb, fixed=fixed):
                def f(xa, i):
                    final, aux = fixed.heads(xa)
                    return _ce_heads([final, *aux], yb[i])

                return f

            cands = [
                _pgd_candidate(obj, model, xs, ys, cfg, 50 + c),
                _apgd(RAView(model, "fixed", fixed_class=c, output="poe"), xs, ys, cfg),
            ]
            b, _ = _pick(model, xs, ys, cands, cfg.batch_size)
            best[sel] = b
        return [best]

    return [Spec("a5-true-label-masks", "surrogate", fn, {"note": "gradient source only (leaks the label)"})]


def a6_specs(model, cfg: AdaptiveConfig, transfer_model: nn.Module | None) -> list[Spec]:
    """A6 transfer and black-box: APGD-CE + judged PGD on a same-architecture model trained without
    RA (if given) and on the RA-removed twin (RA models), then Square with many queries. (The A3
    soft-surrogate transfer is A3 itself.)"""
    specs = []

    def from_source(source, offset):
        def fn(x, y):
            src, _ = with_grad_path(source, x)  # a source without autograd path gives zero gradients

            def obj(yb):
                return lambda xa, i: F.cross_entropy(src(xa), yb[i], reduction="none")

            with frozen(src):
                return [_apgd(src, x, y, cfg), _pgd_candidate(obj, model, x, y, cfg, offset)]

        return fn

    if transfer_model is not None:
        specs.append(
            Spec(
                "a6-transfer-model",
                "transfer",
                from_source(transfer_model, 70),
                {"source": type(transfer_model).__name__, "source_spec": getattr(transfer_model, "spec", None)},
            )
        )
    if is_ra_model(model):
        specs.append(
            Spec(
                "a6-transfer-ra-off-twin",
                "transfer",
                from_source(RAView(model, "off"), 71),
                {"source": "same weights, RA removed (last aux head on unmasked features)"},
            )
        )

    def sq(x, y):
        return [
            aa.square(
                model,
                x,
                y,
                eps=cfg.eps,
                n_queries=cfg.square_queries,
                restarts=cfg.square_restarts,
                seed=cfg.seed,
                batch_size=cfg.batch_size,
                device=cfg.device,
            )
        ]

    specs.append(Spec("a6-square", "blackbox", sq, {"queries": cfg.square_queries, "restarts": cfg.square_restarts}))
    return specs


# ----------------------------------------------------------------------------------------------
# public per-attack functions (each runs its own cascade from the clean-correct examples)
# ----------------------------------------------------------------------------------------------
def _standalone(model, x, y, specs, cfg, alive=None) -> list[AttackResult]:
    with frozen(model):
        alive = predict(model, x, cfg.batch_size) == y if alive is None else alive
        cas = Cascade(model, x, y, alive, cfg)
        for s in specs:
            cas.run(s)
    return cas.results


def _cfg(eps, quick, kw, x) -> AdaptiveConfig:
    return AdaptiveConfig.make(eps, quick, **{"device": x.device, **kw})


def a1_gate_attacks(model, x, y, *, eps, quick=False, **kw) -> list[AttackResult]:
    """A1 on its own (see :func:`a1_specs`); returns the cascade's results.

    Runs a cascade from the clean-correct examples; ``kw`` overrides :class:`AdaptiveConfig`
    fields (``batch_size``, ``pgd_steps``, ``apgd_iter``, ``square_queries``...)."""
    cfg = _cfg(eps, quick, kw, x)
    return _standalone(model, x, y, a1_specs(model, cfg), cfg)


def a2_bpda(model, x, y, *, eps, quick=False, **kw) -> list[AttackResult]:
    """A2 on its own (see :func:`a2_specs`).

    Runs a cascade from the clean-correct examples; ``kw`` overrides :class:`AdaptiveConfig`
    fields (``batch_size``, ``pgd_steps``, ``apgd_iter``, ``square_queries``...)."""
    cfg = _cfg(eps, quick, kw, x)
    return _standalone(model, x, y, a2_specs(model, cfg), cfg)


def a3_soft_surrogate(model, x, y, *, eps, quick=False, **kw) -> list[AttackResult]:
    """A3 on its own (see :func:`a3_specs`).

    Runs a cascade from the clean-correct examples; ``kw`` overrides :class:`AdaptiveConfig`
    fields (``batch_size``, ``pgd_steps``, ``apgd_iter``, ``square_queries``...)."""
    cfg = _cfg(eps, quick, kw, x)
    return _standalone(model, x, y, a3_specs(model, cfg), cfg)


def a4_branch_enumeration(model, x, y, *, eps, quick=False, **kw) -> list[AttackResult]:
    """A4 on its own (see :func:`a4_specs`).

    Runs a cascade from the clean-correct examples; ``kw`` overrides :class:`AdaptiveConfig`
    fields (``batch_size``, ``pgd_steps``, ``apgd_iter``, ``square_queries``...)."""
    cfg = _cfg(eps, quick, kw, x)
    return _standalone(model, x, y, a4_specs(model, cfg, aa.n_classes(model, x)), cfg)


def a5_true_label_masks(model, x, y, *, eps, quick=False, **kw) -> list[AttackResult]:
    """A5 on its own (see :func:`a5_specs`).

    Runs a cascade from the clean-correct examples; ``kw`` overrides :class:`AdaptiveConfig`
    fields (``batch_size``, ``pgd_steps``, ``apgd_iter``, ``square_queries``...)."""
    cfg = _cfg(eps, quick, kw, x)
    return _standalone(model, x, y, a5_specs(model, cfg), cfg)


def a6_transfer_and_blackbox(model, x, y, *, eps, transfer_model=None, quick=False, **kw) -> list[AttackResult]:
    """A6 on its own (see :func:`a6_specs`); plain models too.

    Runs a cascade from the clean-correct examples; ``kw`` overrides :class:`AdaptiveConfig`
    fields (``batch_size``, ``pgd_steps``, ``apgd_iter``, ``square_queries``...)."""
    cfg = _cfg(eps, quick, kw, x)
    return _standalone(model, x, y, a6_specs(model, cfg, transfer_model), cfg)


def a7_ra_off(model, x, y, *, eps, steps=20, step_size=None, batch_size=256, seed=0) -> list[AttackResult]:
    """A7 ablation: the same checkpoint with RA off (the RA-removed twin predicts with its last aux
    head). Clean and PGD accuracy of the twin itself, reported apart, never in the worst case."""
    from .standard import pgd_attack

    twin = RAView(model, "off")
    with frozen(model):
        with Timer() as t:
            c = predict(twin, x, batch_size) == y
        clean_res = AttackResult(
            "a7-ra-off-clean",
            c.clone(),
            c.clone(),
            t.seconds,
            "ablation",
            "clean",
            in_worst_case=False,
            info={"model": "RA removed, last aux head"},
        )
        p = pgd_attack(
            twin,
            x,
            y,
            eps=eps,
            steps=steps,
            step_size=step_size if step_size else eps / 4,
            seed=seed,
            batch_size=batch_size,
            clean_correct=c,
            name=f"a7-ra-off-pgd-{steps}",
            device=x.device,
        )
    p.group, p.in_worst_case, p.x_adv = "ablation", False, None
    return [clean_res, p]


# ----------------------------------------------------------------------------------------------
# the suite
# ----------------------------------------------------------------------------------------------
def run_adaptive(model, x, y, *, alive: torch.Tensor, cfg: AdaptiveConfig, transfer_model=None) -> list[AttackResult]:
    """Cascade A1-A6 (RA models) or A6 only (plain models) from the examples in ``alive``.

    Returns the cascade's results in order; the last one's ``robust`` is the per-example worst
    case over everything before it and all of these attacks."""
    specs: list[Spec] = []
    if is_ra_model(model):
        k = aa.n_classes(model, x)
        specs += a1_specs(model, cfg) + a2_specs(model, cfg) + a3_specs(model, cfg)
        specs += a4_specs(model, cfg, k) + a5_specs(model, cfg)
    specs += a6_specs(model, cfg, transfer_model)
    with frozen(model, transfer_model):
        cas = Cascade(model, x, y, alive, cfg)
        for s in specs:
            cas.run(s)
    return cas.results
