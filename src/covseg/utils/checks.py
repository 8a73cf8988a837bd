"""Value checks shared by the config (``covseg.training.config``) and the run description
(``covseg.runs.description``): one wording for one rule, wherever a value is read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def positive_stds(v: list[float]) -> list[float]:
    """Normalisation standard deviations: at least one, each > 0."""
    if not v or any(not s > 0 for s in v):
        raise ValueError(f"every std must be > 0, got {v}")
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
