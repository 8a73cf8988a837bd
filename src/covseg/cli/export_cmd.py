"""``covseg export``: a run folder as one self-contained ONNX or TorchScript file with a model card."""

from __future__ import annotations

from pathlib import Path

import typer


def export(
    model: Path = typer.Option(..., "--model", "-m", metavar="RUN_DIR|NAME", help="Run folder written by covseg train, or a shipped model's name (covseg models --pretrained)."),
    format: str = typer.Option("onnx", "--format", "-f", help="onnx or torchscript."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the model file and model_card.json."),
    checkpoint: str = typer.Option("best", help="best or last."),
) -> None:
    """Export a trained model; run it with ``covseg predict --engine onnx|torchscript --model OUTPUT``."""
    from rich.console import Console

    from covseg.inference.exported import export_run

    path = export_run(model, format, output, checkpoint)
    Console(stderr=True, highlight=False).print(f"[bold green]exported[/] {path} (+ model_card.json)", soft_wrap=True)
