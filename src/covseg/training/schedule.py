"""Learning-rate schedules as per-iteration multipliers (poly, cosine, constant) with linear warm-up."""

from __future__ import annotations

import math


def lr_factor(name: str, step: int, total: int, warmup: int = 0, power: float = 0.9, min_factor: float = 0.0) -> float:
    """Multiplier of the base learning rate at iteration ``step`` of ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    if name == "poly":
        f = (1.0 - t) ** power
    elif name == "cosine":
        f = 0.5 * (1.0 + math.cos(math.pi * t))
    elif name == "constant":
        f = 1.0
    else:
        raise ValueError(f"unknown schedule {name!r}")
    return min_factor + (1.0 - min_factor) * f
