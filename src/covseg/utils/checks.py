"""Value checks shared by the config (``covseg.training.config``) and the run description
(``covseg.runs.description``): one wording for one rule, wherever a value is read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def positive_stds(v: list[float]) -> list[float]:
    """Normalisation standard deviations: at least one, each > 0 and finite (NaN or infinity would
    turn every input into NaN or zeros: empty masks reported as success)."""
    if not v or any(not 0 < s < float("inf") for s in v):
        raise ValueError(f"every std must be > 0 and finite, got {v}")
    return v


def finite_means(v: list[float]) -> list[float]:
    """Normalisation means: finite numbers (a NaN mean makes every input NaN)."""
    if any(not -float("inf") < m < float("inf") for m in v):
        raise ValueError(f"every mean must be a finite number, got {v}")
    return v


def ordered_window(v: Any) -> Any:
    """An intensity window ``(low, high)`` with low < high (None, or a non-tuple such as "auto", passes)."""
    if isinstance(v, Sequence) and not isinstance(v, str) and not v[0] < v[1]:
        raise ValueError(f"window needs low < high, got {list(v)}")
    return v


def positive_spacing(v: Any) -> Any:
    """A voxel spacing whose every value is > 0 (None, or a non-tuple such as "auto", passes)."""
    if isinstance(v, Sequence) and not isinstance(v, str) and any(not s > 0 for s in v):
        raise ValueError(f"spacing must be positive, got {list(v)}")
    return v


def max_parallel() -> int:
    """The most worker processes or threads a setting may ask for on this machine: its CPU count
    (at least 4). More cannot run faster, and an unbounded value (``workers=100000``) forks until the
    machine gives up."""
    import os

    return max(4, os.cpu_count() or 1)


def bounded_parallel(v: int | None, what: str = "workers") -> int | None:
    """A worker or thread count in ``0..max_parallel()`` (None passes: the default)."""
    import os

    if v is not None and not 0 <= v <= max_parallel():
        raise ValueError(f"{what} must lie in 0..{max_parallel()} (this machine has {os.cpu_count()} CPUs), got {v}"
                         if v >= 0 else f"{what} must be 0 or more, got {v}")  # fmt: skip
    return v
