"""``covseg evaluate``: score predicted masks against ground truth."""

from __future__ import annotations

from pathlib import Path

import typer


def evaluate(
    pred: Path = typer.Option(..., "--pred", help="Folder of predicted masks or soft maps."),
    gt: Path = typer.Option(..., "--gt", help="Folder of ground-truth masks (or a dataset folder)."),
) -> None:
    """Evaluate predictions against ground truth (medical or sod protocol)."""
    raise NotImplementedError
