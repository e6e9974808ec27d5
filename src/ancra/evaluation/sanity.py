"""Sanity checks of docs/EVALUATION.md, "Sanity checks": run the extra attacks they need and turn them into flags.

| check | healthy | flag |
|---|---|---|
| accuracy vs eps up to a large eps (F-MNIST 0.5, CIFAR 64/255) | monotone, reaches ~0 | plateau above 0 |
| accuracy vs eps along the curve (:func:`eps_curve_flags`) | falls past the budget | flat stretch, shoulder, gap |
| unbounded attack (eps = 1) | 100% success | below 100% |
| FGSM >= PGD >= APGD (accuracy) | yes | single-step stronger than iterative |
| PGD accuracy <= clean accuracy | yes | above clean |
| more steps / restarts | changes < 0.5 pt | keeps dropping |
| Square vs white-box | Square weaker | Square stronger (per example) |
| transfer vs white-box | transfer weaker | transfer stronger |
| blind-gradient probe (A8, :func:`~.diagnostics.blind_gradient`) | CE rises as predicted | it does not |

:func:`run_sanity` produces per-example tensors (``curve/eps/<attack>/<eps>``,
``curve/steps/<k>``, ``curve/restarts/<r>``, ``unbounded/<attack>``), so the checks can be
recomputed on merged shards; :func:`sanity_flags` turns them (and the attacks' metadata) into
short flags ``"code: explanation"``. Differences smaller than :func:`~.common.tolerance` (0.5 pt
or one example) are noise. The curves use plain PGD on ``model(x)`` (what papers run); for RA
models in an adaptive suite an *adaptive* curve (judged PGD through the BPDA gate on the CE of
every head) is added, so a plateau of the PGD curve can be told apart from real robustness.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

from ..data.registry import find_dataset
from .common import acc, batches, generator, is_ra_model, predict, tolerance, worst_case
from .config import EvalConfig
from .diagnostics import blind_gradient, probe_keys
from .standard import pgd_attack

#: per-example tensor key prefixes
EPS_KEY, STEPS_KEY, RESTARTS_KEY, UNBOUNDED_KEY = "curve/eps", "curve/steps", "curve/restarts", "unbounded"


def large_eps(dataset: str) -> float:
    """The end of the accuracy-vs-eps sweep: 0.5 on F-MNIST, 64/255 on CIFAR-like data.

    From the registry (:attr:`~ancra.data.registry.DatasetInfo.large_eps`); 64/255 for a name it
    does not know."""
    info = find_dataset(dataset)
    return info.large_eps if info is not None else 64 / 255


def eps_grid(eps: float, dataset: str, quick: bool = False) -> list[float]:
    """Budgets of the sweep: fractions and multiples of ``eps`` up to :func:`large_eps`."""
    top = max(large_eps(dataset), eps)
    info = find_dataset(dataset)
    if info is not None and info.eps_in_255:  # a /255 grid; unknown names get the multiples of eps
        grid = [v / 255 for v in (2, 4, 8, 16, 32, 64)] + [eps]
    else:
        grid = [eps / 4, eps / 2, eps, 2 * eps, 3 * eps, top]
    if quick:
        grid = [eps / 2, eps, 2 * eps, top]
    return sorted({round(min(e, top), 6) for e in grid if e > 0})


def _adaptive_curve_attack(model, x, y, eps, steps, batch_size, seed):
    """Judged PGD through the BPDA gate (T=1) on CE(final)+sum CE(aux): the sweep's adaptive curve."""
    from .adaptive import judged_pgd
    from .common import frozen
    from .wrappers import RAView

    view = RAView(model, "bpda", temperature=1.0)
    gen = generator(seed, x.device)
    out = []
    with frozen(model):
        for s in batches(len(x), batch_size):
            yb = y[s]

            def obj(xa, i, yb=yb):
                final, aux = view.heads(xa)
                ce = sum(F.cross_entropy(h, yb[i], reduction="none") for h in [final, *aux])
                return ce, final

            found, _ = judged_pgd(obj, model, x[s], yb, eps=eps, steps=steps, generator=gen)
            out.append(found)
    return torch.cat(out)


