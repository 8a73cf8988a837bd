"""Loss registry: ``build_loss("dice_bce")`` returns a module ``loss(logits, target) -> scalar``."""

from __future__ import annotations

from typing import Any

from torch import nn

from covseg.registry import Registry

LOSSES: Registry = Registry("loss")


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered elementary loss by name."""
    import covseg.losses  # noqa: F401  (registers the built-in losses)

    return LOSSES.build(name, **kwargs)
