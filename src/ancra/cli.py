"""Command line: ``ancra train | eval | bench | analyze`` (also ``python -m ancra``).

Every sub-command's arguments are declared here, and each one calls one library function:
:class:`ancra.trainer.Trainer`, :func:`ancra.evaluation.evaluate_checkpoint`,
:func:`ancra.bench.run_bench` and :func:`ancra.analysis.analyze`.

User errors (bad config, missing or unsafe file, out-of-range value) print one line
``error: ...`` and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .errors import UserError, first_line


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from a config file (or resume a run)",
        description="Train with a config of configs/ and write the run to --out; "
        "--resume DIR continues an interrupted run exactly.",
    )
    p.add_argument("--config", type=Path, help="TOML config, e.g. configs/fmnist-demo.toml")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=3 (repeatable)",
    )
    p.add_argument("--out", type=Path, help="run directory (metrics.jsonl, state.pt, last.pt, best.pt)")
    p.add_argument("--resume", type=Path, metavar="DIR", help="resume the run in DIR from its state.pt")
    p.add_argument(
        "--auto-resume",
        action="store_true",
        help="continue the run in --out if it holds one with the same config, else start it (for "
        "requeued jobs; implied when torchrun restarts the workers after a failure)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")


def cmd_train(args) -> int:
    from .config import load_config
    from .trainer import Trainer

    if args.resume:
        if args.config or args.overrides or args.out:
            raise UserError("--resume DIR takes the config from DIR/state.pt: drop --config/--set/--out")
        trainer = Trainer.resume(args.resume, progress=not args.quiet)
    else:
        if args.config is None or args.out is None:
            raise UserError("ancra train needs --config FILE and --out DIR (or --resume DIR)")
        cfg = load_config(args.config, args.overrides)
        # torchrun --max-restarts reruns the same command in every worker after a failure
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
        held = (args.out / "state.pt").exists() or (args.out / "config.json").exists()
        if held and (args.auto_resume or restarted):
            trainer = Trainer.resume_same(args.out, cfg, progress=not args.quiet)
        elif (args.out / "state.pt").exists():
            raise UserError(
                f"{args.out} already holds a run: continue it with --resume {args.out} (or --auto-resume) "
                "or choose another --out"
            )
        else:
            trainer = Trainer(cfg, args.out, progress=not args.quiet)
    result = trainer.fit()
    best = result["best"]
    if trainer.dist.is_main:
        print(
            json.dumps(
                {
                    "out": result["out"],
                    "best_epoch": best["epoch"] + 1,
                    "selected_by": trainer.cfg.train.select,
                    "best_val_pgd_acc": best.get("val_pgd_acc"),
                    "best_val_robust_acc": best.get("val_robust_acc"),
                    "best_val_clean_acc": best.get("val_clean_acc"),
                }
            )
        )
    return 0


def _add_eval(sub) -> None:
    from .evaluation import SUITES

    p = sub.add_parser(
        "eval",
        help="evaluate a model: standard attacks, AutoAttack, adaptive attacks",
        description="Evaluate a model on the test split (its first N examples, or all) in fp32: "
        "the standard suite (clean, FGSM, PGD-20/40, CW-inf, AutoAttack), the adaptive "
        "suite against Reverse Attention (A1-A8 of docs/EVALUATION.md) or both; writes "
        "report.json, report.md and plots to --out. The model is an ancra CHECKPOINT, or one "
        "built elsewhere: --arch NAME --state-dict FILE, --torchscript FILE or --model "
        "module:callable (which runs your code), each with --dataset; it takes images in [0, 1] "
        "and returns logits (normalisation belongs inside it).",
    )
    p.add_argument("checkpoint", type=Path, nargs="?", help="a weights file (last.pt / best.pt of `ancra train`)")
    p.add_argument("--arch", help="registry architecture of --state-dict (e.g. resnet18, wrn34_10)")
    p.add_argument("--state-dict", type=Path, metavar="FILE", help="a state dict saved outside ancra (with --arch)")
    p.add_argument("--torchscript", type=Path, metavar="FILE", help="a scripted or traced module (no code runs)")
    p.add_argument(
        "--model",
        metavar="MODULE:CALLABLE",
        help="import MODULE and call CALLABLE() for the nn.Module: RUNS YOUR CODE (modules in the "
        "current folder are found)",
    )
    p.add_argument(
        "--arch-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="--state-dict: an architecture argument, e.g. width=8 or num_blocks=[1,1,2] (repeatable)",
    )
    p.add_argument("--dataset", help="the test set (required for a model built outside ancra)")
    p.add_argument("--num-classes", type=int, help="classes of a foreign model (default: the dataset's)")
    p.add_argument(
        "--ra-blocks",
        type=int,
        default=0,
        help="--state-dict: RA blocks of the architecture (0 = plain; 2 for the ANCRA reference ResNet18_RA)",
    )
    p.add_argument("--suite", choices=SUITES, default="standard")
    p.add_argument("--n-examples", type=int, default=0, help="evaluate the first N test examples (0 = all)")
    p.add_argument(
        "--eps",
        type=_eps,
        help="L-inf budget, e.g. 0.1 or 8/255 (default: the eps the checkpoint was trained with, else the "
        "dataset's usual one)",
    )
    p.add_argument(
        "--transfer-from", type=Path, metavar="CKPT", help="a same-architecture model without RA (A6 transfer)"
    )
    p.add_argument("--out", type=Path, required=True, help="report directory")
    p.add_argument(
        "--data-dir", type=Path, help="dataset folder (default: the checkpoint's config, then the standard places)"
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--quick",
        action="store_true",
        help="reduced budgets (AutoAttack APGD-CE + APGD-T, fewer iterations and queries): demos and tests, "
        "never headline numbers; recorded in the report",
    )
    p.add_argument(
        "--autoattack-version",
        choices=("standard", "plus", "rand"),
        default="standard",
        help="reference AutoAttack version: standard (what papers report), plus (more restarts and targets: "
        "equal effort for baselines), rand (EOT, for randomised defences); --quick replaces it",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=0,
        metavar="K",
        help="evaluate in chunks of K examples, each kept in OUT/chunk-A-B when finished: rerunning the "
        "command (also with a larger --n-examples) skips finished chunks; the report merges them",
    )
    p.add_argument(
        "--standalone",
        action="store_true",
        help="adaptive/full suites: also run each adaptive family (A1-A6) alone on every clean-correct "
        "example, so the report has per-family accuracies that do not depend on the cascade order",
    )
    p.add_argument(
        "--format",
        choices=("robustbench",),
        action="append",
        default=[],
        help="also write OUT/robustbench.json, RobustBench's model-info file (fields the run does not "
        "know come from --info)",
    )
    p.add_argument(
        "--info",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a RobustBench field: name, authors, link, venue, architecture, additional_data, "
        "number_forward_passes, reported, footnote (repeatable)",
    )


def _options(items: list[str]) -> dict:
    """``["width=8", "num_blocks=[1,1,2]"]`` -> ``{"width": 8, "num_blocks": [1, 1, 2]}`` (TOML values)."""
    from .config import parse_override

    out = {}
    for item in items:
        if "=" not in item or not item.partition("=")[0].strip():
            raise UserError(f"--arch-option expects KEY=VALUE (e.g. width=8), got {item!r}")
        _, key, value = parse_override(f"arch.{item}")
        out[key] = value
    return out


def _eps(text: str) -> float:
    """``0.1``, ``8/255`` -> float (argparse type)."""
    num, sep, den = text.partition("/")
    try:
        return float(num) / float(den) if sep else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction such as 8/255, got {text!r}") from None


def cmd_eval(args) -> int:
    from .evaluation import evaluate_checkpoint
    from .evaluation.robustbench import parse_info

    info = parse_info(args.info) if args.format else {}
    if args.info and not args.format:
        raise UserError("--info fills the RobustBench file: add --format robustbench")
    report = evaluate_checkpoint(
        args.checkpoint,
        args.out,
        suite=args.suite,
        n_examples=args.n_examples,
        eps=args.eps,
        transfer_from=args.transfer_from,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        quick=args.quick,
        threads=args.threads,
        chunk_size=args.chunk_size,
        autoattack_version=args.autoattack_version,
        standalone=args.standalone,
        arch=args.arch,
        state_dict=args.state_dict,
        torchscript=args.torchscript,
        model=args.model,
        dataset=args.dataset,
        num_classes=args.num_classes,
        ra_blocks=args.ra_blocks,
        arch_options=_options(args.arch_option),
    )
    if report is not None and "robustbench" in args.format:
        from .evaluation.robustbench import write_model_info

        path = write_model_info(report, args.out, info)
        print(f"RobustBench model info: {path}")
    return 0


def _add_verify(sub) -> None:
    p = sub.add_parser(
        "verify",
        help="re-check every broken example of an evaluation report",
        description="Re-check the report in REPORT_DIR from its saved adversarial inputs "
        "(adversarial.pt): the checkpoint's SHA-256 must match the report, and each saved input must "
        "lie within eps (+1e-6) of the test image, in [0, 1], and be misclassified by the model run "
        "one example at a time in fp32 (TF32 off). Prints the counts per attack; exits 1 on any "
        "mismatch, 2 on unusable input.",
    )
    p.add_argument("report_dir", type=Path, help="a folder written by `ancra eval --out`")
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="the model file: weights, state dict or TorchScript (default: the recorded path)",
    )
    p.add_argument(
        "--model",
        metavar="MODULE:CALLABLE",
        help="for a report of a --model evaluation: build the model again (RUNS YOUR CODE; never read from the report)",
    )
    p.add_argument(
        "--data-dir", type=Path, help="dataset folder (default: the checkpoint's config, then the standard places)"
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")


def cmd_verify(args) -> int:
    from .evaluation import verify_report

    result = verify_report(
        args.report_dir, checkpoint=args.checkpoint, model=args.model, data_dir=args.data_dir, device=args.device
    )
    return 0 if result.ok else 1


def _add_bench(sub) -> None:
    from .precision import PRECISIONS

    p = sub.add_parser(
        "bench",
        help="time training steps (or evaluation attacks) of a config",
        description="Times whole training steps of CONFIG on synthetic data of its shape after "
        "warm-up, in the layout the trainer would use on this machine; prints images/s, "
        "median step time, FLOPs per step, achieved FLOP/s, the fraction of a peak "
        "measured in the same run, and the CPU's instruction set.",
    )
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--precision", choices=PRECISIONS, default=None, help="default: the config's train.precision")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the network (default: the config's train.compile)",
    )
    p.add_argument("--eval", action="store_true", help="time the evaluation attack (PGD) instead of training")
    p.add_argument("--json", action="store_true", help="print one JSON line")


def cmd_bench(args) -> int:
    from .bench import run_bench
    from .config import load_config

    cfg = load_config(args.config, args.overrides)
    r = run_bench(
        cfg,
        batch=args.batch,
        steps=args.steps,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        eval_mode=args.eval,
        warmup=args.warmup,
    )
    if args.json:
        print(json.dumps(r))
        return 0
    speed = f"{r['step_s']:.4f} s/step, {r['images_per_s']:.1f} img/s"
    if r["achieved_flops_per_s"] is not None:
        speed += (
            f", {r['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s = {100 * r['fraction_of_peak']:.1f}% "
            f"of a {r['peak_flops_per_s'] / 1e9:.0f} GFLOP/s {r['peak_source']} peak"
        )
    print(
        f"{r['mode']} {cfg.model.name} batch {args.batch} {r['precision']} on {r['device_name']} "
        f"({r['hardware']['capability']}, {r['hardware']['threads']} threads): {speed}"
    )
    return 0


def _add_analyze(sub) -> None:
    from .analysis import EMBEDDINGS

    p = sub.add_parser(
        "analyze",
        help="feature-space analysis of checkpoints (alignment / exclusion) and plots",
        description="Penultimate-feature distances of positive pairs (x, its PGD adversarial) and negative "
        "pairs (x, an other-class example attacked towards x's class), per class, with an "
        "embedding, training curves and accuracy-vs-eps plots. Writes DIR/analysis.json and PNGs.",
    )
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="weights file (best.pt / last.pt of a run)")
    p.add_argument(
        "--compare",
        type=Path,
        nargs="+",
        action="extend",
        default=[],
        metavar="CKPT",
        help="more checkpoints to overlay (same dataset)",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--n-examples", type=int, default=1000, metavar="N", help="first N test examples (default 1000)")
    p.add_argument(
        "--eps",
        type=float,
        default=None,
        metavar="E",
        help="L-inf radius (default: objective.eps of CHECKPOINT's config)",
    )
    p.add_argument("--steps", type=int, default=10, metavar="S", help="PGD steps, step size eps/4 (default 10)")
    p.add_argument("--dataset", default=None, help="dataset name (default: data.dataset of CHECKPOINT's config)")
    p.add_argument("--data-dir", type=Path, default=None, metavar="D", help="folder with the dataset files")
    p.add_argument(
        "--runs",
        type=Path,
        nargs="+",
        action="extend",
        default=None,
        metavar="RUN_DIR",
        help="run directories with metrics.jsonl (default: each checkpoint's folder, when it has one)",
    )
    p.add_argument(
        "--reports",
        type=Path,
        nargs="+",
        action="extend",
        default=[],
        metavar="REPORT_JSON",
        help="`ancra eval` report.json files for the accuracy-vs-eps plot",
    )
    p.add_argument(
        "--embedding",
        choices=EMBEDDINGS,
        default="auto",
        help="auto: UMAP if umap-learn is installed, else t-SNE (default auto)",
    )
    p.add_argument("--seed", type=int, default=0, help="negatives, attack starts and embedding (default 0)")
    p.add_argument("--batch-size", type=int, default=250, help="anchors per attack batch (default 250)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def cmd_analyze(args) -> int:
    from .analysis import analyze

    analyze(
        args.checkpoint,
        out_dir=args.out,
        compare=args.compare,
        reports=args.reports,
        runs=args.runs,
        n_examples=args.n_examples,
        eps=args.eps,
        steps=args.steps,
        dataset=args.dataset,
        data_dir=args.data_dir,
        embedding=args.embedding,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
    )
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "verify": cmd_verify, "bench": cmd_bench, "analyze": cmd_analyze}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ancra", description="Adversarial training with ANCRA and honest robustness evaluation."
    )
    parser.add_argument("--version", action="version", version=f"ancra {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_eval(sub)
    _add_verify(sub)
    _add_bench(sub)
    _add_analyze(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from .checkpoint import _caused_by_full_disk

        if not _caused_by_full_disk(e):
            raise
        hint = {
            "train": "; then `ancra train --resume DIR` continues from the last completed epoch",
            "eval": "; then rerun the same command: with --chunk-size the finished chunks are kept",
        }.get(args.command, "")
        print(f"error: disk full ({type(e).__name__}: {first_line(e, 160)}): free some space{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = {
            "train": ": continue with `ancra train --resume DIR` (from the last completed epoch)",
            "eval": ": rerun the same command; with --chunk-size the finished chunks are kept",
        }.get(args.command, "")
        print(f"interrupted{hint}", file=sys.stderr)
        return 130
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Leave a torchrun process group before exit: a gloo group still alive at interpreter
    shutdown can abort a rank ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
