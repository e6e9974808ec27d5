"""Every broken example, kept: ``adversarial.pt`` beside each report, re-checked by ``ancra verify``.

A report's worst case says "these examples fall"; :class:`AdversarialStore` keeps the proof: for
every example that some attack broke, the adversarial input of the first attack (in run order) that
broke it, the attack's name and the label. It holds one input per broken example (a float32 copy,
about 3 KB per Fashion-MNIST image and 12 KB per CIFAR image), which is all a reader needs to
re-check the headline number with :func:`ancra.evaluation.verify.verify_report`.

Indices are positions in the evaluated tensors; the report's ``meta.first_example`` says which test
example position 0 is (chunks and shards of ``ancra eval`` start elsewhere), and
:func:`merge_adversarial` shifts them when shards are merged.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import atomic_save, safe_load
from ..errors import UserError
from .common import AttackResult

ADVERSARIAL = "adversarial.pt"
FORMAT = 1


class AdversarialStore:
    """One adversarial input per broken example (see the module docstring).

    Args:
        x, y: the evaluated inputs and labels.
        clean_correct: which examples the model gets right without attack (only those can be broken).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, clean_correct: torch.Tensor) -> None:
        self.x_adv = x.detach().clone()
        self.y = y
        self.clean_correct = clean_correct
        self.has = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        self.attack = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
        self.names: list[str] = []

    def add(self, r: AttackResult) -> int:
        """Keep the inputs of ``r`` that fool the model on examples no earlier attack broke;
        returns how many. Frees ``r.x_adv`` (only the store keeps inputs)."""
        if r.x_adv is None:
            return 0
        new = self.clean_correct & ~r.correct & ~self.has
        k = int(new.sum())
        if k:
            if r.name not in self.names:
                self.names.append(r.name)
            self.x_adv[new] = r.x_adv[new].to(self.x_adv.dtype)
            self.attack[new] = self.names.index(r.name)
            self.has |= new
        r.x_adv = None
        return k

    def state(self) -> dict:
        idx = self.has.nonzero().squeeze(1)
        return {
            "format": FORMAT,
            "index": idx.cpu(),
            "x_adv": self.x_adv[idx].detach().cpu().contiguous(),
            "label": self.y[idx].cpu(),
            "attack": self.attack[idx].cpu(),
            "attacks": list(self.names),
            "n_examples": len(self.x_adv),
        }

    def save(self, out_dir: Path) -> Path:
        path = Path(out_dir) / ADVERSARIAL
        atomic_save(self.state(), path)
        return path


def load_adversarial(path) -> dict:
    """Read an ``adversarial.pt`` (weights-only: tensors and builtins)."""
    path = Path(path)
    if path.is_dir():
        path = path / ADVERSARIAL
    adv = safe_load(path, what="file of saved adversarial inputs")
    if not isinstance(adv, dict) or adv.get("format") != FORMAT:
        raise UserError(f"{path} is not a file of saved adversarial inputs ({FORMAT})")
    return adv


def merge_adversarial(shard_dirs, out_dir) -> Path | None:
    """Concatenate the shards' ``adversarial.pt`` (disjoint example slices, in order) into
    ``out_dir``, shifting each shard's indices by the examples before it. Returns ``None`` (and
    writes nothing) when a shard has none: a merged report must not claim inputs it lacks."""
    parts = []
    for d in shard_dirs:
        p = Path(d) / ADVERSARIAL
        if not p.is_file():
            return None
        parts.append(load_adversarial(p))
    names: list[str] = []
    index, x_adv, label, attack = [], [], [], []
    offset = 0
    for part in parts:
        for n in part["attacks"]:
            if n not in names:
                names.append(n)
        codes = torch.tensor([names.index(n) for n in part["attacks"]], dtype=torch.long)
        index.append(part["index"] + offset)
        x_adv.append(part["x_adv"])
        label.append(part["label"])
        attack.append(codes[part["attack"]] if len(codes) else part["attack"])
        offset += int(part["n_examples"])
    state = {
        "format": FORMAT,
        "index": torch.cat(index),
        "x_adv": torch.cat(x_adv),
        "label": torch.cat(label),
        "attack": torch.cat(attack),
        "attacks": names,
        "n_examples": offset,
    }
    path = Path(out_dir) / ADVERSARIAL
    atomic_save(state, path)
    return path
