"""``ancra verify REPORT_DIR``: re-check every broken example of a report from its saved inputs.

A report claims that some examples fall; ``adversarial.pt`` (:mod:`.adversarial`) holds one
adversarial input for each. :func:`verify_report` trusts nothing but the weights file and the
dataset:

1. the checkpoint's SHA-256 must equal the report's ``checkpoint_hash``;
2. the saved inputs must be exactly the examples the report counts as broken (clean-correct and
   not robust in the per-example worst case), with the dataset's labels;
3. for each: ``||x_adv - x||_inf <= eps + 1e-6`` against the test image reloaded from the dataset,
   ``x_adv`` in [0, 1], and the model, run one example at a time in fp32 (TF32 off on CUDA),
   does not predict the label;
4. the examples the report counts as misclassified without attack are misclassified.

It prints the counts per attack and returns whether everything matched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError, first_line
from .adversarial import ADVERSARIAL, load_adversarial
from .common import fp32_math, worst_case
from .report import PER_EXAMPLE, load_per_example

#: slack of the eps-ball check (float rounding of x + delta)
EPS_SLACK = 1e-6


@dataclass
class Verification:
    """Outcome of :func:`verify_report`: per attack, how many saved inputs passed each check."""

    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def table(self) -> str:
        cols = ("saved", "in_ball", "in_range", "fools_model")
        width = max([len("attack"), *map(len, self.rows)])
        lines = [f"  {'attack':<{width}}  " + "  ".join(f"{c:>11}" for c in cols)]
        for name, r in self.rows.items():
            lines.append(f"  {name:<{width}}  " + "  ".join(f"{r.get(c, 0):>11}" for c in cols))
        return "\n".join(lines)


def _said(result: Verification, echo) -> Verification:
    """Print the problems of a verification that stopped early (one ``MISMATCH:`` line each)."""
    if echo:
        for p in result.problems:
            echo(f"MISMATCH: {p}")
    return result


def _read_report(report_dir: Path) -> tuple[dict, dict, dict]:
    for name in ("report.json", PER_EXAMPLE, ADVERSARIAL):
        if not (report_dir / name).is_file():
            hint = (
                "the report predates saved adversarial inputs: re-run `ancra eval`"
                if name == ADVERSARIAL
                else "point ancra verify at the folder `ancra eval --out` wrote"
            )
            raise UserError(f"{report_dir} has no {name}: {hint}")
    try:
        report = json.loads((report_dir / "report.json").read_text())
        pe = load_per_example(report_dir)
        adv = load_adversarial(report_dir)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - an unreadable file is the user's problem, said in one line
        raise UserError(f"{report_dir}: unreadable report files ({type(e).__name__}: {first_line(e, 120)})") from None
    return report, pe, adv


def verify_report(
    report_dir,
    *,
    checkpoint=None,
    model: str | None = None,
    data_dir=None,
    device: str = "cpu",
    echo=print,
) -> Verification:
    """Re-check the report in ``report_dir`` (see the module docstring).

    Args:
        checkpoint: the model file: ancra weights, state dict or TorchScript (default: the path the
            report recorded).
        model: ``module:callable`` for a report of a ``--model`` evaluation (imported and run only
            when given here: a report never names code to run).
        data_dir: the dataset folder (default: where the checkpoint's training read it).
        echo: where the progress and the table go (``None``: silent).
    """
    try:
        return _verify(Path(report_dir), checkpoint, model, data_dir, device, echo)
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as e:
        # the report's files are untrusted data: inconsistent contents are a refusal, not a crash
        raise UserError(
            f"{report_dir}: the report's files are damaged or inconsistent ({type(e).__name__}: {first_line(e, 120)}); "
            "rerun `ancra eval` to rebuild them"
        ) from None


def _verify(report_dir: Path, checkpoint, model, data_dir, device, echo) -> Verification:
    from ..data import file_digest, load_dataset
    from ..sources import source_from_record

    report, pe, adv = _read_report(report_dir)
    meta = report.get("meta") or {}
    record = meta.get("model_source") or {"kind": "ancra", "path": meta.get("checkpoint")}
    result = Verification()
    want = report.get("checkpoint_hash")
    if record.get("kind") != "module":  # a file: its hash first, before anything reads it
        path = Path(checkpoint) if checkpoint else Path(record.get("path") or "")
        if not path.name:
            raise UserError(f"{report_dir}: the report names no checkpoint: pass --checkpoint PATH")
        if not path.is_file():
            raise UserError(
                f"checkpoint {path} not found: pass --checkpoint PATH (the report was made from {path.name})"
            )
        got = "sha256:" + file_digest(path, "sha256")
        if want != got:
            result.problems.append(f"checkpoint {path} has hash {got}, the report was made from {want}")
            return _said(result, echo)
        source = source_from_record(record, path=path, dataset=report["dataset"])
    else:
        source = source_from_record(record, module=model, dataset=report["dataset"])
        if source.digest != want:
            result.problems.append(f"the model of --model {model} has weights {source.digest}, the report's {want}")
            return _said(result, echo)
    net = source.model.float().to(device).eval()
    ckpt_dir = source.checkpoint.data_dir(data_dir) if source.checkpoint is not None else data_dir
    splits = load_dataset(report["dataset"], ckpt_dir, download=False)
    first, n = int(meta.get("first_example", 0)), int(report["n_examples"])
    if first + n > len(splits.test_x):
        raise UserError(f"{report_dir}: examples {first}-{first + n - 1} are beyond the {report['dataset']} test set")
    x = splits.test_x[first : first + n].float().div(255).to(device)
    y = splits.test_y[first : first + n].to(device)
    eps = float(report["eps_value"])

    clean = pe["tensors"]["clean"].to(device)
    robust = worst_case(pe["tensors"], pe["attacks"]).to(device)
    broken = clean & ~robust
    # the headline numbers of report.json are the per-example results' (a number edited in the
    # JSON, or a report beside per-example results it was not made from, is a mismatch)
    for key, mask in (("clean_acc", clean), ("worst_case_acc", robust)):
        claimed, actual = report.get(key), float(mask.float().mean()) if len(mask) else float("nan")
        if not isinstance(claimed, (int, float)) or abs(claimed - actual) > 1e-6:
            result.problems.append(f"report.json says {key} = {claimed}, its per-example results give {actual:.6f}")
    idx = adv["index"].to(device)
    if int(adv["n_examples"]) != n or len(clean) != n or (len(idx) and not 0 <= int(idx.min()) <= int(idx.max()) < n):
        result.problems.append(f"{ADVERSARIAL} covers {adv['n_examples']} examples, the report {n}")
        return _said(result, echo)
    saved = torch.zeros(n, dtype=torch.bool, device=device)
    saved[idx] = True
    missing, extra = int((broken & ~saved).sum()), int((saved & ~broken).sum())
    if missing or extra:
        result.problems.append(
            f"{missing} broken example(s) have no saved input and {extra} saved input(s) are not broken in the report"
        )
    if not torch.equal(adv["label"].to(device), y[idx]):
        result.problems.append(f"the saved labels differ from the {report['dataset']} test labels")

    x_adv = adv["x_adv"].to(device, torch.float32)
    in_ball = (x_adv - x[idx]).abs().flatten(1).amax(1) <= eps + EPS_SLACK
    in_range = (x_adv.flatten(1).amin(1) >= 0) & (x_adv.flatten(1).amax(1) <= 1)
    with torch.no_grad(), fp32_math(device):
        fools = torch.zeros(len(idx), dtype=torch.bool, device=device)
        for i in range(len(idx)):
            fools[i] = net(x_adv[i : i + 1]).argmax(1)[0] != y[idx[i]]
        wrong_clean = [int(i) for i in (~clean).nonzero().squeeze(1)]
        clean_ok = sum(int(net(x[i : i + 1]).argmax(1)[0] != y[i]) for i in wrong_clean)
    names = adv["attacks"]
    codes = adv["attack"].to(device)
    for k, name in enumerate(names):
        sel = codes == k
        result.rows[name] = {
            "saved": int(sel.sum()),
            "in_ball": int((in_ball & sel).sum()),
            "in_range": int((in_range & sel).sum()),
            "fools_model": int((fools & sel).sum()),
        }
    result.rows["(clean misclassified)"] = {
        "saved": len(wrong_clean),
        "in_ball": len(wrong_clean),
        "in_range": len(wrong_clean),
        "fools_model": clean_ok,
    }
    for check, mask in (("outside the eps-ball", in_ball), ("outside [0, 1]", in_range), ("not fooling", fools)):
        bad = int((~mask).sum())
        if bad:
            result.problems.append(f"{bad} saved input(s) {check} at batch size 1, fp32")
    if clean_ok != len(wrong_clean):
        result.problems.append(
            f"{len(wrong_clean) - clean_ok} example(s) the report counts as clean errors are classified correctly"
        )
    if echo:
        echo(
            f"{report_dir}: {int(clean.sum())} of {n} examples correct without attack, {int(broken.sum())} broken "
            f"in the worst case; {len(idx)} saved inputs, eps {eps:g}"
        )
        echo(result.table())
        for p in result.problems:
            echo(f"MISMATCH: {p}")
        if result.ok:
            echo("verified: every broken example is in the eps-ball, in [0, 1] and fools the model")
    return result
