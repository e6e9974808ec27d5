"""Adaptive suite, docs/EVALUATION.md, "Adaptive attacks": the families A1-A6 as a registry, run as a cascade.

The standard attacks differentiate ``model(x)``, whose argmax gate has no gradient: a model can look
robust to them while being easy to fool (the shattered-gradient pattern). Every attack here takes
its *gradient* from some view of the model (:class:`~ancra.evaluation.wrappers.RAView`: aux heads,
a BPDA or soft gate, fixed masks, the RA-removed twin) or from another model, while every
*decision* is about the deployed model ``model(x)``:

* our :func:`~.judged.judged_pgd` checks the deployed model after every step;
* the reference APGD / APGD-T run on views with ``deployed_values`` (the deployed model's values,
  the view's gradient), so their own bookkeeping (which examples to attack, success, which iterate
  to keep, which classes to target) is about the deployed model;
* every candidate is judged once more by :class:`Cascade`, which also asserts that each input it
  counts as broken lies in the eps-ball and in [0, 1] and fools the deployed model.

**Registry.** :data:`FAMILIES` maps ``a1`` ... ``a6`` to a :class:`Family`: a title, whether it
needs an RA model, and a function that expands it into :class:`Spec` attacks for a given model and
:class:`~.config.EvalConfig`. :func:`run_adaptive` runs the applicable families in registry order
as one cascade; :func:`run_family` runs one family alone (``--standalone`` and custom studies).

**Cascade and order.** Like AutoAttack, each attack only attacks the examples that survived every
earlier attack (standard suite, AutoAttack, the previous adaptive attacks), so attack ``k``'s
``robust`` is the cumulative per-example worst case and ``info['broken']`` counts what it broke
that nothing before it could. The order is cheap and effective first: A1 (the gate attacks, which
broke 212 of the 213 examples broken after AutoAttack in the study), then A2-A5, then transfer and
black-box (A6), so "transfer / Square beat every gradient attack on N examples" falls out of the
counts (a sanity check).

**Budgets** (:class:`~.config.EvalConfig`; docs/PERFORMANCE.md, "Cost of the evaluation", has the
measurements): no black-box attack is replayed on a view whose forward is the deployed model's
(AutoAttack's Square already queried the deployed model); A6 Square spends its extra queries on
plain models, where it is the only attack beyond AutoAttack.

A7 (RA off) is an ablation and never enters the worst case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import autoattack as aa
from .common import AttackResult, Timer, acc, batches, frozen, generator, is_ra_model, predict, with_grad_path
from .config import EvalConfig
from .judged import judged_pgd
from .wrappers import DeployedValues, RAView

#: slack of the cascade's own check that a counted input lies in the eps-ball (float rounding)
EPS_SLACK = 1e-6


def _ce_heads(heads: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    return torch.stack([F.cross_entropy(h, target, reduction="none") for h in heads]).sum(0)


# ----------------------------------------------------------------------------------------------
# attacks and the cascade
# ----------------------------------------------------------------------------------------------
@dataclass
class Spec:
    """One adaptive attack: ``fn(x, y) -> [candidate x_adv, ...]`` or ``(candidates, info)``;
    candidates are judged on the deployed model, an example is broken if any candidate fools it."""

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


def check_broken(name: str, model, x, y, x_adv, broken, eps: float, batch_size: int) -> None:
    """Assert what the cascade counts: every input counted as broken lies in the eps-ball (+1e-6)
    and in [0, 1], and fools the deployed model. A failure is a bug of an attack, never a result."""
    if not broken.any():
        return
    xa, xc, yb = x_adv[broken], x[broken], y[broken]
    dist = float((xa - xc).abs().flatten(1).max())
    if dist > eps + EPS_SLACK or float(xa.min()) < 0 or float(xa.max()) > 1:
        raise RuntimeError(f"{name} returned an input outside the eps-ball or [0, 1] (L-inf {dist:.3g}, eps {eps:g})")
    if (predict(model, xa, batch_size) == yb).any():
        raise RuntimeError(f"{name} counted an input as broken that the deployed model classifies correctly")


class Cascade:
    """Runs :class:`Spec` attacks on the examples still robust, keeps per-example results."""

    def __init__(self, model, x, y, alive, cfg: EvalConfig, group="adaptive") -> None:
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
                check_broken(spec.name, self.model, xs, ys, best, fooled, cfg.eps, cfg.batch_size)
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
# the registry
# ----------------------------------------------------------------------------------------------
@dataclass
class Context:
    """What a family's attacks are built from."""

    model: nn.Module
    cfg: EvalConfig
    transfer_model: nn.Module | None
    num_classes: int


