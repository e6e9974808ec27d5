"""Command line: ``ancra train | eval | bench | analyze`` (also ``python -m ancra``).

User errors (bad config, missing or unsafe file, out-of-range value) print one line
``error: ...`` and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .errors import UserError


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model from a config file (or resume a run)",
                       description="Train with a config of configs/ and write the run to --out; "
                                   "--resume DIR continues an interrupted run exactly.")
    p.add_argument("--config", type=Path, help="TOML config, e.g. configs/fmnist-demo.toml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--out", type=Path, help="run directory (metrics.jsonl, state.pt, last.pt, best.pt)")
    p.add_argument("--resume", type=Path, metavar="DIR", help="resume the run in DIR from its state.pt")
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
        if (args.out / "state.pt").exists():
            raise UserError(f"{args.out} already holds a run: continue it with --resume {args.out} or choose another --out")
        trainer = Trainer(load_config(args.config, args.overrides), args.out, progress=not args.quiet)
    result = trainer.fit()
    best = result["best"]
    if trainer.dist.is_main:
            print(json.dumps({"out": result["out"], "best_epoch": best["epoch"] + 1,
                          "best_val_pgd_acc": best.get("val_pgd_acc"), "best_val_clean_acc": best.get("val_clean_acc")}))
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="time training steps (or evaluation attacks) of a config",
                       description="Times whole training steps of CONFIG on synthetic data of its shape after "
                                   "warm-up; prints images/s, median step time, FLOPs per step, achieved FLOP/s "
                                   "and the fraction of a matmul peak measured in the same run.")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--eval", action="store_true", help="time the evaluation attack (PGD) instead of training")
    p.add_argument("--json", action="store_true", help="print one JSON line")


def cmd_bench(args) -> int:
    from .bench import main_bench

    return main_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ancra", description="Adversarial training with ANCRA and honest robustness evaluation.")
    parser.add_argument("--version", action="version", version=f"ancra {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    from .evaluate_cli import add_parser as _add_eval

    _add_eval(sub)
    _add_bench(sub)
    from .analysis import add_parser as _add_analyze

    _add_analyze(sub)
    return parser


def cmd_analyze(args) -> int:
    from .analysis import run

    return run(args)


def cmd_eval(args) -> int:
    from .evaluate_cli import run

    return run(args)


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "bench": cmd_bench, "analyze": cmd_analyze}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = {"train": ": continue with `ancra train --resume DIR` (from the last completed epoch)",
                "eval": ": rerun the same command; AutoAttack continues from its state file"}.get(args.command, "")
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
