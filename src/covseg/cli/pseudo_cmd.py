"""``covseg pseudo-label``: masks, edges and confidences for unlabelled images."""

from __future__ import annotations

from pathlib import Path

import typer


def pseudo_label(
    model: list[str] = typer.Option(..., "--model", "-m", metavar="RUN_DIR|NAME", help="Run folder written by covseg train, or a shipped model's name (./NAME for a local folder of that name); repeat to average several (an ensemble)."),
    input: Path = typer.Option(..., "--input", "-i", help="Folder of unlabelled images."),
    output: Path = typer.Option(..., "--output", "-o", help="Output dataset folder (images/ masks/ edges/ confidence.csv)."),
    checkpoint: str = typer.Option("best", help="best or last."),
    tta: bool = typer.Option(False, "--tta", help="Average with a horizontally flipped pass."),
    edge_width: int = typer.Option(1, help="Edge thickness in pixels for the derived edge maps."),
    text: str = typer.Option(None, "--text", help="Text prompt for text-guided models (all inputs)."),
    text_file: Path = typer.Option(None, "--text-file", help="Per-image text: CSV/xlsx/JSON mapping image → text."),
    missing_text: str = typer.Option("error", "--missing-text", help="error or image-only, for inputs without text."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad input."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Pseudo-label unlabelled images so a trainer can use them as a second source."""
    from covseg.api import pseudo_label as run_pseudo_label
    from covseg.cli._batch import check_options, finish, progress_bar, say_models
    from covseg.inference.predictor import list_inputs

    check_options(edge_width=(edge_width >= 1, f"{edge_width} must be at least 1"))
    say_models(model, quiet)
    with progress_bar("pseudo-labelling", len(list_inputs(input)), quiet) as advance:
        report = run_pseudo_label(
            model, input, output, checkpoint=checkpoint, tta=tta, edge_width=edge_width, text=text, text_file=text_file,
            missing_text=missing_text, device=device, strict=strict, on_done=advance,
        )  # fmt: skip
    conf = sum(r["confidence"] for r in report.written) / max(1, len(report.written))
    finish(report, output, f"{len(report.written)} pseudo-labelled into {output} (mean confidence {conf:.3f})")
