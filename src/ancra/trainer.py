"""The training loop: data -> model -> objective per step -> validation -> checkpoints.

A run directory holds::

    config.json     the validated config of the run
    metrics.jsonl   one JSON line per epoch (loss terms, accuracies, lr, seconds, images/s and
                    the hardware they were measured on, validation clean, PGD and robust accuracy)
    state.pt        everything needed to resume (weights, optimiser, epoch, best so far)
    last.pt         weights of the last epoch      } weights-only files with the model spec:
    best.pt         weights of the best epoch      } ``ancra.checkpoint.load_model(path)``

Resuming is exact on CPU: batch order, augmentation and attack noise of epoch ``e`` are pure
functions of ``(seed, e)``, so a run resumed from the state of epoch ``e`` replays the same steps
an uninterrupted run takes. Model selection (``train.select``) uses the validation split held out
of the training set; the test set is never looked at here.
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .attacks import pgd
from .checkpoint import atomic_save, atomic_write_text, load_state, safe_load, save_weights, to_cpu
from .config import Config, config_from_dict
from .data import DeviceLoader, load_dataset, split_validation
from .distributed import all_reduce_sum, barrier, broadcast_buffers, convert_sync_batchnorm, init_distributed
from .errors import UserError
from .hardware import (
    check_precision,
    compile_network,
    configure_kernels,
    describe_device,
    device_info,
    use_channels_last,
)
from .models import create_model
from .objectives import training_step
from .progress import Progress

STATE_FORMAT = "ancra-state/1"


#: steps between the checks that need the host to wait for the device (finite loss, valid
#: negatives); a failed check names the first step that failed
CHECK_EVERY = 10


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_at(cfg: Config, epoch: int) -> float:
    """Learning rate of ``epoch`` (0-based) under the configured schedule."""
    t = cfg.train
    if t.schedule == "piecewise":
        return t.lr * t.gamma ** sum(epoch >= m for m in t.milestones)
    if t.schedule == "cosine":
        return t.lr * 0.5 * (1 + math.cos(math.pi * epoch / t.epochs))
    return t.lr


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of the attack / negative-sampling generator of one epoch and rank (resumable by
    construction: nothing random is carried from one epoch to the next)."""
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729 + 12345) % (2**63)


def count_validation(model, x, y, *, eps, steps, batch_size, seed=0) -> torch.Tensor:
    """Numbers of examples correct clean, under PGD-``steps`` (CE, uniform start, step eps/4) and
    under the validation worst case, in eval mode, as a tensor ``[clean, pgd, robust]`` (summable
    across ranks).

    ``robust`` is ``pgd`` for a plain model. On an RA model plain PGD follows the final logits,
    whose gradient does not see RA's argmax gate flip (docs/EVALUATION.md), so ``robust`` also
    runs PGD on ``CE(final) + sum_h CE(aux_h)`` (the adaptive suite's first attack, which reaches
    the gates) and counts an example only if it survives both: a selection rule that the gate
    cannot flatter."""
    model.eval()
    n_aux = getattr(model, "ra_blocks", 0)
    g = torch.Generator(device=x.device).manual_seed(seed)
    # a stream of its own: plain PGD draws the same starts as before val_robust existed
    g_heads = torch.Generator(device=x.device).manual_seed(seed + 1)
    counts = torch.zeros(3, dtype=torch.float64, device=x.device)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        x_adv = pgd(model, xb, yb, eps=eps, step_size=eps / 4, steps=steps, generator=g)
        with torch.no_grad():
            survives = model(x_adv).argmax(1) == yb
            counts[0] += (model(xb).argmax(1) == yb).sum()
            counts[1] += survives.sum()
        if n_aux:
            # cr_beta = n_aux: CE(final) + n_aux * mean_h CE(aux_h) = CE(final) + sum_h CE(aux_h)
            x_heads = pgd(model, xb, yb, eps=eps, step_size=eps / 4, steps=steps, cr_beta=n_aux, generator=g_heads)
            with torch.no_grad():
                survives &= model(x_heads).argmax(1) == yb
        counts[2] += survives.sum()
    return counts


