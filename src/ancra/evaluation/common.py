"""Shared pieces of the evaluation: per-example results, batching, seeding, progress lines.

Every attack of every suite (docs/EVALUATION.md) produces an :class:`AttackResult` whose
core is a per-example boolean tensor ``robust`` of shape ``(N,)``. Accuracies are derived from
these tensors only (as fp32 means), and so is the per-example worst case: keeping the booleans
(rather than accuracies) is what lets shards of a multi-process evaluation be concatenated and
summarised exactly as a single-process run would be (see :func:`ancra.evaluation.report.merge_reports`).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ..attacks import attack_mode

#: kinds of attacks, used by the sanity checks (docs/EVALUATION.md, "Sanity checks") to compare families:
#: ``whitebox`` uses the real model's own gradients (or an exact-forward BPDA wrapper of it),
#: ``surrogate`` takes gradients from a modified copy of the same weights (aux heads, soft or
#: fixed gates) and judges the examples on the real model, ``transfer`` takes them from another
#: network, ``blackbox`` only queries the model (Square).
KINDS = ("clean", "whitebox", "surrogate", "transfer", "blackbox")


@dataclass
class AttackResult:
    """Outcome of one attack on ``N`` examples.

    Attributes:
        name: short unique name (``pgd-20``, ``a2-bpda-apgd-T0.5``...).
        robust: ``(N,)`` bool, the example is correctly classified by the real model on the clean
            input AND on the adversarial input (AutoAttack's convention: a misclassified clean
            example is never robust). For attacks run as a cascade (the adaptive suite only
            attacks examples that survived every earlier attack) ``robust`` is False for the
            examples already broken before it ran, so it equals the cumulative worst case.
        correct: ``(N,)`` bool, the prediction on the adversarial input equals the label, without
            the AND with the clean prediction. Used by the "PGD accuracy <= clean accuracy" sanity
            check (an attack that *repairs* misclassified inputs is a masking sign). For cascade
            attacks it means "not fooled by this attack" (True for the rows it did not attack).
        seconds: wall-clock time of the attack.
        group: ``standard``, ``adaptive``, ``ablation`` (A7, never in the worst case) or ``sanity``.
        kind: one of :data:`KINDS`.
        in_worst_case: whether the attack counts in ``worst_case_acc``.
        cascade: whether it only attacked the examples that survived the earlier attacks.
        info: JSON-serialisable details (parameters, AutoAttack log flags, counts...).
        x_adv: adversarial inputs (not saved; used to keep one successful example per input for
            the A8 diagnostics). ``None`` when the attack does not produce inputs.
    """

    name: str
    robust: torch.Tensor
    correct: torch.Tensor
    seconds: float = 0.0
    group: str = "standard"
    kind: str = "whitebox"
    in_worst_case: bool = True
    cascade: bool = False
    info: dict = field(default_factory=dict)
    x_adv: torch.Tensor | None = field(default=None, repr=False)

    @property
    def acc(self) -> float:
        return acc(self.robust)

    def meta(self) -> dict:
        """Everything but the tensors, for ``report.json`` and ``per_example.pt``."""
        return {
            "group": self.group,
            "kind": self.kind,
            "in_worst_case": self.in_worst_case,
            "cascade": self.cascade,
            "seconds": round(self.seconds, 3),
            "info": self.info,
        }


def acc(mask: torch.Tensor) -> float:
    """Mean of a boolean tensor in fp32 (0.0 for an empty tensor)."""
    if mask.numel() == 0:
        return 0.0
    return float(mask.float().mean().item())


def worst_case(pe: dict[str, torch.Tensor], attacks: dict[str, dict]) -> torch.Tensor:
    """Per-example robustness under every attack that counts in the worst case (``in_worst_case``
    in its metadata): the minimum over them, or clean correctness when there is none."""
    keys = [f"robust/{k}" for k, m in attacks.items() if m.get("in_worst_case")]
    return torch.stack([pe[k] for k in keys]).all(0) if keys else pe["clean"]


def tolerance(n: int) -> float:
    """Accuracy difference treated as noise by the sanity checks: 0.5 pt (docs/EVALUATION.md, "Sanity checks")
    or one example, whichever is larger (on a 64-example subset one example is 1.6 pt)."""
    return max(0.005, 1.0 / max(n, 1)) + 1e-9


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@torch.no_grad()
def predict(model: nn.Module | Callable, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Predicted classes ``(N,)`` of ``model`` in eval mode, in batches."""
    if isinstance(model, nn.Module):
        with attack_mode(model):
            return torch.cat([model(x[s]).argmax(1) for s in batches(len(x), batch_size)])
    return torch.cat([model(x[s]).argmax(1) for s in batches(len(x), batch_size)])


def generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator seeded with ``seed`` on ``device`` (random starts of our PGD)."""
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


def is_ra_model(model: nn.Module) -> bool:
    """True for an :class:`~ancra.models.ra.RANet` with at least one Reverse-Attention block:
    those get the adaptive attacks A1-A5 and A7-A8 (docs/EVALUATION.md, "Adaptive attacks")."""
    from ..models.ra import RANet

    return isinstance(model, RANet) and int(getattr(model, "ra_blocks", 0)) > 0


class EvalLog:
    """One line per attack on stderr: ``[eval] pgd-20: acc 41.25% (cumulative 39.1%) 12.3 s``."""

    def __init__(self, enabled: bool = True, stream=None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.t0 = time.time()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[eval {time.time() - self.t0:7.1f}s] {msg}", file=self.stream, flush=True)


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


class GradPath(nn.Module):
    """``model(x) + 0 * sum(x)``: the same values, but an all-zero input gradient instead of an
    autograd error when the model's output has no autograd path to its input (a fully
    non-differentiable defence, e.g. logits built from an argmax). Gradient attacks then fail
    honestly (zero gradients, flagged by the sanity checks) instead of crashing the evaluation."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training  # see RAView: never cascade train() into the model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out + 0.0 * x.flatten(1).sum(1, keepdim=True)


def with_grad_path(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, bool]:
    """``(model, False)`` when ``model(x)`` is differentiable w.r.t. ``x``, else
    ``(GradPath(model), True)``."""
    with attack_mode(model), torch.enable_grad():
        out = model(x[:2].detach().clone().requires_grad_(True))
    if out.requires_grad:
        return model, False
    return GradPath(model), True


@contextlib.contextmanager
def frozen(*modules: nn.Module | None):
    """:func:`ancra.attacks.attack_mode` (eval BN, frozen parameters) for several modules."""
    with contextlib.ExitStack() as stack:
        for m in modules:
            if isinstance(m, nn.Module):
                stack.enter_context(attack_mode(m))
        yield


@contextlib.contextmanager
def fp32_math(device):
    """Evaluate in true fp32: on CUDA, TF32 off for matmuls and cuDNN convolutions (they round
    inputs to 10 mantissa bits, enough to move a decision at the boundary an attack just crossed);
    restored on exit. Nothing to change on the CPU."""
    if torch.device(device).type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
