"""Reports, docs/EVALUATION.md, "Reports": ``report.json`` (RobustBench-like keys), ``report.md``,
``acc_vs_eps.png``, ``acc_vs_steps.png`` and ``per_example.pt``.

Everything in a report is computed from per-example tensors (``clean``, ``robust/<attack>``,
``correct/<attack>``, curves, ``diag/*``) plus the attacks' metadata. ``per_example.pt`` stores
both, so shards of an evaluation (disjoint slices of the test set run by several processes) can be
merged exactly by :func:`merge_reports`: concatenate the tensors, rebuild the report.
"""

from __future__ import annotations

import json
import math
import platform
from fractions import Fraction
from pathlib import Path

import torch

from ..checkpoint import atomic_save, atomic_write_text, safe_load
from ..data.registry import find_dataset
from ..errors import UserError, first_line
from .adversarial import ADVERSARIAL, merge_adversarial
from .common import acc, worst_case
from .diagnostics import BLIND_KEY, blind_gradient, gate_flips, probe_keys
from .sanity import sanity_flags

PER_EXAMPLE = "per_example.pt"


def eps_fraction(eps: float) -> str:
    """``0.1 -> '1/10'``, ``8/255 -> '8/255'`` (RobustBench style)."""
    f = Fraction(eps).limit_denominator(255)
    return f"{f.numerator}/{f.denominator}" if f.denominator != 1 else str(f.numerator)


def software_versions() -> dict:
    import numpy

    from .. import __version__ as ancra_version
    from .autoattack import autoattack_version

    try:
        import matplotlib

        mpl = matplotlib.__version__
    except ImportError:  # pragma: no cover
        mpl = None
    return {
        "ancra": ancra_version,
        "torch": str(torch.__version__),
        "pyautoattack": autoattack_version(),
        "numpy": numpy.__version__,
        "matplotlib": mpl,
        "python": platform.python_version(),
    }


def _stats(t: torch.Tensor) -> dict | None:
    if t.numel() == 0:
        return None
    t = t.float()
    return {
        "mean": float(t.mean()),
        "median": float(t.median()),
        "min": float(t.min()),
        "max": float(t.max()),
        "q10": float(t.quantile(0.1)),
        "q90": float(t.quantile(0.9)),
    }


def _gate_summary(pe: dict[str, torch.Tensor], has_adv: torch.Tensor) -> dict:
    """Gate flips among the examples with a successful adversarial input, per RA block, and the
    agreement of the final and last aux head. The last gate's class is the final decision (the
    final head repeats the last aux head), so it flips by construction whenever an attack
    succeeds; the earlier gates say whether the attack moved the gating itself. The any-gate rate
    is kept for reports written before per-gate flips (only ``diag/gate_flip`` in their tensors)."""
    if "diag/agree_clean" not in pe:
        return {}
    on_adv = has_adv.any()
    flips = gate_flips(pe)
    d: dict = {}
    if flips:
        d["gate_flip_rate_among_successes_by_gate"] = {
            f"gate {i}": acc(f[has_adv]) if on_adv else None for i, f in flips.items()
        }
        anyf = torch.stack(list(flips.values())).any(0)
        d["gate_flip_note"] = f"gate {max(flips)} (the last) flips by construction when the final decision changes" + (
            "; the earlier gates' rates say whether attacks moved the gating" if len(flips) > 1 else ""
        )
    else:
        anyf = pe["diag/gate_flip"]
    d["gate_flip_rate_among_successes"] = acc(anyf[has_adv]) if on_adv else None
    d["final_vs_last_aux_agreement_clean"] = acc(pe["diag/agree_clean"])
    d["final_vs_last_aux_agreement_adv"] = acc(pe["diag/agree_adv"][has_adv]) if on_adv else None
    return d