def load_initial_weights(net: torch.nn.Module, path: Path) -> None:
    """Load ``train.init_from`` into ``net``: an ancra weights file, or a state dict saved elsewhere
    (``module.`` / ``_orig_mod.`` prefixes stripped); it must fit the configured architecture."""
    from .checkpoint import FORMAT
    from .sources import state_dict_of

    obj = safe_load(path)
    state = obj["state_dict"] if isinstance(obj, dict) and obj.get("format") == FORMAT else state_dict_of(obj, path)
    load_state(
        net,
        state,
        f"train.init_from = {path} does not fit the configured model",
        "check model.name, model.width and model.num_blocks",
    )


class StepHealth:
    """The per-step checks that need a value on the host (a finite loss; every negative of
    another class), kept on the device and read every :data:`CHECK_EVERY` steps: the step loop
    never waits for the device, and a failure still names the first step that failed."""

    def __init__(self, device: torch.device) -> None:
        self.first_bad_loss = torch.full((), -1, dtype=torch.long, device=device)
        self.first_bad_negatives = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_loss_value = torch.zeros((), device=device)

    def record(self, step: int, metrics: dict[str, torch.Tensor]) -> None:
        loss = metrics["loss"]
        new = (self.first_bad_loss < 0) & ~torch.isfinite(loss)
        self.first_bad_loss = torch.where(new, step, self.first_bad_loss)
        self.bad_loss_value = torch.where(new, loss.float(), self.bad_loss_value)
        if "same_class_negatives" in metrics:
            new = (self.first_bad_negatives < 0) & (metrics["same_class_negatives"] > 0)
            self.first_bad_negatives = torch.where(new, step, self.first_bad_negatives)

    def raise_if_failed(self, epoch: int, lr: float, state: Path) -> None:
        bad_loss, bad_negatives = torch.stack([self.first_bad_loss, self.first_bad_negatives]).tolist()
        if bad_loss >= 0:
            raise UserError(
                f"the loss became {self.bad_loss_value.item()} at epoch {epoch + 1}, step {bad_loss + 1}: "
                f"lower train.lr (now {lr}); the last good state is kept in {state}"
            )
        if bad_negatives >= 0:
            raise UserError(
                f"a batch had an anchor without enough other-class examples for its negatives at epoch "
                f"{epoch + 1}, step {bad_negatives + 1}: use a larger train.batch_size or a smaller objective.k"
            )


@dataclass
class RunFiles:
    out: Path

    @property
    def state(self) -> Path:
        return self.out / "state.pt"

    @property
    def metrics(self) -> Path:
        return self.out / "metrics.jsonl"

    @property
    def last(self) -> Path:
        return self.out / "last.pt"

    @property
    def best(self) -> Path:
        return self.out / "best.pt"

    @property
    def config(self) -> Path:
        return self.out / "config.json"

    @property
    def metrics_csv(self) -> Path:
        return self.out / "metrics.csv"


def _append_jsonl(path: Path, record: dict) -> None:
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise UserError(f"disk full while writing {path}: free some space, then resume the run") from None
        raise


def write_metrics_csv(jsonl: Path, csv_path: Path) -> None:
    """``metrics.csv``: the scalar columns of ``metrics.jsonl`` (which stays the record), one row per
    epoch, rewritten whole and atomically after each epoch."""
    import csv
    import io

    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()] if jsonl.exists() else []
    rows = [{k: v for k, v in r.items() if isinstance(v, (int, float, str, bool)) or v is None} for r in rows]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(csv_path, buf.getvalue())


def open_tensorboard(folder: Path):
    """A TensorBoard ``SummaryWriter`` on ``folder`` (scalars ``step/loss`` and ``epoch/*``)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "train.tensorboard = true needs the tensorboard package: pip install 'ancra[tensorboard]' "
            "(or set it to false; metrics.jsonl and metrics.csv are written either way)"
        ) from None
    return SummaryWriter(str(folder))


def _truncate_metrics(path: Path, next_epoch: int) -> None:
    """Drop metric lines of epochs the saved state does not contain (written before a crash)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["epoch"] < next_epoch]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


