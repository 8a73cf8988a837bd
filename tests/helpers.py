"""Small builders shared by tests: phantom datasets and tiny training configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from covseg.data.synthetic import write_phantom_dataset


def phantom_dataset(root: Path, n: int = 20, size: int = 64, seed: int = 0) -> Path:
    """A phantom dataset in the generic folder layout (cached per path)."""
    if not (root / "images").exists():
        write_phantom_dataset(root, n=n, size=size, seed=seed)
    return root


def tiny_config(data_root: Path, size: int = 64, epochs: int = 2, **over: Any) -> dict[str, Any]:
    """A raw config dict for a fast CPU run of a small U-Net on phantoms."""
    cfg: dict[str, Any] = {
        "name": "tiny",
        "data": {"root": str(data_root), "folds": 4, "fold": 0},
        "preprocess": {"size": [size, size]},
        "model": {"name": "unet", "params": {"base_width": 8, "depth": 3}},
        "loss": {"main": "dice_bce"},
        "optim": {"lr": 3e-3},
        "train": {"epochs": epochs, "batch_size": 4, "threads": 1},
    }
    for key, value in over.items():
        node = cfg
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg
