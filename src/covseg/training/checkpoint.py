"""Checkpoints: model name + init args + weights (enough to rebuild), plus optimiser state to resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from covseg.errors import CovsegError
from covseg.utils.atomic import write_with


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Save atomically: a kill during the write leaves the previous checkpoint intact."""
    import torch

    return write_with(path, lambda p: torch.save(payload, p))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU, with a one-line error if it is missing or corrupt."""
    import torch

    path = Path(path)
    if not path.exists():
        raise CovsegError("checkpoint not found", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CovsegError(f"unreadable checkpoint ({type(exc).__name__})", path) from None


def model_from_checkpoint(ckpt: dict[str, Any], key: str = "model"):
    """Rebuild a registered model from a checkpoint's name, init args and weights."""
    from covseg.models.registry import build_model

    spec = ckpt[f"{key}_spec"] if f"{key}_spec" in ckpt else ckpt["model_spec"]
    model = build_model(spec["name"], **spec["init_args"])
    model.load_state_dict(ckpt[f"{key}_state"])
    model.eval()
    return model
