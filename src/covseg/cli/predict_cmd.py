"""``covseg predict``: segment images or NIfTI volumes with a trained run folder."""

from __future__ import annotations

from pathlib import Path

import typer


def _window(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    from covseg.errors import CovsegError

    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise CovsegError(f"--window expects LOW,HIGH in HU, got {text!r}") from None
    return lo, hi


def predict(
    model: list[Path] = typer.Option(..., "--model", "-m", metavar="RUN_DIR", help="Run folder written by covseg train; repeat to average several (an ensemble)."),
    input: Path = typer.Option(..., "--input", "-i", help="Image/NIfTI file or a folder of them."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder (masks/, probs/, overlays/)."),
    checkpoint: str = typer.Option("best", help="best or last."),
    tta: bool = typer.Option(False, "--tta", help="Average with a horizontally flipped pass."),
    largest: int = typer.Option(0, help="Keep only the N largest components per class (0 = all)."),
    min_size: int = typer.Option(0, help="Drop components smaller than this many pixels/voxels."),
    window: str = typer.Option(None, help="HU window LOW,HIGH for NIfTI input (default -1250,250)."),
    text: str = typer.Option(None, "--text", help="Text prompt for text-guided models (all inputs)."),
    text_file: Path = typer.Option(None, "--text-file", help="Per-image text: CSV/xlsx/JSON mapping image → text."),
    missing_text: str = typer.Option("error", "--missing-text", help="error or image-only, for inputs without text."),
    prompt_type: str = typer.Option(None, "--prompt-type", help="Prompt type (P0..Pn) to take from a CRIS-style --text-file."),
    no_overlays: bool = typer.Option(False, "--no-overlays", help="Skip overlay PNGs."),
    batch_size: int = typer.Option(8, help="Slices per forward pass."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad input."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Predict masks, soft maps and overlays at each input's original size."""
    from covseg.api import predict as run_predict
    from covseg.cli._batch import finish, progress_bar
    from covseg.inference.predictor import list_inputs

    total = len(list_inputs(input))
    with progress_bar("predicting", total, quiet) as advance:
        report = run_predict(
            model,
            input,
            output,
            checkpoint=checkpoint,
            tta=tta,
            text=text,
            text_file=text_file,
            missing_text=missing_text,
            prompt_type=prompt_type,
            overlays=not no_overlays,
            largest=largest,
            min_size=min_size,
            window=_window(window),
            batch_size=batch_size,
            strict=strict,
            on_done=advance,
        )
    finish(report, output, f"{len(report.written)} predicted into {output}")
