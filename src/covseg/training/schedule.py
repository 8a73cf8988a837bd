"""Learning-rate schedules as per-iteration multipliers (poly, cosine, constant) with linear warm-up.

Each schedule is an entry of :data:`covseg.registry.SCHEDULES`: ``shape(t, power) -> factor`` for
the fraction ``t`` in [0, 1] of the run after warm-up; ``schedule.name`` in the config picks one.
"""

from __future__ import annotations

import math

from covseg.registry import SCHEDULES


@SCHEDULES.register("poly")
def poly(t: float, power: float) -> float:
    """(1 - t) ** power (nnU-Net's schedule)."""
    return (1.0 - t) ** power


@SCHEDULES.register("cosine")
def cosine(t: float, power: float) -> float:
    """Half a cosine from 1 to 0."""
    return 0.5 * (1.0 + math.cos(math.pi * t))


@SCHEDULES.register("constant")
def constant(t: float, power: float) -> float:
    """1 throughout (after warm-up)."""
    return 1.0


def lr_factor(name: str, step: int, total: int, warmup: int = 0, power: float = 0.9, min_factor: float = 0.0) -> float:
    """Multiplier of the base learning rate at iteration ``step`` of ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}")
    f = SCHEDULES.get(name)(t, power)
    return min_factor + (1.0 - min_factor) * f
