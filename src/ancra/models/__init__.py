"""Model registry: ``create_model(name, num_classes, in_channels=3, ra_blocks=2, **kw)``.

Every model is an :class:`~ancra.models.ra.RANet`: ``model(x)`` gives logits (predicted-label RA),
``model.forward_with_aux(x, labels)`` the training outputs. ``ra_blocks=0`` is the plain network.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UserError
from .preact_resnet import preactresnet18
from .ra import RANet, RAOutput
from .resnet import narrow_resnet, resnet18, resnet34
from .wideresnet import wrn28_10, wrn34_10

MODELS: dict[str, Callable[..., RANet]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "preactresnet18": preactresnet18,
    "wrn28_10": wrn28_10,
    "wrn34_10": wrn34_10,
    "narrow_resnet": narrow_resnet,
}


def create_model(name: str, num_classes: int, in_channels: int = 3, ra_blocks: int = 2, **kw) -> RANet:
    """Build a registered model; unknown names and bad arguments raise :class:`UserError`."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}: choose one of {', '.join(sorted(MODELS))}")
    try:
        model = MODELS[name](num_classes=num_classes, in_channels=in_channels, ra_blocks=ra_blocks, **kw)
    except (TypeError, ValueError) as e:
        raise UserError(f"model {name!r}: {e}") from None
    # Remember how the model was built so checkpoints can rebuild it (ancra.checkpoint).
    model.spec = {"name": name, "num_classes": num_classes, "in_channels": in_channels, "ra_blocks": ra_blocks, **kw}
    return model


__all__ = ["MODELS", "RANet", "RAOutput", "create_model"]