@dataclass(frozen=True)
class Family:
    key: str
    title: str
    ra_only: bool
    specs: Callable[[Context], list[Spec]]

    def applies(self, model: nn.Module) -> bool:
        return is_ra_model(model) or not self.ra_only


#: the adaptive families in cascade order (see the module docstring)
FAMILIES: dict[str, Family] = {}


def family(key: str, title: str, *, ra_only: bool):
    def register(fn: Callable[[Context], list[Spec]]) -> Callable[[Context], list[Spec]]:
        FAMILIES[key] = Family(key, title, ra_only, fn)
        return fn

    return register


# ----------------------------------------------------------------------------------------------
# building blocks of the specs
# ----------------------------------------------------------------------------------------------
def _pgd(objective_for_batch, ctx: Context, x, y, seed_offset: int, targets=None):
    """Batched :func:`judged_pgd`; ``objective_for_batch(yb, tb)`` builds the objective of one batch
    (``tb``: the batch's rows of ``targets``, a per-example tensor, or None)."""
    cfg = ctx.cfg
    gen = generator(cfg.seed + seed_offset, x.device)
    out = []
    for s in batches(len(x), cfg.batch_size):
        found, _ = judged_pgd(
            objective_for_batch(y[s], None if targets is None else targets[s]),
            ctx.model,
            x[s],
            y[s],
            eps=cfg.eps,
            steps=cfg.pgd_steps,
            generator=gen,
        )
        out.append(found)
    return torch.cat(out)


def _apgd(module, x, y, cfg: EvalConfig, loss="ce"):
    return aa.apgd(
        module,
        x,
        y,
        eps=cfg.eps,
        loss=loss,
        n_iter=cfg.apgd_iter,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        device=x.device,
    )


# ----------------------------------------------------------------------------------------------
# A1-A6
# ----------------------------------------------------------------------------------------------
@family("a1", "gate attacks: aux heads and the sum of every head's CE, hard gate", ra_only=True)
def a1_specs(ctx: Context) -> list[Spec]:
    """Judged PGD on CE(f)+sum_h CE(aux_h); APGD-DLR on each aux head's own values (every example,
    two candidates); APGD-T and Square on the first aux head's own values; APGD-CE on each aux head
    with the deployed model's values; judged PGD on each aux head but the last. Cheap and
    effective first.

    Why some runs keep a head's own values (docs/PERFORMANCE.md, "Cost of the evaluation"): the
    deployed RA model's logits have large margins (its CE is often exactly 0 in float32, A8), so
    a loss computed on its values gives the head's gradient little to follow; on the study's
    checkpoints the own-value APGD-DLR and APGD-T broke examples the deployed-value runs did not.
    Their candidates are still judged on the deployed model."""
    model, cfg = ctx.model, ctx.cfg
    n_aux = model.ra_blocks
    hard = RAView(model, "hard")

    def sum_ce(yb, _):
        def obj(xa, i):
            final, aux = hard.heads(xa)
            return _ce_heads([final, *aux], yb[i]), final

        return obj

    specs = [
        Spec(
            "a1-pgd-sum",
            "whitebox",
            lambda x, y: [_pgd(sum_ce, ctx, x, y, 1)],
            {"objective": "CE(final)+sum_h CE(aux_h), hard gate", "steps": cfg.pgd_steps},
        )
    ]
    if cfg.dlr:  # on the head's own values: measured to find what the deployed-value search misses
        for h in range(n_aux):
            view = RAView(model, "hard", output=f"aux{h}")
            specs.append(
                Spec(
                    f"a1-apgd-dlr-aux{h}",
                    "surrogate",
                    lambda x, y, v=view: aa.apgd_all_examples(
                        v,
                        x,
                        y,
                        eps=cfg.eps,
                        loss="dlr",
                        n_iter=cfg.apgd_iter,
                        seed=cfg.seed,
                        batch_size=cfg.batch_size,
                        device=x.device,
                    ),
                    {"objective": f"APGD-DLR on aux{h}'s own values, every example", "n_iter": cfg.apgd_iter},
                )
            )
    if cfg.apgd_t_targets:  # the head's own values and ranking: measured stronger than deployed values
        aux0 = RAView(model, "hard", output="aux0")

        def apgd_t(x, y):
            return [
                aa.apgd_t(
                    aux0,
                    x,
                    y,
                    eps=cfg.eps,
                    n_iter=cfg.apgd_iter,
                    n_targets=min(cfg.apgd_t_targets, ctx.num_classes - 1),
                    seed=cfg.seed,
                    batch_size=cfg.batch_size,
                    device=x.device,
                )
            ]

        specs.append(
            Spec(
                "a1-apgd-t-aux0",
                "surrogate",
                apgd_t,
                {
                    "objective": "APGD-T (targeted DLR) on aux0's own values and ranking",
                    "n_iter": cfg.apgd_iter,
                    "targets": cfg.apgd_t_targets,
                },
            )
        )
    if cfg.square_queries_aux:  # black-box on the head, not a replay: its forward is not the deployed model's
        aux0_own = RAView(model, "hard", output="aux0")
        specs.append(
            Spec(
                "a1-square-aux0",
                "surrogate",
                lambda x, y: [
                    aa.square(
                        aux0_own,
                        x,
                        y,
                        eps=cfg.eps,
                        n_queries=cfg.square_queries_aux,
                        restarts=1,
                        seed=cfg.seed,
                        batch_size=cfg.batch_size,
                        device=x.device,
                    )
                ],
                {"objective": "Square (margin) on aux0's own values", "queries": cfg.square_queries_aux},
            )
        )
    for h in range(n_aux):
        view = RAView(model, "hard", output=f"aux{h}", deployed_values=True)
        specs.append(
            Spec(
                f"a1-apgd-ce-aux{h}",
                "surrogate",
                lambda x, y, v=view: [_apgd(v, x, y, cfg, "ce")],
                {"objective": f"APGD-CE, gradient of aux{h}, deployed values", "n_iter": cfg.apgd_iter},
            )
        )
    for h in range(n_aux - 1):  # the last aux head decides the final class (A8); its CE is in a1-pgd-sum

        def aux_ce(yb, _, h=h):
            return lambda xa, i: F.cross_entropy(hard.heads(xa)[1][h], yb[i], reduction="none")

        specs.append(
            Spec(
                f"a1-pgd-aux{h}",
                "surrogate",
                lambda x, y, f=aux_ce, h=h: [_pgd(f, ctx, x, y, 2 + h)],
                {"objective": f"CE(aux{h})", "steps": cfg.pgd_steps},
            )
        )
    return specs


