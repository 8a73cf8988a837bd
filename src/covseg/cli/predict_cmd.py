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
    if not lo < hi:  # also refuses NaN
        raise CovsegError(f"--window: LOW must be below HIGH, got {text!r}")
    return lo, hi


def _numbers(text: str | None, option: str, count: int | None = None, kind: type = float) -> tuple | None:
    if not text:
        return None
    from covseg.errors import CovsegError

    try:
        values = tuple(kind(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise CovsegError(f"{option} expects numbers separated by commas, got {text!r}") from None
    if not values or (count is not None and len(values) != count):
        raise CovsegError(f"{option} expects {count or 'some'} numbers separated by commas, got {text!r}")
    return values


def predict(
    model: list[str] = typer.Option(..., "--model", "-m", metavar="RUN_DIR|NAME", help="Run folder written by covseg train, or a shipped model's name (covseg models --pretrained; it wins over a local folder of that name: write ./NAME for the folder); repeat to average several (an ensemble); with --engine onnx|torchscript a folder written by covseg export."),
    input: Path = typer.Option(..., "--input", "-i", help="Image/NIfTI file or a folder of them."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder (masks/, probs/, overlays/)."),
    checkpoint: str = typer.Option("best", help="best or last."),
    tta: bool = typer.Option(False, "--tta", help="Average with a horizontally flipped pass (volume runs: left–right)."),
    tta_axes: str = typer.Option(None, "--tta-axes", help="Volume runs: flip these axes of the RAS grid (e.g. 0,1,2; every combination is averaged)."),
    stack_spacing: str = typer.Option(None, "--stack-spacing", help="Volume runs: spacing X,Y,Z mm of folders of slices NAME_<k> (default 1,1,1)."),
    largest: int = typer.Option(0, help="Keep only the N largest components per class (0 = all)."),
    min_size: int = typer.Option(0, help="Drop components smaller than this many pixels/voxels."),
    lungs_only: bool = typer.Option(False, "--lungs-only", help="CT volumes in HU: set everything outside the input's lung mask (covseg lungmask) to background, in masks and soft maps; 2D images are refused, a volume without lungs fails."),
    lung_margin: float = typer.Option(None, "--lung-margin", metavar="MM", help="With --lungs-only: keep predictions up to this many mm outside the lung mask, where dense lesions at the lung border lie (default 15; 0 = the mask itself)."),
    save_lung_mask: bool = typer.Option(False, "--save-lung-mask", help="With --lungs-only: write each volume's lung mask into lungs/."),
    window: str = typer.Option(None, help="HU window LOW,HIGH for CT input in HU (default: the lung window -1250,250, covseg.data.intensity.LUNG_WINDOW)."),
    text: str = typer.Option(None, "--text", help="Text prompt for text-guided models (all inputs)."),
    text_file: Path = typer.Option(None, "--text-file", help="Per-image text: CSV/xlsx/JSON mapping image → text."),
    missing_text: str = typer.Option("error", "--missing-text", help="error or image-only, for inputs without text."),
    prompt_type: str = typer.Option(None, "--prompt-type", help="Prompt type (P0..Pn) to take from a CRIS-style --text-file."),
    no_overlays: bool = typer.Option(False, "--no-overlays", help="Skip overlay PNGs (and --statistics' previews)."),
    statistics: bool = typer.Option(False, "--statistics", help="Per case statistics/<stem>.json and the batch's statistics.csv: per class volume (ml) or area (mm², else pixels), HU mean and 5/50/95th percentiles (HU input), share of each lung (CT volumes), components; a three-view previews/<stem>.png per volume."),
    no_probs: bool = typer.Option(False, "--no-probs", help="Skip the soft maps (probs/): masks only."),
    output_type: list[str] = typer.Option(["nifti"], "--output-type", help="nifti (masks/, always written), dicom-seg (dicom_seg/: a DICOM Segmentation, needs covseg[dicom]) or rtstruct (rtstruct/: an RT Structure Set) for DICOM series inputs; repeat for several."),
    batch_size: int = typer.Option(8, help="Slices per forward pass."),
    sw_batch_size: int = typer.Option(None, "--sw-batch-size", help="Windows per forward pass of a sliding-window model."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps."),
    amp: str = typer.Option("off", "--amp", help="Mixed precision: off, bf16 or fp16."),
    engine: str = typer.Option("torch", "--engine", help="torch (run folders), onnx or torchscript (covseg export folders)."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad input."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Predict masks, soft maps and overlays at each input's original size."""
    from covseg.api import predict as run_predict
    from covseg.cli._batch import finish, progress_bar, say_models
    from covseg.inference.inputs import list_inputs
    from covseg.inference.options import PredictOptions
    from covseg.utils.processes import torchrun_env

    options = PredictOptions(
        checkpoint=checkpoint, engine=engine, device=device, amp=amp, tta=tta, tta_axes=_numbers(tta_axes, "--tta-axes", kind=int),
        text=text, text_file=text_file, missing_text=missing_text, prompt_type=prompt_type, largest=largest, min_size=min_size,
        lungs_only=lungs_only, lung_margin_mm=lung_margin, save_lung_mask=save_lung_mask, window=_window(window),
        stack_spacing=_numbers(stack_spacing, "--stack-spacing", 3), batch_size=batch_size, sw_batch_size=sw_batch_size,
        overlays=not no_overlays, probs=not no_probs, statistics=statistics, output_types=output_type, strict=strict,
    ).checked()  # fmt: skip
    rank, world, _ = torchrun_env()
    if engine == "torch":
        say_models(model, quiet or rank > 0)
    total = len(list_inputs(input))
    with progress_bar("predicting", -(-total // world), quiet or rank > 0) as advance:
        report = run_predict(model, input, output, options, on_done=advance)
    finish(report, output, f"{len(report.written)} predicted into {output}", quiet_rank=rank > 0)
