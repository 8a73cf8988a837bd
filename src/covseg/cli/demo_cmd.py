"""``covseg demo``: generate (or read) data, train, predict, evaluate and report in one go."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    output: Path = typer.Option(Path("covseg_demo"), "--output", "-o", help="Folder for data, run, predictions and report."),
    data: Path = typer.Option(None, "--data", help="A real dataset folder instead of the synthetic phantoms."),
    epochs: int = typer.Option(None, help="Training epochs (default: about a minute on 2 CPU cores)."),
    size: int = typer.Option(None, help="Network input size (default 128 for phantoms, 192 for real data)."),
    seed: int = typer.Option(0, help="Seed for data generation and training."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train a small U-Net, predict held-out cases, evaluate both protocols and write report.html.

    Without --data it makes a deterministic synthetic chest-CT phantom set (lungs, vessels,
    ground-glass and consolidation lesions with masks), so it needs no download.
    """
    from covseg.demo import run_demo

    run_demo(output=output, data=data, epochs=epochs, size=size, seed=seed, quiet=quiet)
