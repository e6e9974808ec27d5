"""``ancra eval --format robustbench``: RobustBench's model-info JSON beside our report.

RobustBench lists each model in ``model_info/<dataset>/Linf/<name>.json`` with the fields of
:data:`FIELDS` (accuracies as percent strings such as ``"51.06"``, eps as ``"8/255"``). The run
fills what it knows (dataset, eps, clean and AutoAttack accuracy, architecture); the rest comes
from ``--info KEY=VALUE``. When our adaptive worst case is below AutoAttack, ``unreliable`` is set
and a footnote says by how much: the worst case and the flags stay in our report.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError

#: every field of a RobustBench model-info file and its JSON type (``footnote`` is optional)
FIELDS: dict[str, type] = {
    "link": str,
    "name": str,
    "authors": str,
    "additional_data": bool,
    "number_forward_passes": int,
    "dataset": str,
    "venue": str,
    "architecture": str,
    "eps": str,
    "clean_acc": str,
    "reported": str,
    "autoattack_acc": str,
    "unreliable": bool,
    "footnote": str,
}
#: fields a user may set with --info (the run measures the others)
USER_FIELDS = ("link", "name", "authors", "additional_data", "number_forward_passes", "venue", "architecture",
               "reported", "footnote")  # fmt: skip
FILE = "robustbench.json"


def parse_info(items: list[str]) -> dict:
    """``["name=My model", "additional_data=false"]`` -> typed values; one-line errors."""
    info: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in USER_FIELDS:
            raise UserError(f"--info expects KEY=VALUE with KEY one of {', '.join(USER_FIELDS)}, got {item!r}")
        kind = FIELDS[key]
        if kind is bool:
            if value.strip().lower() not in ("true", "false"):
                raise UserError(f"--info {key} must be true or false, got {value!r}")
            info[key] = value.strip().lower() == "true"
        elif kind is int:
            try:
                info[key] = int(value)
            except ValueError:
                raise UserError(f"--info {key} must be an integer, got {value!r}") from None
            if info[key] < 1:
                raise UserError(f"--info {key} must be >= 1, got {value!r}")
        elif key == "reported":
            try:
                info[key] = f"{float(value):.2f}"
            except ValueError:
                raise UserError(f"--info reported must be a percentage such as 51.06, got {value!r}") from None
        else:
            info[key] = value
    return info


def _percent(acc: float) -> str:
    return f"{100 * acc:.2f}"


def model_info(report: dict, info: dict | None = None) -> dict:
    """RobustBench's model-info fields for ``report`` (a report.json as a dict), ``info`` on top."""
    info = dict(info or {})
    if report.get("autoattack_acc") is None:
        raise UserError("the report has no AutoAttack accuracy, which RobustBench's file needs")
    aa = _percent(report["autoattack_acc"])
    notes = []
    if report.get("quick") or (report.get("autoattack") or {}).get("version") != "standard":
        notes.append("not standard AutoAttack (quick or another version): not comparable with the leaderboard")
    if report.get("subset"):
        notes.append(f"evaluated on {report['n_examples']} test examples ({report['subset']})")
    worst = report.get("worst_case_acc")
    unreliable = worst is not None and worst < report["autoattack_acc"]
    if unreliable:
        notes.append(
            f"adaptive attacks (ancra {report.get('suite')} suite) reach {_percent(worst)}%, "
            f"below AutoAttack's {aa}%: AutoAttack overestimates this model"
        )
    out = {
        "link": "",
        "name": "",
        "authors": "",
        "additional_data": False,
        "number_forward_passes": 1,
        "dataset": report["dataset"],
        "venue": "N/A",
        "architecture": report.get("architecture") or "",
        "eps": report["eps"],
        "clean_acc": _percent(report["clean_acc"]),
        "reported": aa,
        "autoattack_acc": aa,
        "unreliable": unreliable,
    }
    out.update(info)
    footnote = "; ".join(filter(None, [info.get("footnote"), *notes]))
    if footnote:
        out["footnote"] = footnote
    return out


def write_model_info(report: dict, out_dir: Path, info: dict | None = None) -> Path:
    path = Path(out_dir) / FILE
    path.write_text(json.dumps(model_info(report, info), indent=2) + "\n")
    return path