def run_sanity(
    model,
    x,
    y,
    *,
    cfg: EvalConfig,
    clean_correct: torch.Tensor,
    have: dict | None = None,
    step_size: float | None = None,
    ra_model=None,
) -> dict[str, torch.Tensor]:
    """Run the attacks of the sanity checks; returns per-example tensors (see module docstring).

    Args:
        cfg: the evaluation's settings (eps, dataset, quick, batch size, seed, progress callback);
            the adaptive curve and unbounded attack run when ``cfg.adaptive`` and the model has RA.
        have: already computed results by name (``pgd-20``, ``pgd-40``): reused in the steps curve
            (same seed, same random start, same step size).
        step_size: the PGD step of the standard suite (steps and restarts curves).
        ra_model: the RA model behind ``model`` when ``model`` is a wrapper of it (adaptive curve).
    """
    eps, dataset, quick, batch_size, seed = cfg.eps, cfg.dataset, cfg.quick, cfg.batch_size, cfg.seed
    echo = cfg.echo
    have = have or {}
    ra_model = model if ra_model is None else ra_model
    adaptive = cfg.adaptive and is_ra_model(ra_model)
    out: dict[str, torch.Tensor] = {}
    steps_sweep = 10 if quick else 20

    def log(msg):
        if echo:
            echo(msg)

    # accuracy vs eps (plain PGD; adaptive curve for RA models)
    for e in eps_grid(eps, dataset, quick):
        r = pgd_attack(
            model,
            x,
            y,
            eps=e,
            steps=steps_sweep,
            step_size=e / 4,
            seed=seed,
            batch_size=batch_size,
            clean_correct=clean_correct,
            device=x.device,
        )
        out[f"{EPS_KEY}/pgd/{e:g}"] = r.robust
        msg = f"sanity eps={e:g}: PGD-{steps_sweep} acc {r.acc:.2%}"
        if adaptive:
            xa = _adaptive_curve_attack(ra_model, x, y, e, steps_sweep, batch_size, seed)
            rob = clean_correct & (predict(model, xa, batch_size) == y)
            out[f"{EPS_KEY}/adaptive/{e:g}"] = rob
            msg += f", adaptive acc {acc(rob):.2%}"
        log(msg)

    # unbounded attack: eps = 1 can draw any image; every example must fall
    steps_unb = 10 if quick else 20
    r = pgd_attack(
        model,
        x,
        y,
        eps=1.0,
        steps=steps_unb,
        step_size=0.25,
        seed=seed,
        batch_size=batch_size,
        clean_correct=clean_correct,
        device=x.device,
    )
    out[f"{UNBOUNDED_KEY}/pgd"] = r.correct
    msg = f"sanity unbounded eps=1: PGD success {1 - acc(r.correct):.2%}"
    if adaptive:
        xa = _adaptive_curve_attack(ra_model, x, y, 1.0, steps_unb, batch_size, seed)
        out[f"{UNBOUNDED_KEY}/adaptive"] = predict(model, xa, batch_size) == y
        msg += f", adaptive success {1 - acc(out[f'{UNBOUNDED_KEY}/adaptive']):.2%}"
    log(msg)

    # steps curve (same seed => same start; PGD-k is the k-th iterate of a longer run)
    step_list = [5, 10, 20, 40] if quick else [5, 10, 20, 40, 100]
    for k in step_list:
        name = f"pgd-{k}"
        if name in have:
            rob = have[name].robust
        else:
            rob = pgd_attack(
                model,
                x,
                y,
                eps=eps,
                steps=k,
                step_size=step_size,
                seed=seed,
                batch_size=batch_size,
                clean_correct=clean_correct,
                dataset=dataset,
                device=x.device,
            ).robust
        out[f"{STEPS_KEY}/{k}"] = rob
    # restarts: R more random starts (another seed) on top of the PGD-20 run above, so the curve
    # compares PGD-20 with the per-example worst case of R+1 restarts (restarts can only help)
    more = 1 if quick else 4
    r = pgd_attack(
        model,
        x,
        y,
        eps=eps,
        steps=20,
        step_size=step_size,
        restarts=more,
        seed=seed + 1,
        batch_size=batch_size,
        clean_correct=clean_correct,
        dataset=dataset,
        device=x.device,
    )
    rob = r.robust & out[f"{STEPS_KEY}/20"]
    out[f"{RESTARTS_KEY}/{more + 1}"] = rob
    log(
        "sanity steps: "
        + ", ".join(f"{k}: {acc(out[f'{STEPS_KEY}/{k}']):.2%}" for k in step_list)
        + f"; PGD-20 x{more + 1} restarts: {acc(rob):.2%}"
    )
    return out


