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
    pretrained: bool = typer.Option(False, "--pretrained", help="Skip training: predict real example images (from COVSEG_DATA) with a shipped model."),
    model: str = typer.Option("covid-ct-infection", "--model", "-m", help="The shipped model for --pretrained (covseg models --pretrained)."),
    cases: int = typer.Option(8, "--cases", help="Example images for --pretrained."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train a small U-Net, predict held-out cases, evaluate both protocols and write report.html.

    Without --data it makes a deterministic synthetic chest-CT phantom set (lungs, vessels,
    ground-glass and consolidation lesions with masks), so it needs no download. With --pretrained
    it trains nothing: a shipped model predicts real example images held out of its training, in
    seconds (the datasets are not bundled: they are read from COVSEG_DATA, and one line says so when
    they are absent).
    """
    if pretrained:
        from covseg.cli._batch import check_options
        from covseg.demo import run_pretrained_demo

        check_options(cases=(cases >= 1, f"{cases} must be at least 1"))
        run_pretrained_demo(output=output, model=model, cases=cases, quiet=quiet)
        return
    from covseg.cli._batch import check_options
    from covseg.demo import run_demo

    check_options(
        epochs=(epochs is None or epochs >= 1, f"{epochs} must be at least 1"),
        size=(size is None or 32 <= size <= 1024, f"{size} must lie in 32..1024"),
    )
    run_demo(output=output, data=data, epochs=epochs, size=size, seed=seed, quiet=quiet)