@family("a2", "BPDA / straight-through gate: exact forward, soft-gate backward", ra_only=True)
def a2_specs(ctx: Context) -> list[Spec]:
    """For each temperature T: APGD-CE and judged PGD through ``softmax(aux/T) @ W`` in the
    backward pass. The forward is the deployed model's, so no black-box attack is replayed here."""
    model, cfg = ctx.model, ctx.cfg
    specs = []
    for T in cfg.temperatures:
        view = RAView(model, "bpda", temperature=T)

        def ce(yb, _, view=view):
            def f(xa, i):
                logits = view(xa)
                return F.cross_entropy(logits, yb[i], reduction="none"), logits

            return f

        specs.append(
            Spec(
                f"a2-bpda-T{T:g}",
                "whitebox",
                lambda x, y, view=view, ce=ce: [_apgd(view, x, y, cfg), _pgd(ce, ctx, x, y, 10)],
                {"temperature": T, "attacks": f"APGD-CE {cfg.apgd_iter} it., judged PGD {cfg.pgd_steps} steps"},
            )
        )
    return specs


@family("a3", "soft surrogate: softmax(aux/T) @ W forward and backward", ra_only=True)
def a3_specs(ctx: Context) -> list[Spec]:
    """For each T: APGD-CE on the soft surrogate (deployed values) and judged PGD on the CE of all
    its heads (the surrogate's own values)."""
    model, cfg = ctx.model, ctx.cfg
    specs = []
    for T in cfg.temperatures:
        soft = RAView(model, "soft", temperature=T)
        soft_deployed = RAView(model, "soft", temperature=T, deployed_values=True)

        def ce(yb, _, soft=soft):
            def f(xa, i):
                final, aux = soft.heads(xa)
                return _ce_heads([final, *aux], yb[i])

            return f

        specs.append(
            Spec(
                f"a3-soft-T{T:g}",
                "surrogate",
                lambda x, y, sd=soft_deployed, ce=ce: [_apgd(sd, x, y, cfg), _pgd(ce, ctx, x, y, 20)],
                {"temperature": T},
            )
        )
    return specs