def curves(pe: dict[str, torch.Tensor]) -> dict:
    """Accuracy curves from the per-example tensors: ``{'eps': {attack: {eps: acc}}, 'steps':
    {k: acc}, 'restarts': {r: acc}, 'unbounded_success': {attack: rate}}``."""
    res: dict = {"eps": {}, "steps": {}, "restarts": {}, "unbounded_success": {}}
    for key, t in pe.items():
        parts = key.split("/")
        if key.startswith(EPS_KEY + "/"):
            res["eps"].setdefault(parts[2], {})[float(parts[3])] = acc(t)
        elif key.startswith(STEPS_KEY + "/"):
            res["steps"][int(parts[2])] = acc(t)
        elif key.startswith(RESTARTS_KEY + "/"):
            res["restarts"][int(parts[2])] = acc(t)
        elif key.startswith(UNBOUNDED_KEY + "/"):
            res["unbounded_success"][parts[1]] = 1 - acc(t)
    for a in res["eps"]:
        res["eps"][a] = dict(sorted(res["eps"][a].items()))
    res["steps"] = dict(sorted(res["steps"].items()))
    return res


def near_zero(n: int) -> float:
    """Accuracy the eps checks treat as ~0: max(1%, one example)."""
    return max(0.01, 1.0 / max(n, 1)) + 1e-9


def flat_stretches(
    es: list[float], accs: list[float], *, eps: float, tol: float, floor: float
) -> list[tuple[int, int]]:
    """Flat stretches of one accuracy-vs-eps curve past the budget: pairs ``(i, j)`` of grid
    indices with ``e_j >= 2 e_i`` (eps at least doubles), ``e_j > eps`` (the stretch ends past the
    evaluation budget), ``a_j >= a_i - tol`` (accuracy falls by no more than noise) and
    ``a_j > floor`` (not ~0); for each ``i`` only the largest such ``j``.

    Below the budget a flat curve is what robustness looks like (adversarial training aims at it);
    past it, doubling eps must cost accuracy: no defence is robust to twice the budget it was built
    for as to the budget itself."""
    out = []
    for i in range(len(es)):
        js = [
            j
            for j in range(i + 1, len(es))
            if es[j] >= 2 * es[i] - 1e-12 and es[j] > eps + 1e-12 and accs[j] >= accs[i] - tol and accs[j] > floor
        ]
        if js:
            out.append((i, js[-1]))
    return out


