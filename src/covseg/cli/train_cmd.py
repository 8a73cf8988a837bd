"""``covseg train`` and ``covseg models``."""

from __future__ import annotations

from pathlib import Path

import typer


def train(
    config: str = typer.Option(..., "--config", "-c", help="YAML config file, or the name of a shipped config."),
    overrides: list[str] = typer.Argument(None, help="Overrides like train.epochs=3 model.params.base=16."),
    output: Path = typer.Option(None, "--output", "-o", help="Run folder (default runs/<name>[_fold<k>])."),
    fold: int = typer.Option(None, "--fold", help="Cross-validation fold to hold out (sets data.fold)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output from checkpoints/last.pt."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or epoch lines."),
    prompt_type: str = typer.Option(
        None, "--prompt-type", help="Train with this prompt type of CRIS-style prompts (P0..Pn; sets data.prompt)."
    ),
) -> None:
    """Train a model from a YAML config; the run folder is enough to predict later."""
    from rich.console import Console

    from covseg.api import train as run_train

    overrides = list(overrides or [])
    if prompt_type:
        overrides.append(f"data.prompt={prompt_type}")
    summary = run_train(config, output, overrides, fold=fold, resume=resume, quiet=quiet)
    Console(stderr=True, highlight=False).print(
        f"[bold green]done[/] best {summary['monitor']} {summary['best_metric']:.4f} at epoch "
        f"{summary['best_epoch'] + 1}; run folder {summary['run_dir']}"
    )


def list_models() -> None:
    """List everything registered: models, encoders, losses, trainers, inferers, input adapters, samplers, layouts."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from covseg.builtins import load_all
    from covseg.registry import REGISTRIES

    load_all()
    console = Console()
    for kind, registry in REGISTRIES.items():
        if not len(registry):
            continue
        table = Table(title=f"{kind}s")
        table.add_column("name")
        table.add_column("description")
        for name, desc in registry.describe().items():
            table.add_row(escape(name), escape(desc))
        console.print(table)
