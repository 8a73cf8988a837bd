"""Model registry: ``build_model("unet", in_channels=1, out_channels=1)``."""

from __future__ import annotations

from typing import Any

from covseg.registry import Registry

MODELS: Registry = Registry("model")


def build_model(name: str, **kwargs: Any):
    """Build a registered model by name (importing the model modules on first use)."""
    import covseg.models  # noqa: F401  (registers the built-in models)

    return MODELS.build(name, **kwargs)