def eps_curve_flags(c_eps: dict[str, dict[float, float]], *, eps: float, n: int) -> list[str]:
    """Shape flags of the accuracy-vs-eps curves, along the whole curve (``tol`` =
    :func:`~.common.tolerance`, ~0 = :func:`near_zero`); one flag of each code per curve:

    * ``eps_shoulder``: a flat stretch (:func:`flat_stretches`) followed, at the next grid point,
      by a collapse to less than half of the stretch's last accuracy. The curve holds past the
      budget and then falls at once: the attack wins only where eps is large enough for its random
      start and fixed steps to change the class, not by following the gradient.
    * ``eps_curve_plateau``: a flat stretch not followed by such a collapse (the longest one is
      reported): doubling eps past the budget does not lower accuracy.
    * ``eps_curve_gap``: at some eps, a curve's accuracy is above ~0 and more than twice another
      curve's of the same sweep plus ``tol`` (a curve that stays far above the shape a stronger
      attack shows: for RA models the PGD curve against the adaptive one).
    """
    tol, floor = tolerance(n), near_zero(n)
    flags = []
    for atk, d in c_eps.items():
        es, accs = list(d), list(d.values())
        stretches = flat_stretches(es, accs, eps=eps, tol=tol, floor=floor)
        shoulder = [(i, j) for i, j in stretches if j + 1 < len(es) and accs[j + 1] < accs[j] / 2]
        if shoulder:
            i, j = shoulder[0]
            flags.append(
                f"eps_shoulder: {atk} accuracy holds at {accs[i]:.1%} -> {accs[j]:.1%} from eps={es[i]:g} to "
                f"eps={es[j]:g} (past the budget {eps:g}), then falls to {accs[j + 1]:.1%} at eps={es[j + 1]:g} "
                f"(flat, then abrupt: the attack wins by the size of eps, not by following the gradient)"
            )
        elif stretches:
            i, j = max(stretches, key=lambda ij: es[ij[1]] / es[ij[0]])
            flags.append(
                f"eps_curve_plateau: {atk} accuracy stays at {accs[i]:.1%} -> {accs[j]:.1%} from eps={es[i]:g} to "
                f"eps={es[j]:g} (eps x{es[j] / es[i]:.3g}, past the budget {eps:g}: more eps does not lower "
                f"accuracy; gradient masking or a too weak attack)"
            )
        for other, d2 in c_eps.items():
            gap = [e for e, v in d.items() if other != atk and e in d2 and v > floor and v > 2 * d2[e] + tol]
            if gap:
                e = gap[0]
                flags.append(
                    f"eps_curve_gap: at eps={e:g} the {atk} curve is at {d[e]:.1%}, more than twice the {other} "
                    f"curve's {d2[e]:.1%} (the {atk} attack holds where a stronger attack of the sweep has dropped)"
                )
    return flags


_AA_CHECK = re.compile(r"^AutoAttack check on (\S+): (.*?)(?: \(warned (\d+) times\))?(?: \[shard \d+\])?$")


def autoattack_own_checks(attacks: dict[str, dict]) -> list[str]:
    """AutoAttack's own checks (the ``aa_*`` warnings of its log, collected per run, chunk and
    shard into the attacks' ``info['flags']``), one line per code: how many warnings, from which
    runs, and the first message. Kept apart from our flags (docs/EVALUATION.md, "Sanity checks")."""
    first: dict[str, str] = {}
    runs: dict[str, dict[str, int]] = {}
    for m in attacks.values():
        for line in m.get("info", {}).get("flags", []):
            code, _, rest = line.partition(": ")
            hit = _AA_CHECK.match(rest)
            run, msg, times = (hit.group(1), hit.group(2), int(hit.group(3) or 1)) if hit else ("?", rest, 1)
            first.setdefault(code, msg)
            per_run = runs.setdefault(code, {})
            per_run[run] = per_run.get(run, 0) + times
    return [
        f"{code}: AutoAttack's own check, {sum(runs[code].values())} warning(s) ("
        + ", ".join(f"{run}: {k}" for run, k in runs[code].items())
        + f"; every chunk and shard warns on its own); first: {msg}"
        for code, msg in first.items()
    ]


def blind_gradient_flag(pe: dict[str, torch.Tensor], summary: dict) -> list[str]:
    """``blind_gradient`` when more than :func:`~.common.tolerance` of the examples are correct
    clean and blind to the probe of :func:`~.diagnostics.blind_gradient`; the fraction goes to
    ``summary['blind_gradient_fraction']``. The line also counts the blind examples whose float32
    CE is exactly 0 (``diag/ce_saturated``) and those that changed class along a step the gradient
    predicted nothing for."""
    probe = blind_gradient(pe)
    if probe is None:
        return []
    n = len(pe["clean"])
    blind = probe[0] & pe["clean"].cpu()
    summary["blind_gradient_fraction"] = acc(blind)
    if acc(blind) <= tolerance(n):
        return []
    sat = pe.get("diag/ce_saturated", torch.zeros(n, dtype=torch.bool)).cpu()
    return [
        f"blind_gradient: {int(blind.sum())} of the {n} examples ({acc(blind):.1%}; clean-correct ones only): along "
        f"h*sign(grad CE) for h in {{{', '.join(probe_keys(pe))}}} the deployed model's CE never rose by half of "
        f"the first-order prediction nor changed class (all-zero gradient: random sign steps); "
        f"{int((blind & sat).sum())} of them have a float32 CE of exactly 0 (saturated softmax), "
        f"{int((blind & probe[1]).sum())} changed class where the gradient predicted no change "
        f"(CE-gradient attacks do not see the decision there)"
    ]