def _blind_summary(pe: dict[str, torch.Tensor]) -> dict:
    """The blind-gradient probe on the clean-correct examples: the fraction whose gradient is blind
    (:func:`~.diagnostics.blind_gradient`); among those, the fraction with a float32 CE of exactly
    0 and the fraction whose prediction changed where the gradient predicted no change; per step
    size the median of actual over predicted CE change (about 1 or more: healthy)."""
    probe = blind_gradient(pe)
    if probe is None:
        return {}
    clean = pe["clean"].cpu()
    blind, changed = probe[0][clean], probe[1][clean]
    sat = pe.get("diag/ce_saturated", torch.zeros_like(clean)).cpu()[clean]
    ratios = {}
    for h in probe_keys(pe):
        pred, actual = (pe[f"{BLIND_KEY}/{h}/{k}"].cpu()[clean] for k in ("predicted", "actual"))
        r = (actual / pred)[pred > 0]
        ratios[h] = float(r.median()) if r.numel() else None
    return {
        "blind_gradient_fraction_of_clean_correct": acc(blind),
        "blind_gradient_saturated_ce": acc(sat[blind]) if blind.any() else None,
        "blind_gradient_changed_prediction_anyway": acc(changed[blind]) if blind.any() else None,
        "probe_median_actual_over_predicted_ce_change": ratios,
    }


def diagnostics(pe: dict[str, torch.Tensor]) -> dict:
    """A8 summary: final-logit margins, zero input gradients, the blind-gradient probe and, for RA
    models, per-gate flip rates among successful adversarial examples and the agreement of the
    final and last aux head (clean / adversarial)."""
    if "diag/margin_clean" not in pe:
        return {}
    has_adv = pe["diag/has_adv"]
    d = {
        "n_with_adversarial_example": int(has_adv.sum()),
        "zero_grad_fraction": acc(pe["diag/grad_zero"]),
        "zero_grad_entries_mean_fraction": float(pe["diag/grad_zero_frac"].mean()),
        "margin_clean": _stats(pe["diag/margin_clean"]),
        "margin_adv": _stats(pe["diag/margin_adv"][has_adv]),
    }
    return d | _blind_summary(pe) | _gate_summary(pe, has_adv)


