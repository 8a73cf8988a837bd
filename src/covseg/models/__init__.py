"""Segmentation models, registered by name in :data:`covseg.registry.MODELS`.

Built-ins (listed in :mod:`covseg.builtins`): ``unet``, ``unet_multiclass``, ``resunet``, ``infnet``,
and the text-guided ``lvit``, ``c2fvl``, ``clipseg``. Encoders are in :data:`covseg.registry.ENCODERS`.
"""

from __future__ import annotations

from typing import Any

from covseg.models.base import SegmentationModel
from covseg.models.encoders import build_encoder
from covseg.registry import ENCODERS, MODELS


def build_model(name: str, **kwargs: Any):
    """Build a registered model by name (``UnknownName``, a ``ConfigError``, for an unknown one)."""
    return MODELS.build(name, **kwargs)


def is_text_model(name: str) -> bool:
    """Whether the registered model ``name`` reads text (a ``TextSegmentationModel``)."""
    from covseg.models.text_layers import TextSegmentationModel

    factory = MODELS.get(name)
    return isinstance(factory, type) and issubclass(factory, TextSegmentationModel)


__all__ = ["ENCODERS", "MODELS", "SegmentationModel", "build_encoder", "build_model", "is_text_model"]