def flag_code(line: str) -> str:
    """The code of a flag line. Reports written before AutoAttack's Square count got its own code
    called it ``square_beats_whitebox`` too; their line is recognised by its text."""
    code = line.split(":")[0]
    if code == "square_beats_whitebox" and "AutoAttack's Square broke" in line:
        return "autoattack_square_beats_its_whitebox"
    return code


def sanity_flags(pe: dict[str, torch.Tensor], attacks: dict[str, dict], *, eps: float) -> tuple[list[str], dict]:
    """Flags (``"code: explanation"``) and a summary of the section-3 checks.

    ``pe`` holds the per-example tensors (``clean``, ``robust/<attack>``, ``correct/<attack>``,
    curves, ``diag/*``), ``attacks`` the attacks' metadata (group, kind, info) in run order."""
    n = len(pe["clean"])
    tol = tolerance(n)
    flags: list[str] = []
    summary: dict = {"tolerance": tol}
    clean_acc = acc(pe["clean"])
    c = curves(pe)
    summary.update(
        {
            "acc_vs_eps": {a: {f"{e:g}": v for e, v in d.items()} for a, d in c["eps"].items()},
            "acc_vs_steps": c["steps"],
            "acc_vs_restarts": c["restarts"],
            "unbounded_success": c["unbounded_success"],
        }
    )

    def a(name):
        key = f"robust/{name}"
        return acc(pe[key]) if key in pe else None

    # 1. accuracy vs eps: monotone and reaching ~0 at the large eps
    for atk, d in c["eps"].items():
        es, accs = list(d), list(d.values())
        for i in range(1, len(accs)):
            if accs[i] > accs[i - 1] + tol:
                flags.append(
                    f"eps_not_monotone: {atk} accuracy rises from {accs[i - 1]:.1%} at eps={es[i - 1]:g} to "
                    f"{accs[i]:.1%} at eps={es[i]:g} (a correct attack only gets stronger with eps)"
                )
                break
        if accs and accs[-1] > near_zero(n):
            other = [f"; the {b} curve reaches {list(dd.values())[-1]:.1%}" for b, dd in c["eps"].items() if b != atk]
            flags.append(
                f"eps_plateau: {atk} accuracy at eps={es[-1]:g} is {accs[-1]:.1%}, not ~0 "
                f"(plateau above 0: gradient masking or a too weak attack{''.join(other)})"
            )
    # 1b. along the whole curve: flat stretches, shoulders, gaps between curves
    flags += eps_curve_flags(c["eps"], eps=eps, n=n)
    # 2. unbounded attack
    for atk, rate in c["unbounded_success"].items():
        if rate < 1.0:
            other = [f"; {b} reaches {r:.1%}" for b, r in c["unbounded_success"].items() if b != atk]
            flags.append(
                f"unbounded_below_100: {atk} at eps=1 succeeds on only {rate:.1%} of the examples "
                f"(an unbounded attack must reach 100%: the gradient does not lead anywhere{''.join(other)})"
            )
    # 3. FGSM >= PGD >= APGD
    fg, pg = a("fgsm"), a("pgd-40") if a("pgd-40") is not None else a("pgd-20")
    if fg is not None and pg is not None and fg < pg - tol:
        flags.append(
            f"fgsm_stronger_than_pgd: FGSM accuracy {fg:.1%} < PGD {pg:.1%} "
            f"(single-step stronger than iterative: gradient masking)"
        )
    apgd_acc = None
    for name, m in attacks.items():
        if name == "autoattack":
            comp = m.get("info", {}).get("component_acc", {})
            apgd_acc = comp.get("apgd-ce")
    summary["apgd_ce_acc"] = apgd_acc
    if pg is not None and apgd_acc is not None and pg < apgd_acc - tol:
        flags.append(
            f"pgd_stronger_than_apgd: PGD accuracy {pg:.1%} < APGD-CE {apgd_acc:.1%} "
            f"(APGD should be at least as strong)"
        )
    # 4. PGD <= clean (raw accuracy on the adversarial inputs, without the AND with clean)
    for name in ("pgd-20", "pgd-40"):
        key = f"correct/{name}"
        if key in pe and acc(pe[key]) > clean_acc + tol:
            flags.append(
                f"pgd_above_clean: {name} accuracy on its adversarial inputs {acc(pe[key]):.1%} > clean "
                f"{clean_acc:.1%} (the attack repairs misclassified inputs: broken gradients)"
            )
    # 5. more steps / restarts
    steps = c["steps"]
    if len(steps) >= 2:
        ks = list(steps)
        ref = 40 if 40 in steps else ks[-2]
        if steps[ref] - steps[ks[-1]] > tol and ks[-1] != ref:
            flags.append(
                f"pgd_keeps_dropping: PGD accuracy {steps[ref]:.1%} at {ref} steps -> {steps[ks[-1]]:.1%} "
                f"at {ks[-1]} steps (not converged)"
            )
    if c["restarts"] and 20 in steps:
        r, v = next(iter(c["restarts"].items()))
        if steps[20] - v > tol:
            flags.append(
                f"restarts_keep_dropping: PGD-20 accuracy {steps[20]:.1%} from one random start -> {v:.1%} as the "
                f"per-example worst case over {r} random starts (the first + {r - 1} more)"
            )
    # 6/7. Square and transfer vs white-box, per example (cascade counts: broken after all gradient attacks)
    limit = max(0, math.floor(0.005 * n))
    for name, m in attacks.items():
        info = m.get("info", {})
        if m.get("cascade") and m.get("kind") in ("blackbox", "transfer") and info.get("broken", 0) > limit:
            what = "square_beats_whitebox" if m["kind"] == "blackbox" else "transfer_beats_whitebox"
            flags.append(
                f"{what}: {name} broke {info['broken']} of the {info.get('attacked')} examples that "
                f"survived every gradient-based attack (gradients of the model are not informative)"
            )
        if name == "autoattack":  # AutoAttack's Square inside AutoAttack: counted from its log, not ours
            sq = info.get("perturbed", {}).get("square", 0)
            if sq > limit:
                flags.append(
                    f"autoattack_square_beats_its_whitebox: AutoAttack's Square broke {sq} examples that survived "
                    f"its APGD-CE/APGD-T/FAB-T (counted from AutoAttack's log; Square after every attack of the "
                    f"suite is square_beats_whitebox)"
                )
    # AutoAttack's own checks, one line per code (the report shows them in their own section)
    flags += autoattack_own_checks(attacks)
    # zero gradients (A8)
    if "diag/grad_zero" in pe:
        z = acc(pe["diag/grad_zero"])
        summary["zero_grad_fraction"] = z
        if z > 0:
            flags.append(
                f"zero_gradients: {z:.1%} of the examples have an all-zero input gradient of the CE "
                f"(shattered gradients; gradient attacks cannot work there)"
            )
    # blind gradients (A8 probe): the deployed CE does not follow the input gradient
    flags += blind_gradient_flag(pe, summary)
    # AutoAttack vs adaptive worst case
    aa_acc = a("autoattack")
    if aa_acc is not None and any(attacks[k].get("group") == "adaptive" for k in attacks):
        worst = worst_case(pe, attacks)
        if acc(worst) < aa_acc - tol:
            flags.append(
                f"autoattack_overestimates: adaptive attacks lower the accuracy from AutoAttack's "
                f"{aa_acc:.1%} to {acc(worst):.1%} (AutoAttack alone is not a valid evaluation of this model)"
            )
    return flags, summary
