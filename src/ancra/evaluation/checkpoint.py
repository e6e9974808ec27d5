"""``ancra eval CHECKPOINT`` as a library call, :func:`evaluate_checkpoint`: load a weights file
and its test split, run a suite (:func:`ancra.evaluation.evaluate`), write the report.

With ``--chunk-size K`` the examples are evaluated in chunks of K into ``OUT/chunk-A-B``, each a
complete report kept once finished: a full-budget evaluation takes CPU-hours, so an interrupted
command (or one rerun later with a larger ``--n-examples``) skips the finished chunks and the
report merges whatever chunks cover the first N examples.

Under torchrun the ranks share out the chunks (one per rank when no ``--chunk-size`` is given)
through lock files, and rank 0 merges them into ``OUT``: per-example results equal one
process's wherever the attacks are deterministic (random starts are drawn per chunk, see
tests/test_eval_cli.py). The ranks never meet in a collective, so however unevenly the chunks'
costs fall (AutoAttack's cost depends on how many examples survive), no timeout kills a rank
that waits.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..checkpoint import load_model
from ..data import file_digest, load_dataset
from ..data.files import file_lock
from ..distributed import init_distributed
from ..errors import UserError

#: version of the suite's attack list; part of a chunk's settings (see _run_chunks)
SUITE_VERSION = 2

#: ``train.select`` -> what ``best.pt`` is (a checkpoint written before the option existed: val_pgd)
SELECTION_RULES = {
    "val_pgd": "best validation PGD accuracy (held-out training split)",
    "val_robust": "best validation worst case of PGD and, on RA models, PGD on the summed head CE "
    "(held-out training split)",
    "last": "last epoch (train.select = last)",
}


def evaluate_checkpoint(
    checkpoint: Path | None,
    out: Path,
    *,
    suite: str = "standard",
    n_examples: int = 0,
    eps: float | None = None,
    transfer_from: Path | None = None,
    data_dir: Path | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: str = "auto",
    quick: bool = False,
    threads: int = 0,
    chunk_size: int = 0,
    autoattack_version: str = "standard",
    standalone: bool = False,
    arch: str | None = None,
    state_dict: Path | None = None,
    torchscript: Path | None = None,
    model: str | None = None,
    dataset: str | None = None,
    num_classes: int | None = None,
    ra_blocks: int = 0,
    arch_options: dict | None = None,
) -> dict | None:
    """Evaluate a model on the first ``n_examples`` (0 = all) test examples of its dataset; write
    the report to ``out`` and return it (on rank 0; None on the other ranks of a torchrun job).

    The model is the ancra weights file ``checkpoint`` (dataset and eps from the file unless
    given), or one built elsewhere (``arch`` + ``state_dict``, ``torchscript`` or ``model`` =
    ``"module:callable"``, with ``dataset``; see :mod:`ancra.sources`). Arguments are those of
    ``ancra eval`` (see ``ancra eval --help``)."""
    from ..data.registry import dataset_info
    from ..sources import load_source
    from .suite import evaluate

    if n_examples < 0:
        raise UserError(f"--n-examples must be >= 0, got {n_examples}")
    if eps is not None and not 0 < eps <= 1:
        raise UserError(f"--eps must be in (0, 1], got {eps}")
    if batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    if chunk_size < 0:
        raise UserError(f"--chunk-size must be >= 0, got {chunk_size}")
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    source = load_source(
        checkpoint,
        arch=arch,
        state_dict=state_dict,
        torchscript=torchscript,
        module=model,
        dataset=dataset,
        num_classes=num_classes,
        ra_blocks=ra_blocks,
        arch_options=arch_options,
    )
    net, ckpt = source.model, source.checkpoint
    if ckpt is not None:
        dataset = ckpt.dataset(dataset, flag=None)
        eps = ckpt.eps(eps)
        data_dir = ckpt.data_dir(data_dir)
        in_channels, classes = net.spec["in_channels"], net.spec["num_classes"]
    else:
        dataset = dataset_info(dataset).name
        if eps is None:
            eps = dataset_info(dataset).default_eps
            print(f"[eval] eps {eps:.4g}: the usual L-inf budget on {dataset} (pass --eps to change it)", flush=True)
        in_channels, classes = source.record["in_channels"], source.record["num_classes"]
    splits = load_dataset(dataset, data_dir, download=True)
    if in_channels != splits.in_channels or classes != splits.num_classes:
        raise UserError(
            f"{source.path or model} is a {classes}-class model on {in_channels}-channel "
            f"images but {dataset} has {splits.num_classes} classes and {splits.in_channels} channels"
        )
    n = len(splits.test_x) if n_examples == 0 else min(n_examples, len(splits.test_x))
    x = splits.test_x[:n].float().div_(255)
    y = splits.test_y[:n]
    transfer = load_model(transfer_from) if transfer_from else None

    # no process group: the ranks share the chunks through files and locks, so a rank that
    # finishes hours before the others never waits on a collective (NCCL's watchdog would kill it)
    info, device = init_distributed(device, process_group=False)
    name = source.path.name if source.path else ""
    meta = {
        "checkpoint": str(source.path) if source.path else None,
        "checkpoint_hash": source.digest,
        "model_source": source.record,
        "model_selection": {
            "best.pt": SELECTION_RULES[(ckpt.recorded("train", "select") if ckpt else None) or "val_pgd"],
            "last.pt": "last epoch",
        }.get(name, "as given")
        if ckpt is not None
        else "as given (a model built outside ancra)",
        "trained_epochs": ckpt.meta.get("epoch", -1) + 1 if ckpt is not None else None,
        "train_config": ckpt.given if ckpt is not None else {},
        "architecture": net.spec if ckpt is not None else source.record,
        "first_example": 0,  # test-set index of the report's first example (ancra verify)
    }
    subset = f"first {n} test examples" if n < len(splits.test_x) else f"full test set ({n})"
    common = dict(
        suite=suite,
        eps=eps,
        batch_size=batch_size,
        seed=seed,
        transfer_model=transfer,
        device=device,
        dataset=dataset,
        quick=quick,
        autoattack_version=autoattack_version,
        standalone=standalone,
        meta=meta,
        subset=subset,
    )
    if not chunk_size and not info.enabled:
        report = evaluate(net, x, y, out_dir=out, progress=True, **common)
    else:
        # Everything that changes a chunk's numbers; a finished chunk is reused only if it matches.
        meta["settings"] = {
            "checkpoint_hash": meta["checkpoint_hash"],
            "suite": suite,
            "eps": eps,
            "seed": seed,
            "quick": quick,
            "batch_size": batch_size,
            "transfer_hash": "sha256:" + file_digest(transfer_from, "sha256") if transfer_from else None,
            # the attacks of the suite changed with the evaluation v2 (saved inputs, new budgets):
            # chunks of the first version (no key) are not mixed with new ones
            "suite_version": SUITE_VERSION,
        }
        if standalone:
            meta["settings"]["standalone"] = True
        if autoattack_version != "standard":  # absent for standard: chunks of earlier versions stay valid
            meta["settings"]["autoattack_version"] = autoattack_version
        # under torchrun without --chunk-size: one chunk per rank
        size = chunk_size or -(-n // info.world_size)
        report = _run_chunks(net, x, y, out, size, info, common)
    if info.is_main:
        print_summary(report, out)
    return report


#: seconds between two looks of rank 0 at the chunks other processes are evaluating
POLL_S = 2.0


def _run_chunks(model, x, y, out: Path, size: int, info, common: dict) -> dict | None:
    """Evaluate ``x`` in chunks ``[a, a + size)`` into ``out/chunk-A-B``, skipping finished ones
    (``report.json`` is written after ``per_example.pt``, so its presence means the chunk is
    complete), then merge all chunks on rank 0.

    Processes share the work through one lock file per chunk (``out/.chunk-A-B.lock``, an
    advisory ``flock`` the kernel drops when its holder dies): every rank first takes its
    round-robin share, then any chunk nobody holds; rank 0 then waits, polling the files, for
    the chunks others hold, and takes over any whose holder died. No collective is involved, so
    ranks may finish hours apart, and two independent commands on the same ``--out`` never
    evaluate one chunk twice."""
    from .report import load_per_example, merge_reports
    from .suite import evaluate

    n = len(x)
    bounds = [(a, min(a + size, n)) for a in range(0, n, size)]
    dirs = [out / f"chunk-{a:06d}-{b:06d}" for a, b in bounds]
    settings = common["meta"]["settings"]
    todo = []
    for (a, b), d in zip(bounds, dirs):
        if not (d / "report.json").is_file():
            todo.append((a, b, d))
            continue
        try:
            found = load_per_example(d)["context"]["meta"].get("settings")
        except Exception as e:  # noqa: BLE001 - any unreadable chunk is a user-facing problem
            raise UserError(
                f"{d} is not a readable evaluation chunk ({type(e).__name__}): delete it and rerun"
            ) from None
        if found != settings:
            diff = sorted(k for k in settings if (found or {}).get(k) != settings[k])
            raise UserError(
                f"{d} was evaluated with other settings (different {', '.join(diff)}): rerun with the "
                f"same settings or use another --out"
            )
    if info.is_main:
        print(
            f"[eval] {len(bounds)} chunks of up to {size} examples: {len(bounds) - len(todo)} finished, "
            f"{len(todo)} to evaluate",
            flush=True,
        )
    out.mkdir(parents=True, exist_ok=True)

    def run(a, b, d) -> bool:
        """Evaluate one chunk unless it is finished or another process holds it."""
        with file_lock(out / f".{d.name}.lock", blocking=False) as held:
            if not held or (d / "report.json").is_file():
                return False
            print(f"[eval] chunk {a}-{b - 1} (rank {info.rank})", flush=True)
            meta = {**common["meta"], "first_example": a}
            evaluate(
                model,
                x[a:b],
                y[a:b],
                out_dir=d,
                progress=info.is_main,
                **{**common, "subset": f"test examples {a}-{b - 1}", "meta": meta},
            )
            return True

    mine = todo[info.rank :: info.world_size]
    done = sum(run(*c) for c in mine + [c for c in todo if c not in mine])
    if info.world_size > 1:
        print(f"[eval] rank {info.rank} evaluated {done} of {len(todo)} chunks", flush=True)
    if not info.is_main:
        return None
    waited = 0.0
    while missing := [c for c in todo if not (c[2] / "report.json").is_file()]:
        for c in missing:  # a chunk whose holder died is free again: take it over
            run(*c)
        if all((c[2] / "report.json").is_file() for c in missing):
            break
        if waited % 300 < POLL_S:
            print(f"[eval] waiting for {len(missing)} chunks other processes are evaluating", flush=True)
        time.sleep(POLL_S)
        waited += POLL_S
    return merge_reports(dirs, out, subset=f"{common['subset']}, in {len(dirs)} chunks of up to {size}")


def print_summary(report: dict, out: Path) -> None:
    rows = [("clean", report["clean_acc"])]
    rows += [
        (name, a["acc"] if isinstance(a, dict) else a)
        for name, a in report.get("attacks", {}).items()
        if name != "clean"
    ]
    rows.append(("worst case", report["worst_case_acc"]))
    width = max(len(r[0]) for r in rows)
    print(f"\n{report['n_examples']} examples, eps {report.get('eps', '')}:")
    for name, acc in rows:
        print(f"  {name:<{width}}  {100 * acc:6.2f}%" if isinstance(acc, (int, float)) else f"  {name:<{width}}  {acc}")
    for flag in report.get("flags", []):
        print(f"  flag: {flag}")
    print(f"report: {out / 'report.md'}  ({out / 'report.json'})")
