"""``ancra eval CHECKPOINT``: load a checkpoint and its test split, run a suite, write the report.

Under torchrun the examples are split into contiguous shards, one per rank; each rank evaluates
its shard (AutoAttack included) into ``OUT/shard-R`` and rank 0 merges the per-example results
into ``OUT`` (the same numbers as one process, see tests/test_eval_cli.py).

With ``--chunk-size K`` the examples are evaluated in chunks of K into ``OUT/chunk-A-B``, each a
complete report kept once finished: a full-budget evaluation takes CPU-hours, so an interrupted
command (or one rerun later with a larger ``--n-examples``) skips the finished chunks and the
report merges whatever chunks cover the first N examples. Under torchrun the ranks share out
the chunks.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import load_model
from .data import file_digest, load_dataset
from .distributed import barrier, init_distributed
from .errors import UserError


def add_parser(sub) -> None:
    from .evaluation import SUITES

    p = sub.add_parser("eval", help="evaluate a checkpoint: standard attacks, AutoAttack, adaptive attacks",
                       description="Evaluate CHECKPOINT on the test split (its first N examples, or all) in fp32: "
                                   "the standard suite (clean, FGSM, PGD-20/40, CW-inf, AutoAttack), the adaptive "
                                   "suite against Reverse Attention (A1-A8 of EVALUATION.md) or both; writes "
                                   "report.json, report.md and plots to --out.")
    p.add_argument("checkpoint", type=Path, help="a weights file (last.pt / best.pt of `ancra train`)")
    p.add_argument("--suite", choices=SUITES, default="standard")
    p.add_argument("--n-examples", type=int, default=0, help="evaluate the first N test examples (0 = all)")
    p.add_argument("--eps", type=float, help="L-inf budget (default: the eps the checkpoint was trained with)")
    p.add_argument("--transfer-from", type=Path, metavar="CKPT", help="a same-architecture model without RA (A6 transfer)")
    p.add_argument("--out", type=Path, required=True, help="report directory")
    p.add_argument("--data-dir", type=Path, help="dataset folder (default: the checkpoint's config, then the standard places)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--quick", action="store_true",
                   help="reduced budgets (AutoAttack APGD-CE + APGD-T, fewer iterations and queries): demos and tests, "
                        "never headline numbers; recorded in the report")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    p.add_argument("--chunk-size", type=int, default=0, metavar="K",
                   help="evaluate in chunks of K examples, each kept in OUT/chunk-A-B when finished: rerunning the "
                        "command (also with a larger --n-examples) skips finished chunks; the report merges them")


def run(args) -> int:
    from .evaluation import evaluate, merge_reports

    if args.n_examples < 0:
        raise UserError(f"--n-examples must be >= 0, got {args.n_examples}")
    if args.eps is not None and not 0 < args.eps <= 1:
        raise UserError(f"--eps must be in (0, 1], got {args.eps}")
    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    if args.chunk_size < 0:
        raise UserError(f"--chunk-size must be >= 0, got {args.chunk_size}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint)
    config = model.checkpoint_meta.get("config", {})
    dataset = config.get("data", {}).get("dataset", "fmnist")
    eps = args.eps if args.eps is not None else config.get("objective", {}).get("eps")
    if eps is None:
        raise UserError(f"{args.checkpoint} records no training eps: pass --eps")
    data_dir = args.data_dir or config.get("data", {}).get("data_dir") or None
    splits = load_dataset(dataset, data_dir, download=True)
    spec = model.spec
    if spec["in_channels"] != splits.in_channels or spec["num_classes"] != splits.num_classes:
        raise UserError(f"{args.checkpoint} is a {spec['num_classes']}-class model on {spec['in_channels']}-channel "
                        f"images but {dataset} has {splits.num_classes} classes and {splits.in_channels} channels")
    n = len(splits.test_x) if args.n_examples == 0 else min(args.n_examples, len(splits.test_x))
    x = splits.test_x[:n].float().div_(255)
    y = splits.test_y[:n]
    transfer = load_model(args.transfer_from) if args.transfer_from else None

    info, device = init_distributed(args.device)
    meta = {
        "checkpoint": str(args.checkpoint),
        "checkpoint_hash": "sha256:" + file_digest(args.checkpoint, "sha256"),
        "model_selection": {"best.pt": "best validation PGD accuracy (held-out training split)",
                            "last.pt": "last epoch"}.get(args.checkpoint.name, "as given"),
        "trained_epochs": model.checkpoint_meta.get("epoch", -1) + 1,
        "train_config": config,
        "architecture": spec,
    }
    subset = f"first {n} test examples" if n < len(splits.test_x) else f"full test set ({n})"
    common = dict(suite=args.suite, eps=eps, batch_size=args.batch_size, seed=args.seed, transfer_model=transfer,
                  device=device, dataset=dataset, quick=args.quick, meta=meta, subset=subset)
    if args.chunk_size:
        # Everything that changes a chunk's numbers; a finished chunk is reused only if it matches.
        meta["settings"] = {"checkpoint_hash": meta["checkpoint_hash"], "suite": args.suite, "eps": eps,
                            "seed": args.seed, "quick": args.quick, "batch_size": args.batch_size,
                            "transfer_hash": "sha256:" + file_digest(args.transfer_from, "sha256")
                            if args.transfer_from else None}
        report = _run_chunks(model, x, y, args.out, args.chunk_size, info, common)
    elif not info.enabled:
        report = evaluate(model, x, y, out_dir=args.out, progress=True, **common)
    else:
        bounds = [n * r // info.world_size for r in range(info.world_size + 1)]
        lo, hi = bounds[info.rank], bounds[info.rank + 1]
        evaluate(model, x[lo:hi], y[lo:hi], out_dir=args.out / f"shard-{info.rank}", progress=info.is_main, **common)
        barrier(info)
        report = merge_reports([args.out / f"shard-{r}" for r in range(info.world_size)], args.out) if info.is_main else None
        barrier(info)
    if info.is_main:
        print_summary(report, args.out)
    return 0


def _run_chunks(model, x, y, out: Path, size: int, info, common: dict) -> dict | None:
    """Evaluate ``x`` in chunks ``[a, a + size)`` into ``out/chunk-A-B``, skipping finished ones
    (``report.json`` is written after ``per_example.pt``, so its presence means the chunk is
    complete), then merge all chunks on rank 0. Ranks take the unfinished chunks round-robin."""
    from .evaluation import evaluate, merge_reports
    from .evaluation.report import load_per_example

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
            raise UserError(f"{d} is not a readable evaluation chunk ({type(e).__name__}): delete it and rerun") from None
        if found != settings:
            diff = sorted(k for k in settings if (found or {}).get(k) != settings[k])
            raise UserError(f"{d} was evaluated with other settings (different {', '.join(diff)}): rerun with the "
                            f"same settings or use another --out")
    done = len(bounds) - len(todo)
    if info.is_main:
        print(f"[eval] {len(bounds)} chunks of up to {size} examples: {done} finished, {len(todo)} to evaluate",
              flush=True)
    mine = todo[info.rank::info.world_size]
    for i, (a, b, d) in enumerate(mine):
        if info.is_main:
            print(f"[eval] chunk {a}-{b - 1} ({i + 1}/{len(mine)} of this process)", flush=True)
        evaluate(model, x[a:b], y[a:b], out_dir=d, progress=info.is_main,
                 **{**common, "subset": f"test examples {a}-{b - 1}"})
    barrier(info)
    report = None
    if info.is_main:
        report = merge_reports(dirs, out, subset=f"{common['subset']}, in {len(dirs)} chunks of up to {size}")
    barrier(info)
    return report


def print_summary(report: dict, out: Path) -> None:
    rows = [("clean", report["clean_acc"])]
    rows += [(name, a["acc"] if isinstance(a, dict) else a) for name, a in report.get("attacks", {}).items()
             if name != "clean"]
    rows.append(("worst case", report["worst_case_acc"]))
    width = max(len(r[0]) for r in rows)
    print(f"\n{report['n_examples']} examples, eps {report.get('eps', '')}:")
    for name, acc in rows:
        print(f"  {name:<{width}}  {100 * acc:6.2f}%" if isinstance(acc, (int, float)) else f"  {name:<{width}}  {acc}")
    for flag in report.get("flags", []):
        print(f"  flag: {flag}")
    print(f"report: {out / 'report.md'}  ({out / 'report.json'})")