def _targets(model, x, y, n_targets, batch_size) -> torch.Tensor:
    """(B, K) classes to enumerate per example (A4), most likely first under the product of experts
    of the deployed model's heads; K = ``n_targets`` or every class but the label."""
    with torch.no_grad():
        poe = torch.cat([RAView(model, "hard", output="poe")(x[s]) for s in batches(len(x), batch_size)])
    k = poe.shape[1]
    poe = poe.masked_fill(F.one_hot(y, k).bool(), float("-inf"))
    n = k - 1 if n_targets is None else min(n_targets, k - 1)
    return poe.topk(n, dim=1).indices


@family("a4", "branch enumeration: every mask fixed to a target class", ra_only=True)
def a4_specs(ctx: Context) -> list[Spec]:
    """For the k most likely classes t != y of each example (all examples at once, one target per
    example and round): every mask fixed to W[t] (the network is then differentiable), targeted
    judged PGD on the CE to t of every head and targeted APGD (deployed values) to t, so that t wins
    in every head; then the real gates pick t and the deployed model says t."""
    model, cfg = ctx.model, ctx.cfg

    def obj(yb, tb):
        def f(xa, i):
            final, aux = RAView(model, "fixed", fixed_class=tb[i]).heads(xa)
            return -_ce_heads([final, *aux], tb[i])

        return f

    def fn(x, y):
        with frozen(model):
            targets = _targets(model, x, y, cfg.a4_targets, cfg.batch_size)
        best = x.clone()
        fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for r in range(targets.shape[1]):
            sel = (~fooled).nonzero().squeeze(1)
            if sel.numel() == 0:
                break
            xs, ys, ts = x[sel], y[sel], targets[sel, r]
            cands = [_pgd(obj, ctx, xs, ys, 30 + r, targets=ts)]
            cands += aa.apgd_targeted_to(
                lambda s, ts=ts: RAView(model, "fixed", fixed_class=ts[s], output="poe", deployed_values=True),
                xs,
                ys,
                ts,
                eps=cfg.eps,
                n_iter=cfg.apgd_iter,
                seed=cfg.seed,
                batch_size=cfg.batch_size,
                device=x.device,
            )
            b, f = _pick(model, xs, ys, cands, cfg.batch_size)
            best[sel[f]] = b[f]
            fooled[sel[f]] = True
        return [best], {"targets_per_example": targets.shape[1]}

    return [Spec("a4-branch-enum", "surrogate", fn)]


@family("a5", "true-label masks: every mask fixed to W[y] (gradient source only)", ra_only=True)
def a5_specs(ctx: Context) -> list[Spec]:
    """Masks fixed to each example's own label (what ``forward_with_aux(x, labels=y)`` computes),
    all examples at once: untargeted judged PGD on the CE of every head and APGD-CE (deployed
    values) on their product of experts. The masked network leaks the label: it is only a gradient
    source, success is judged on the deployed model, and it is never reported as a classifier."""
    model, cfg = ctx.model, ctx.cfg

    def fn(x, y):
        def obj(yb, _):
            def f(xa, i):
                final, aux = RAView(model, "fixed", fixed_class=yb[i]).heads(xa)
                return _ce_heads([final, *aux], yb[i])

            return f

        apgd = aa.apgd_all_examples(
            lambda s: RAView(model, "fixed", fixed_class=y[s], output="poe", deployed_values=True),
            x,
            y,
            eps=cfg.eps,
            loss="ce",
            n_iter=cfg.apgd_iter,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            device=x.device,
        )
        return [_pgd(obj, ctx, x, y, 50), *apgd]

    return [Spec("a5-true-label-masks", "surrogate", fn, {"note": "gradient source only (leaks the label)"})]


