"""``covseg train``."""

from __future__ import annotations


def train() -> None:
    """Train a model from a YAML config."""


def list_models() -> None:
    """List registered models."""
