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
) -> None:
    """Train a model from a YAML config; the run folder is enough to predict later."""
    from rich.console import Console

    from covseg.training.config import load_config
    from covseg.training.trainer import build_trainer

    extra = list(overrides or [])
    if fold is not None:
        extra.append(f"data.fold={fold}")
    if resume and output is not None and (output / "config.yaml").exists() and not extra:
        cfg = load_config(output / "config.yaml")
    else:
        cfg = load_config(config, extra)
    if output is None:
        suffix = f"_fold{cfg.data.fold}" if not cfg.data.val_root else ""
        output = Path("runs") / f"{cfg.name}{suffix}"
    summary = build_trainer(cfg, output, resume=resume, quiet=quiet).fit()
    Console(stderr=True, highlight=False).print(
        f"[bold green]done[/] best {summary['monitor']} {summary['best_metric']:.4f} at epoch {summary['best_epoch'] + 1}; run folder {output}"
    )


def list_models() -> None:
    """List the registered models and losses."""
    from rich.console import Console
    from rich.table import Table

    from covseg.losses import LOSSES
    from covseg.models.registry import MODELS, build_model

    build_model  # noqa: B018  (importing registers the models)
    import covseg.models  # noqa: F401

    table = Table(title="models")
    table.add_column("name")
    table.add_column("description")
    for name, desc in MODELS.describe().items():
        table.add_row(name, desc)
    losses = Table(title="losses")
    losses.add_column("name")
    losses.add_column("description")
    for name, desc in LOSSES.describe().items():
        losses.add_row(name, desc)
    console = Console()
    console.print(table)
    console.print(losses)