@family("a6", "transfer and black-box: another model, the RA-removed twin, Square", ra_only=False)
def a6_specs(ctx: Context) -> list[Spec]:
    """APGD-CE (deployed values) and judged PGD from a same-architecture model trained without RA
    (if given) and from the RA-removed twin (RA models), then Square on the deployed model with
    the budget for this kind of model (``square_queries_ra`` / ``square_queries_plain``)."""
    model, cfg = ctx.model, ctx.cfg
    specs = []

    def from_source(source, offset):
        def fn(x, y):
            src, _ = with_grad_path(source, x)  # a source without autograd path gives zero gradients

            def obj(yb, _):
                return lambda xa, i: F.cross_entropy(src(xa), yb[i], reduction="none")

            with frozen(src):
                return [_apgd(DeployedValues(src, model), x, y, cfg), _pgd(obj, ctx, x, y, offset)]

        return fn

    if ctx.transfer_model is not None:
        tm = ctx.transfer_model
        specs.append(
            Spec(
                "a6-transfer-model",
                "transfer",
                from_source(tm, 70),
                {"source": type(tm).__name__, "source_spec": getattr(tm, "spec", None)},
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
    queries = cfg.square_queries_ra if is_ra_model(model) else cfg.square_queries_plain
    if queries:

        def sq(x, y):
            return [
                aa.square(
                    model,
                    x,
                    y,
                    eps=cfg.eps,
                    n_queries=queries,
                    restarts=cfg.square_restarts,
                    seed=cfg.seed,
                    batch_size=cfg.batch_size,
                    device=x.device,
                )
            ]

        specs.append(Spec("a6-square", "blackbox", sq, {"queries": queries, "restarts": cfg.square_restarts}))
    return specs


# ----------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------
def _context(model, x, cfg: EvalConfig, transfer_model) -> Context:
    return Context(model, cfg, transfer_model, aa.n_classes(model, x))


def applicable(model: nn.Module, families: list[str] | None = None) -> list[Family]:
    """The families of :data:`FAMILIES` (or of ``families``) that apply to ``model``, in order."""
    keys = list(FAMILIES) if families is None else families
    unknown = [k for k in keys if k not in FAMILIES]
    if unknown:
        raise ValueError(
            f"unknown adaptive famil{'ies' if len(unknown) > 1 else 'y'} {unknown}: choose from {list(FAMILIES)}"
        )
    return [FAMILIES[k] for k in keys if FAMILIES[k].applies(model)]


def run_adaptive(
    model, x, y, *, alive: torch.Tensor, cfg: EvalConfig, transfer_model=None, families: list[str] | None = None
) -> list[AttackResult]:
    """Cascade of the applicable families (A1-A6 for RA models, A6 for plain ones) from the
    examples in ``alive``. Returns the cascade's results in order; the last one's ``robust`` is the
    per-example worst case over everything before it and all of these attacks."""
    ctx = _context(model, x, cfg, transfer_model)
    with frozen(model, transfer_model):
        cas = Cascade(model, x, y, alive, cfg)
        for fam in applicable(model, families):
            for spec in fam.specs(ctx):
                cas.run(spec)
    return cas.results


def run_family(key: str, model, x, y, *, cfg: EvalConfig, transfer_model=None, alive=None) -> list[AttackResult]:
    """One family alone, as a cascade from ``alive`` (default: the clean-correct examples)."""
    (fam,) = applicable(model, [key]) or [None]
    if fam is None:
        raise ValueError(f"family {key} needs an RA model")
    with frozen(model):
        alive = predict(model, x, cfg.batch_size) == y if alive is None else alive
    return run_adaptive(model, x, y, alive=alive, cfg=cfg, transfer_model=transfer_model, families=[key])


def run_standalone(model, x, y, *, clean_correct, cfg: EvalConfig, transfer_model=None) -> list[AttackResult]:
    """``--standalone``: each applicable family run alone on every clean-correct example, one
    result per family (``standalone-a1`` ...): its accuracy does not depend on the cascade order,
    so the attribution of breaks can be read without it. They are valid attacks and count in the
    worst case."""
    out = []
    for fam in applicable(model):
        if cfg.echo:
            cfg.echo(f"standalone {fam.key}: {fam.title}")
        res = run_family(fam.key, model, x, y, cfg=cfg, transfer_model=transfer_model, alive=clean_correct)
        if not res:
            continue
        x_adv = x.clone()
        for r in res:  # the cascade's inputs: each example broken once, by the attack that broke it
            new = ~r.correct
            x_adv[new] = r.x_adv[new]
        last = res[-1]
        out.append(
            AttackResult(
                f"standalone-{fam.key}",
                last.robust.clone(),
                last.robust.clone(),
                sum(r.seconds for r in res),
                "standalone",
                res[0].kind if len({r.kind for r in res}) == 1 else "surrogate",
                in_worst_case=True,
                info={
                    "family": fam.title,
                    "attacks": [r.name for r in res],
                    "broken": {r.name: r.info["broken"] for r in res},
                },
                x_adv=x_adv,
            )
        )
    return out


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
