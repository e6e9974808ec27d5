"""Views of an RA model with a chosen gate: the gradient sources of the adaptive suite.

docs/METHOD.md, "Reverse Attention": each RA block computes ``aux = fc(pool(z))`` and continues with
``z * W[argmax aux]``. The argmax has no gradient, so the final logits' gradient never "sees" that
moving ``aux`` flips the mask: the shattered-gradient pattern of docs/EVALUATION.md. :class:`RAView`
re-runs the model's own modules (``stem``, the plain blocks of ``final_stage``, the RA blocks,
``post_activation``, ``pool``, ``classifier``) with the gate replaced, without editing the model:

========  =========================================================================================
gate      mask used by every RA block
========  =========================================================================================
hard      ``W[argmax aux]``: the real model (forward and gradient identical to ``model(x)``)
bpda      straight-through / BPDA (A2): forward ``W[argmax aux]``, backward through
          ``softmax(aux / T) @ W``
soft      soft surrogate (A3): ``softmax(aux / T) @ W`` forward and backward
fixed     ``W[t]`` for a class ``t``, one for the batch or one per example (A4 branch enumeration:
          a target per example; A5 true-label masks: ``t = y``). A5 leaks the label: gradient
          source only, never reported as a classifier.
off       no mask at all: the RA-removed twin (A6 source, A7 ablation); its final logits are the
          last block's aux head computed on unmasked features
========  =========================================================================================

``output`` selects what ``forward`` returns: ``final`` logits, ``aux<i>`` (aux head ``i`` as a
standalone classifier, A1), ``poe`` (the product of experts ``sum_h log_softmax(head_h)`` over the
final and every aux head, whose CE is ``sum_h CE(head_h)`` up to a normaliser: lets the reference
APGD attack ``CE(a1)+CE(a2)+CE(f)``, A1), or use :meth:`RAView.heads` for every head at once.

Bookkeeping on the deployed model (``deployed_values=True``): the reference APGD, APGD-T and
Square decide everything from the output they attack (which examples to attack, success, which
iterate to keep, when to stop, which classes to target). Run on a surrogate, they would keep the
last point that fooled the surrogate and skip examples the surrogate already gets wrong. With
``deployed_values`` the view returns ``s + (model(x) - s).detach()``: the deployed model's values
with the surrogate's gradient, so every such decision is about the model being evaluated. (For the
hard gate the deployed logits come from the same forward; other gates pay one no-grad forward.)
:class:`DeployedValues` does the same for any other gradient source (a transfer model).

Exactness: for ``hard`` and ``bpda`` the final output is forced to equal ``model(x)`` in the forward
pass (``out + (model(x) - out).detach()``) whenever the re-run differs, so a subclass that changes
its head (e.g. the argmax-gated toy of the tests) is still judged and attacked on its real output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.ra import RANet

GATES = ("hard", "bpda", "soft", "fixed", "off")


class RAView(nn.Module):
    """Re-run an :class:`~ancra.models.ra.RANet` with a chosen gate (see module docstring).

    Args:
        model: the RA model (kept as a submodule; its parameters are shared, never copied).
        gate: one of :data:`GATES`.
        temperature: ``T`` of the soft gate (``bpda``/``soft``).
        fixed_class: the class ``t`` of the ``fixed`` gate: an int, or a ``(B,)`` tensor with one class
            per example of the batches this view will see.
        output: ``final``, ``aux<i>``, ``last_aux`` or ``poe``.
        deployed_values: return the deployed model's values with this view's gradient (see the
            module docstring).
    """

    def __init__(
        self,
        model: nn.Module,
        gate: str = "hard",
        *,
        temperature: float = 1.0,
        fixed_class: int | torch.Tensor | None = None,
        output: str = "final",
        deployed_values: bool = False,
    ) -> None:
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"unknown gate {gate!r}: choose one of {GATES}")
        if gate == "fixed" and fixed_class is None:
            raise ValueError("gate='fixed' needs fixed_class")
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.model = model
        self.gate = gate
        self.temperature = float(temperature)
        self.fixed_class = fixed_class
        self.output = output
        self.deployed_values = bool(deployed_values)
        self._exact_checked = False
        self._needs_exact = False
        # A fresh module is in training mode, and attack_mode() restores a wrapper's mode on exit,
        # which would cascade train() into the real model (batch-statistics BN): mirror its mode.
        self.training = model.training

    def extra_repr(self) -> str:
        t = self.fixed_class if not torch.is_tensor(self.fixed_class) else "per example"
        return (
            f"gate={self.gate}, T={self.temperature}, fixed_class={t}, output={self.output}, "
            f"deployed_values={self.deployed_values}"
        )

    # ------------------------------------------------------------------------------------------
    def _mask(self, aux: torch.Tensor, w: torch.Tensor) -> torch.Tensor | None:
        """Classifier-row mask (B, D) for one RA block from its aux logits (None: no mask)."""
        if self.gate == "off":
            return None
        if self.gate == "hard":
            return w[aux.argmax(1)]
        if self.gate == "fixed":
            if torch.is_tensor(self.fixed_class):
                if len(self.fixed_class) != aux.shape[0]:
                    raise ValueError("per-example fixed_class must have one class per example of the batch")
                return w[self.fixed_class]
            return w[self.fixed_class].expand(aux.shape[0], -1)
        soft = F.softmax(aux / self.temperature, dim=1) @ w
        if self.gate == "soft":
            return soft
        # bpda: value of the hard mask, gradient of the soft one
        return w[aux.argmax(1)] + (soft - soft.detach())

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Final logits and the list of aux logits (one per RA block) under this view's gate.

        Runs :meth:`RANet.forward_with_aux` of the base class (not a subclass override) with this
        view's gate as its ``mask_fn``."""
        out = RANet.forward_with_aux(self.model, x, mask_fn=None if self.model.ra_blocks == 0 else self._mask)
        final = out.logits
        if self.model.ra_blocks and self.gate in ("hard", "bpda"):
            final = self._exact(x, final)
        return final, out.aux_logits

    def _exact(self, x: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
        """Force the forward value to ``model(x)`` when the model's own forward differs."""
        if not self._exact_checked or self._needs_exact:
            with torch.no_grad():
                real = self.model(x)
            if not self._exact_checked:
                self._exact_checked = True
                self._needs_exact = not torch.allclose(real, final.detach(), rtol=1e-4, atol=1e-4)
            if self._needs_exact:
                return final + (real - final).detach()
        return final

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        final, aux = self.heads(x)
        out = self._select(final, aux)
        if not self.deployed_values:
            return out
        if self.gate == "hard" and self.model.ra_blocks:
            deployed = final.detach()  # the hard-gated final head is the deployed model (exact)
        else:
            with torch.no_grad():
                deployed = self.model(x)
        return out + (deployed - out).detach()

    def _select(self, final: torch.Tensor, aux: list[torch.Tensor]) -> torch.Tensor:
        out = self.output
        if out == "final":
            return final
        if out == "poe":
            return torch.stack([F.log_softmax(h, 1) for h in [final, *aux]]).sum(0)
        if out == "last_aux":
            return aux[-1]
        if out.startswith("aux"):
            return aux[int(out[3:])]
        raise ValueError(f"unknown output {out!r}")


class DeployedValues(nn.Module):
    """``source(x) + (deployed(x) - source(x)).detach()``: the deployed model's values with the
    gradient of another network (a transfer source), so that the reference attacks' bookkeeping
    is about the deployed model (see the module docstring)."""

    def __init__(self, source: nn.Module, deployed: nn.Module) -> None:
        super().__init__()
        self.source = source
        self.deployed = deployed
        self.training = deployed.training  # see RAView: never cascade train() into the models

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.source(x)
        with torch.no_grad():
            d = self.deployed(x)
        return s + (d - s).detach()


def gates_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Hard gate classes ``(B, ra_blocks)`` chosen by each RA block of the real model on ``x``."""
    with torch.no_grad():
        _, aux = RAView(model, "hard").heads(x)
    return torch.stack([a.argmax(1) for a in aux], 1)
