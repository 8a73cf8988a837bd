"""``covseg export``: a run folder as one self-contained ONNX or TorchScript file with a model card, or a MONAI bundle."""

from __future__ import annotations

from pathlib import Path

import typer


def export(
    model: Path = typer.Option(..., "--model", "-m", metavar="RUN_DIR|NAME", help="Run folder written by covseg train, or a shipped model's name (covseg models --pretrained)."),
    format: str = typer.Option("onnx", "--format", "-f", help="onnx, torchscript, or bundle (a MONAI bundle folder: configs/, models/model.ts, docs/)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the model file and model_card.json (or the bundle)."),
    checkpoint: str = typer.Option("best", help="best or last."),
    prompt: list[str] = typer.Option([], "--prompt", help="Text-guided runs: a prompt the exported model will be asked with (repeat); its text features are computed now and written beside the model."),
) -> None:
    """Export a trained model; run it with ``covseg predict --engine onnx|torchscript --model OUTPUT``."""
    from rich.console import Console

    from covseg.api import export as export_run  # writes through the output guard
    from covseg.inference.options import ExportOptions

    path = export_run(model, output, ExportOptions(format=format, checkpoint=checkpoint, prompts=prompt))
    what = "(a MONAI bundle)" if format == "bundle" else "(+ model_card.json)"
    Console(stderr=True, highlight=False).print(f"[bold green]exported[/] {path} {what}", soft_wrap=True)
