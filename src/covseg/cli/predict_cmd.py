"""``covseg predict``."""

from __future__ import annotations


def predict() -> None:
    """Predict masks with a trained run folder."""