class Trainer:
    """Builds everything from a :class:`Config` and runs (or resumes) the epochs."""

    def __init__(self, cfg: Config, out_dir: str | Path, progress: bool = True, *, initial: bool = True) -> None:
        """``initial``: a new run (``train.init_from`` is loaded); a resumed run takes its weights
        from its state instead."""
        self.cfg = cfg
        self.files = RunFiles(Path(out_dir))
        t = cfg.train
        self.dist, self.device = init_distributed(t.device)
        self.progress = progress and self.dist.is_main
        check_precision(t.precision, self.device)  # before loading any data: refuse fast
        notes = configure_kernels(self.device, t.deterministic, t.precision)
        if self.progress:
            for note in [f"device: {describe_device(self.device)}", *notes]:
                print(note, file=sys.stderr, flush=True)
        seed_everything(t.seed)
        world = self.dist.world_size
        if t.batch_size % world:
            raise UserError(
                f"train.batch_size = {t.batch_size} (the global batch) must be divisible by the {world} processes"
            )

        d = cfg.data
        splits = load_dataset(d.dataset, d.data_dir or None, d.download)
        train_x, train_y = splits.train_x, splits.train_y
        if d.train_subset:
            train_x, train_y = train_x[: d.train_subset], train_y[: d.train_subset]
        train_x, train_y, val_x, val_y = split_validation(train_x, train_y, d.val_size, d.val_seed)
        if len(train_x) < t.batch_size:
            raise UserError(f"train.batch_size = {t.batch_size} exceeds the {len(train_x)} training examples")
        self.loader = DeviceLoader(
            train_x,
            train_y,
            t.batch_size // world,
            shuffle=True,
            drop_last=True,
            augment=None if d.augment == "none" else d.augment,
            crop_padding=d.crop_padding,
            seed=t.seed,
            device=self.device,
            rank=self.dist.rank,
            world_size=world,
        )
        # each rank validates every world-th example; the counts are summed across ranks
        r = self.dist.rank
        self.val_x = val_x[r::world].to(self.device).float().div_(255)
        self.val_y = val_y[r::world].to(self.device)
        self.n_val = len(val_x)
        self.num_classes = splits.num_classes

        torch.manual_seed(t.seed)
        net = create_model(cfg.model.name, splits.num_classes, splits.in_channels, **cfg.model.kwargs())
        if t.init_from and initial:
            load_initial_weights(net, Path(t.init_from))
            if self.progress:
                print(f"initial weights: {t.init_from}", file=sys.stderr, flush=True)
        if t.sync_bn and self.dist.enabled:
            net = convert_sync_batchnorm(net, self.device)
        self.channels_last = use_channels_last(t.channels_last, net, self.device)
        if self.progress and t.channels_last == "auto" and not self.channels_last:
            print(
                "train.channels_last = auto: NCHW layout, this model has strided 1x1 convolutions too narrow for "
                "channels_last on a CPU (oneDNN issue 6035, see docs/PERFORMANCE.md)",
                file=sys.stderr,
            )
        net.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        # what each epoch's speed is measured on (a resumed run builds a new Trainer, so a run
        # continued on another machine records that machine)
        self.hardware = {**device_info(self.device), "channels_last": self.channels_last}
        if t.compile:
            # in place, before DDP (PyTorch's "where to apply torch.compile"): every call of the
            # network, attacks and prediction forwards included, runs compiled, and its state_dict
            # keys stay those of the plain network
            compile_network(net, t.compile_backend)
        self.net = net
        self.model = net
        if self.dist.enabled:
            self.model = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.objective = cfg.objective
        self.optimizer = torch.optim.SGD(net.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        self.epoch = 0
        self.best = {"epoch": -1}
        self.tensorboard = (
            open_tensorboard(self.files.out / "tensorboard") if t.tensorboard and self.dist.is_main else None
        )

    # --- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "model": to_cpu(self.net.state_dict()),
            "optimizer": to_cpu(self.optimizer.state_dict()),
            "best": dict(self.best),
        }

    @classmethod
    def resume(cls, out_dir: str | Path, progress: bool = True) -> "Trainer":
        """Continue the run in ``out_dir`` from its last state; a run killed before its first
        state was written starts over from its config.json."""
        files = RunFiles(Path(out_dir))
        if not files.state.exists():
            if not files.config.exists():
                raise UserError(f"nothing to resume in {out_dir}: neither state.pt nor config.json exists")
            try:
                raw = json.loads(files.config.read_text())
            except json.JSONDecodeError:
                raise UserError(f"{files.config} is corrupt: start a new run with --config") from None
            return cls(config_from_dict(raw), out_dir, progress)
        state = safe_load(files.state)
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise UserError(f"{files.state} is not an ancra training state")
        trainer = cls(config_from_dict(state["config"]), out_dir, progress, initial=False)
        trainer.net.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.epoch = state["epoch"]
        trainer.best = state["best"]
        return trainer

    @classmethod
    def resume_same(cls, out_dir: str | Path, cfg: Config, progress: bool = True) -> "Trainer":
        """Resume the run in ``out_dir`` if it was started with ``cfg`` (``--auto-resume``, a
        torchrun restart); a run of another config there is refused, never overwritten."""
        files = RunFiles(Path(out_dir))
        recorded = None
        if files.config.exists():
            try:
                recorded = json.loads(files.config.read_text())
            except json.JSONDecodeError:
                recorded = None
        if recorded is not None and recorded != cfg.to_dict():
            changed = sorted(
                f"{section}.{key}"
                for section, values in cfg.to_dict().items()
                for key, value in values.items()
                if (recorded.get(section) or {}).get(key) != value
            )
            raise UserError(
                f"{out_dir} holds a run of another config (differs in {', '.join(changed[:5]) or 'its sections'}): "
                "choose another --out, or continue that run with --resume"
            )
        return cls.resume(out_dir, progress)

    def _save(self, record: dict) -> None:
        """Rank 0 writes; every rank waits so that no rank runs ahead of the saved state."""
        if not self.dist.is_main:
            barrier(self.dist)
            return
        meta = {
            "epoch": record["epoch"],
            "val_clean_acc": record["val_clean_acc"],
            "val_pgd_acc": record["val_pgd_acc"],
            "val_robust_acc": record["val_robust_acc"],
            "config": self.cfg.to_dict(),
        }
        save_weights(self.model, self.files.last, meta)
        if record["epoch"] == self.best["epoch"]:
            save_weights(self.model, self.files.best, meta)
        # state last: a crash before this line replays the epoch, whose metrics line is dropped
        atomic_save(self.state_dict(), self.files.state)
        barrier(self.dist)

    # --- loop ---------------------------------------------------------------------------------
    def train_epoch(self) -> dict:
        cfg, epoch = self.cfg, self.epoch
        lr = lr_at(cfg, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.loader.set_epoch(epoch)
        n_steps = len(self.loader)
        if cfg.train.max_steps_per_epoch:
            n_steps = min(n_steps, cfg.train.max_steps_per_epoch)
        gen = torch.Generator(device=self.device).manual_seed(epoch_seed(cfg.train.seed, epoch, self.dist.rank))
        bar = Progress(n_steps, f"epoch {epoch + 1}/{cfg.train.epochs}", enabled=self.progress)
        sums: dict[str, torch.Tensor] = {}
        health = StepHealth(self.device)
        start = time.perf_counter()
        for step, (x, y) in enumerate(self.loader):
            if step == n_steps:
                break
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            broadcast_buffers(self.net, self.dist)  # every rank attacks rank 0's model
            # the loader's images are uint8 / 255, in [0, 1] by construction: no per-step range check
            metrics = training_step(
                self.model,
                self.optimizer,
                x,
                y,
                self.objective,
                epoch,
                gen,
                precision=cfg.train.precision,
                sync_checks=False,
            )
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0) + v
            health.record(step, metrics)
            if step % CHECK_EVERY == 0 or step + 1 == n_steps:
                health.raise_if_failed(epoch, lr, self.files.state)
                loss = metrics["loss"].item()
                bar.update(step + 1, loss=loss)
                if self.tensorboard is not None:
                    self.tensorboard.add_scalar("step/loss", loss, epoch * n_steps + step)
        bar.close()
        seconds = time.perf_counter() - start
        keys = sorted(sums)
        means = all_reduce_sum(torch.stack([sums[k].float() for k in keys]), self.dist) / (
            n_steps * self.dist.world_size
        )
        record = {"epoch": epoch, "lr": lr}
        record.update(zip(keys, means.tolist()))
        record["epoch_s"] = seconds
        record["images_per_s"] = n_steps * cfg.train.batch_size / seconds
        record["hardware"] = self.hardware
        broadcast_buffers(self.net, self.dist)  # every rank validates the model rank 0 saves
        counts = count_validation(
            self.net,
            self.val_x,
            self.val_y,
            eps=cfg.objective.eps,
            steps=cfg.train.val_pgd_steps,
            batch_size=cfg.train.val_batch_size,
            seed=epoch_seed(cfg.train.seed, epoch, self.dist.rank),
        )
        counts = all_reduce_sum(counts, self.dist)
        n = self.n_val
        values = (counts / n).tolist() if n else [float("nan")] * 3
        record["val_clean_acc"], record["val_pgd_acc"], record["val_robust_acc"] = values
        record["val_s"] = time.perf_counter() - start - seconds
        return record

    def _is_best(self, record: dict) -> bool:
        """Whether this epoch's weights become best.pt under ``train.select`` (ties: the later
        epoch). Without a validation split (val_size = 0) the best epoch is the last one."""
        select = self.cfg.train.select
        if select == "last":
            return True
        value = record[f"{select}_acc"]
        # a state saved before val_robust existed has no such entry: the next epoch replaces it
        return math.isnan(value) or self.best["epoch"] < 0 or value >= self.best.get(f"{select}_acc", -1.0)

    def fit(self, stop_after: int | None = None) -> dict:
        """Run the remaining epochs (or only up to epoch ``stop_after``, e.g. to split a run)."""
        if self.dist.is_main:
            self.files.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.files.config, json.dumps(self.cfg.to_dict(), indent=2) + "\n")
            # lines of epochs after the saved state were written before a crash: replayed now
            _truncate_metrics(self.files.metrics, self.epoch)
        barrier(self.dist)
        record = {}
        end = self.cfg.train.epochs if stop_after is None else min(stop_after, self.cfg.train.epochs)
        while self.epoch < end:
            record = self.train_epoch()
            if self._is_best(record):
                self.best = {"epoch": record["epoch"], "select": self.cfg.train.select} | {
                    k: record[k] for k in ("val_clean_acc", "val_pgd_acc", "val_robust_acc")
                }
            if self.dist.is_main:
                _append_jsonl(self.files.metrics, record)
                write_metrics_csv(self.files.metrics, self.files.metrics_csv)
                if self.tensorboard is not None:
                    for key, value in record.items():
                        if isinstance(value, (int, float)) and key != "epoch":
                            self.tensorboard.add_scalar(f"epoch/{key}", value, record["epoch"] + 1)
                    self.tensorboard.flush()
            self.epoch += 1
            self._save(record)
            if self.progress:
                print(
                    f"epoch {record['epoch'] + 1}: loss {record['loss']:.4f}  "
                    f"train nat/adv {record.get('nat_acc', math.nan):.3f}/{record.get('adv_acc', math.nan):.3f}  "
                    f"val clean/PGD/robust {record['val_clean_acc']:.3f}/{record['val_pgd_acc']:.3f}"
                    f"/{record['val_robust_acc']:.3f}  "
                    f"{record['images_per_s']:.0f} img/s",
                    flush=True,
                )
        if self.tensorboard is not None:
            self.tensorboard.close()
        return {"best": self.best, "last": record, "out": str(self.files.out)}
