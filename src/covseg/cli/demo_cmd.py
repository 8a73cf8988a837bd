"""``covseg demo``."""

from __future__ import annotations


def demo() -> None:
    """Train, predict and evaluate on a synthetic phantom set."""