def build_report(pe: dict[str, torch.Tensor], attacks: dict[str, dict], context: dict) -> dict:
    """The report dict from per-example tensors, attack metadata (run order) and run context."""
    n = len(pe["clean"])
    eps = float(context["eps"])
    dataset = context.get("dataset", "fmnist")
    in_wc = [k for k, m in attacks.items() if m.get("in_worst_case")]
    worst = worst_case(pe, attacks)
    std = [k for k in in_wc if attacks[k].get("group") == "standard"]
    table = {}
    for k, m in attacks.items():
        raw = None if m.get("cascade") else acc(pe[f"correct/{k}"])
        table[k] = {"acc": acc(pe[f"robust/{k}"]), "raw_acc": raw, **m}
    flags, sanity = sanity_flags(pe, attacks, eps=eps)
    flags = list(context.get("extra_flags", [])) + flags
    spec = context.get("model_spec")
    aa_info = attacks.get("autoattack", {}).get("info", {})
    report = {
        "dataset": dataset,
        "threat_model": "Linf",
        "eps": eps_fraction(eps),
        "eps_value": eps,
        "eps_255": round(eps * 255, 3) if getattr(find_dataset(dataset), "eps_in_255", False) else None,
        "architecture": (spec or {}).get("name") if spec else context.get("architecture"),
        "model_spec": spec,
        "is_ra_model": context.get("is_ra_model"),
        "adaptive_applied": context.get("adaptive_applied"),
        "n_examples": n,
        "subset": context.get("subset"),
        "suite": context.get("suite"),
        "quick": context.get("quick"),
        "seed": context.get("seed"),
        "checkpoint_hash": (context.get("meta") or {}).get("checkpoint_hash"),
        "clean_acc": acc(pe["clean"]),
        "autoattack_acc": table.get("autoattack", {}).get("acc"),
        "autoattack": {
            k: aa_info.get(k)
            for k in (
                "version",
                "attacks",
                "apgd_n_iter",
                "apgd_t_targets",
                "fab_t_targets",
                "square_queries",
                "quick",
                "component_acc",
                "perturbed",
                "state_file",
            )
        }
        if aa_info
        else None,
        "worst_case_acc": acc(worst),
        "worst_case_over": in_wc,
        "standard_worst_case_acc": acc(torch.stack([pe[f"robust/{k}"] for k in std]).all(0)) if std else None,
        "attacks": table,
        "ablation": {k: v["acc"] for k, v in table.items() if v.get("group") == "ablation"},
        "diagnostics": diagnostics(pe),
        "sanity": sanity,
        "flags": flags,
        "timings": {k: m.get("seconds") for k, m in attacks.items()} | {"total": context.get("total_seconds")},
        "software": context.get("software") or software_versions(),
        "hardware": context.get("hardware"),
        "config": context.get("config"),
        "meta": context.get("meta"),
        "files": {
            "per_example": PER_EXAMPLE,
            "adversarial": ADVERSARIAL,
            "markdown": "report.md",
            "plots": ["acc_vs_eps.png", "acc_vs_steps.png"],
        },
    }
    return report


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def to_markdown(r: dict) -> str:
    lines = [
        f"# Robustness report: {r.get('architecture') or 'model'} on {r['dataset']}",
        "",
        f"- threat model: L-inf, eps = {r['eps']}"
        + (f" ({r['eps_255']:g}/255)" if r.get("eps_255") else "")
        + f"; n_examples = {r['n_examples']}"
        + (f" ({r['subset']})" if r.get("subset") else ""),
        f"- suite: {r['suite']}"
        + (" (QUICK settings: not a headline number)" if r.get("quick") else "")
        + f"; seed {r['seed']}; checkpoint {r.get('checkpoint_hash') or '-'}",
        f"- **clean {_pct(r['clean_acc'])}%, AutoAttack {_pct(r['autoattack_acc'])}%, "
        f"worst case {_pct(r['worst_case_acc'])}%** (per-example minimum over {len(r['worst_case_over'])} attacks)",
        "",
        "| attack | group | kind | accuracy (%) | broken / attacked | time (s) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for k, v in r["attacks"].items():
        info = v.get("info", {})
        ba = f"{info['broken']} / {info['attacked']}" if v.get("cascade") else ""
        acc_s = _pct(v["acc"]) + (" (cum.)" if v.get("cascade") else "")
        lines.append(f"| {k} | {v['group']} | {v['kind']} | {acc_s} | {ba} | {v.get('seconds', 0):.1f} |")
    lines += [
        "",
        "Cascade attacks (cum.) only attack the examples that survived every earlier attack; their "
        "accuracy is the running per-example worst case.",
        "",
    ]
    if r.get("adaptive_applied"):
        lines += ["Adaptive attacks on this model:", ""]
        lines += [f"- {family}: {what}" for family, what in r["adaptive_applied"].items()] + [""]
    aa = r.get("autoattack")
    if aa:
        lines += [
            f"AutoAttack: version `{aa['version']}`, attacks {', '.join(aa['attacks'] or [])}"
            + (" (quick)" if aa.get("quick") else ""),
            "",
        ]
    ours = [f for f in r["flags"] if not f.startswith("aa_")]
    theirs = [f for f in r["flags"] if f.startswith("aa_")]
    lines += ["## Flags", ""]
    lines += [f"- {f}" for f in ours] or ["- none"]
    if theirs:
        lines += ["", "## AutoAttack's own checks", "", "Warnings in the reference AutoAttack's log, not ours.", ""]
        lines += [f"- {f}" for f in theirs]
    d = r.get("diagnostics") or {}
    if d:
        lines += ["", "## Diagnostics (A8)", ""]
        for k, v in d.items():
            if isinstance(v, dict):
                v = ", ".join(f"{a}={'-' if b is None else f'{b:.3g}'}" for a, b in v.items())
            elif isinstance(v, float):
                v = f"{v:.4g}"
            lines.append(f"- {k}: {v}")
    s = r.get("sanity") or {}
    if s.get("acc_vs_eps"):
        lines += [
            "",
            "## Accuracy vs eps",
            "",
            "| attack | " + " | ".join(next(iter(s["acc_vs_eps"].values())).keys()) + " |",
            "|---|" + "---:|" * len(next(iter(s["acc_vs_eps"].values()))),
        ]
        for a, dd in s["acc_vs_eps"].items():
            lines.append(f"| {a} | " + " | ".join(_pct(v) for v in dd.values()) + " |")
    if s.get("acc_vs_steps"):
        lines += [
            "",
            "## PGD accuracy vs steps",
            "",
            "| steps | " + " | ".join(str(k) for k in s["acc_vs_steps"]) + " |",
            "|---|" + "---:|" * len(s["acc_vs_steps"]),
            "| acc (%) | " + " | ".join(_pct(v) for v in s["acc_vs_steps"].values()) + " |",
        ]
    if r.get("ablation"):
        lines += ["", "## Ablation A7 (RA off; not in the worst case)", ""]
        lines += [f"- {k}: {_pct(v)}%" for k, v in r["ablation"].items()]
    sw = r.get("software") or {}
    lines += ["", "Software: " + ", ".join(f"{k} {v}" for k, v in sw.items())]
    hw = r.get("hardware")
    if hw:
        lines += ["Hardware: " + ", ".join(f"{k} {v}" for k, v in hw.items())]
    lines += [""]
    return "\n".join(lines)


def plot(report: dict, out_dir: Path) -> list[Path]:
    """``acc_vs_eps.png`` (the shared :func:`ancra.plots.plot_acc_vs_eps`) and ``acc_vs_steps.png``."""
    from ..data.registry import find_dataset
    from ..plots import plot_acc_vs_eps, pyplot

    plt = pyplot()
    s = report.get("sanity") or {}
    title_tail = f"{report.get('architecture') or 'model'}, {report['dataset']}, n={report['n_examples']}"
    labels = {"pgd": "PGD (CE, plain gradient of model(x))", "adaptive": "adaptive PGD (BPDA gate, all heads)"}
    curves = {
        labels.get(atk, atk): ([float(e) for e in d], list(d.values()))
        for atk, d in (s.get("acc_vs_eps") or {}).items()
    }
    worst = report.get("worst_case_acc")
    paths = [
        plot_acc_vs_eps(
            curves,
            out_dir / "acc_vs_eps.png",
            eps_in_255=getattr(find_dataset(report["dataset"]), "eps_in_255", False),
            eval_eps=[report["eps_value"]],
            worst_case=None if worst is None else (report["eps_value"], worst),
            subtitle=title_tail,
        )
    ]

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    st = s.get("acc_vs_steps") or {}
    if st:
        ks = [int(k) for k in st]
        ax.plot(ks, [100 * v for v in st.values()], marker="o", label="PGD (CE, 1 restart)")
    for r_, v in (s.get("acc_vs_restarts") or {}).items():
        ax.scatter([20], [100 * v], marker="s", color="purple", zorder=5, label=f"PGD-20 x {r_} restarts")
    if report.get("autoattack_acc") is not None:
        ax.axhline(100 * report["autoattack_acc"], color="orange", ls="--", label="AutoAttack")
    if report.get("worst_case_acc") is not None:
        ax.axhline(100 * report["worst_case_acc"], color="red", ls=":", label="worst case (all attacks)")
    ax.set_xscale("log")
    if st:
        from matplotlib.ticker import NullFormatter, NullLocator

        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
    if report.get("clean_acc") is not None:
        ax.axhline(100 * report["clean_acc"], color="green", ls="-.", lw=1, label="clean")
    ax.set_xlabel("PGD iterations (log scale)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"Accuracy vs attack iterations at eps = {report['eps']}\n{title_tail}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = out_dir / "acc_vs_steps.png"
    fig.savefig(p)
    plt.close(fig)
    paths.append(p)
    return paths


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    if isinstance(o, str):
        return str(o)  # plain str (torch.__version__ is a str subclass weights-only loads refuse)
    if isinstance(o, (int, float, bool)) or o is None:
        return o
    if isinstance(o, torch.Tensor) and o.numel() == 1:
        return o.item()
    return str(o)


def write_report(pe: dict[str, torch.Tensor], attacks: dict[str, dict], context: dict, out_dir) -> dict:
    """Build the report and write ``report.json``, ``report.md``, the plots and ``per_example.pt``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = _jsonable(build_report(pe, attacks, context))
    # atomic writes, report.json last: a report.json means the folder is complete (a finished
    # chunk), and a crash or a full disk never leaves a half file where a good one was
    atomic_save(
        {"attacks": _jsonable(attacks), "context": _jsonable(context)} | pack_tensors(pe),
        out_dir / PER_EXAMPLE,
    )
    atomic_write_text(out_dir / "report.md", to_markdown(report))
    plot(report, out_dir)
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def load_per_example(path) -> dict:
    """Read a ``per_example.pt`` (weights-only: tensors and builtins)."""
    path = Path(path)
    if path.is_dir():
        path = path / PER_EXAMPLE
    pe = safe_load(path, what="per-example results")
    bad = UserError(f"{path} is not an evaluation's per-example file: delete {path.parent} and rerun it")
    if not isinstance(pe, dict) or "context" not in pe:
        raise bad
    if pe.get("format") == PACKED_FORMAT:
        try:
            tensors = unpack_tensors(pe)
            pe = {k: v for k, v in pe.items() if k not in ("format", "groups", "order")} | {"tensors": tensors}
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError):
            raise bad from None
    if not isinstance(pe.get("tensors"), dict):
        raise bad
    return pe


#: ``per_example.pt`` with its tensors packed: one stacked tensor per dtype and shape (booleans as
#: bits) instead of one file entry each, which made a 100-example file 9 times its data
PACKED_FORMAT = "ancra-per-example/2"


def pack_tensors(pe: dict[str, torch.Tensor]) -> dict:
    """``{"format", "groups"}``: the per-example tensors stacked by (dtype, shape), in their order,
    booleans packed 8 to a byte; :func:`unpack_tensors` restores them exactly."""
    groups: dict[tuple, dict] = {}
    for key, value in pe.items():
        value = value.detach().cpu()
        group = groups.setdefault((value.dtype, tuple(value.shape)), {"keys": [], "values": []})
        group["keys"].append(key)
        group["values"].append(value)
    packed = []
    for (dtype, shape), group in groups.items():
        data = torch.stack(group["values"])
        if dtype == torch.bool:
            flat = data.reshape(len(data), -1).to(torch.uint8)
            flat = torch.nn.functional.pad(flat, (0, -flat.shape[1] % 8)).reshape(len(data), -1, 8)
            data = (flat << torch.arange(8, dtype=torch.uint8)).sum(-1, dtype=torch.uint8)
        packed.append({"keys": group["keys"], "shape": list(shape), "bits": dtype == torch.bool, "data": data})
    return {"format": PACKED_FORMAT, "groups": packed, "order": list(pe)}


def unpack_tensors(packed: dict) -> dict[str, torch.Tensor]:
    """The tensors of :func:`pack_tensors`, in their original order."""
    out = {}
    for group in packed["groups"]:
        data, shape = group["data"], tuple(group["shape"])
        if group["bits"]:
            bits = (data.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
            size = math.prod(shape)
            data = bits.reshape(len(data), -1)[:, :size].bool().reshape(len(data), *shape)
        if len(data) != len(group["keys"]) or tuple(data.shape[1:]) != shape:
            raise ValueError("a packed group does not match its keys")
        out.update(zip(group["keys"], data.unbind(0)))
    return {k: out[k] for k in packed["order"]}


def merge_reports(shard_dirs, out_dir, subset: str | None = None) -> dict:
    """Merge shard evaluations (disjoint example slices, same configuration) into one report.

    Per-example tensors are concatenated in the given order, timings are summed, flags coming
    from AutoAttack's logs are kept (prefixed by shard), and the report, plots and merged
    ``per_example.pt`` are written to ``out_dir``."""
    shards = [load_per_example(d) for d in shard_dirs]
    if not shards:
        raise ValueError("no shards to merge")
    try:
        pe, attacks, context = _merged(shards, shard_dirs, subset)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        stale = Path(out_dir) / ADVERSARIAL
        if merge_adversarial(shard_dirs, out_dir) is None and stale.is_file():
            stale.unlink()  # inputs of an earlier merge must not sit beside a report they do not match
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError, OSError, EOFError) as e:
        raise UserError(
            f"the evaluation folders {shard_dirs[0]} ... {shard_dirs[-1]} are damaged or do not fit together "
            f"({type(e).__name__}: {first_line(e, 120)}): delete the damaged folders and rerun"
        ) from None
    return write_report(pe, attacks, context, out_dir)


def _merged(shards: list[dict], shard_dirs, subset: str | None) -> tuple[dict, dict, dict]:
    """The per-example tensors, attacks and context of consecutive shards, checked to fit."""
    start = (shards[0]["context"].get("meta") or {}).get("first_example")
    for d, s in zip(shard_dirs, shards):
        n = {len(v) for v in s["tensors"].values()}
        if len(n) != 1:
            raise UserError(f"{d}: its per-example tensors have different lengths {sorted(n)}")
        first = (s["context"].get("meta") or {}).get("first_example")
        if start is not None and first is not None and first != start:
            raise UserError(f"{d} starts at test example {first}, not {start}: the folders are out of order")
        start = None if start is None else start + n.pop()
    keys = [set(s["tensors"]) for s in shards]
    common = set.intersection(*keys)
    pe = {k: torch.cat([s["tensors"][k] for s in shards]) for k in shards[0]["tensors"] if k in common}
    attacks = {}
    for name, m in shards[0]["attacks"].items():
        m = dict(m)
        m["seconds"] = sum(s["attacks"].get(name, {}).get("seconds", 0) or 0 for s in shards)
        info = dict(m.get("info", {}))
        if "broken" in info:
            infos = [s["attacks"].get(name, {}).get("info", {}) for s in shards]
            if isinstance(info["broken"], dict):  # a standalone family: counts per attack
                info["broken"] = {a: sum(i.get("broken", {}).get(a, 0) for i in infos) for a in info["broken"]}
            else:
                info["broken"] = sum(i.get("broken", 0) for i in infos)
            if "attacked" in info:
                info["attacked"] = sum(i.get("attacked", 0) for i in infos)
        if "component_acc" in info:  # cumulative fractions: average weighted by shard size
            sizes = [len(sh["tensors"]["clean"]) for sh in shards]
            comps = [sh["attacks"].get(name, {}).get("info", {}).get("component_acc", {}) for sh in shards]
            keys_ = [k for k in comps[0] if all(k in c for c in comps)]  # in run order: reproducible files
            info["component_acc"] = {k: sum(c[k] * w for c, w in zip(comps, sizes)) / sum(sizes) for k in keys_}
        if "perturbed" in info:
            merged: dict = {}
            for s in shards:
                for a, c in s["attacks"].get(name, {}).get("info", {}).get("perturbed", {}).items():
                    merged[a] = merged.get(a, 0) + c
            info["perturbed"] = merged
        flags = []
        for i, s in enumerate(shards):
            flags += [f"{f} [shard {i}]" for f in s["attacks"].get(name, {}).get("info", {}).get("flags", [])]
        if "flags" in info:
            info["flags"] = flags
        m["info"] = info
        attacks[name] = m
    context = dict(shards[0]["context"])
    # chunks written before reports recorded the adaptive coverage lack it: take the one recorded
    # by the others, when they all agree
    recorded = {json.dumps(s["context"]["adaptive_applied"]) for s in shards if "adaptive_applied" in s["context"]}
    context["adaptive_applied"] = json.loads(recorded.pop()) if len(recorded) == 1 else None
    context["total_seconds"] = sum(s["context"].get("total_seconds") or 0 for s in shards)
    context["subset"] = subset or f"merged from {len(shards)} shards"
    context["shards"] = [str(d) for d in shard_dirs]
    return pe, attacks, context
