"""``covseg explain``: Grad-CAM and attention maps of a joint classification + segmentation run."""

from __future__ import annotations

from pathlib import Path

import typer


def explain(
    model: str = typer.Option(..., "--model", "-m", metavar="RUN_DIR", help="Run folder of a joint model (jcs, or a model with a classification head)."),
    input: Path = typer.Option(..., "--input", "-i", help="2D image file or a folder of them."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder (panels/, heatmaps/, explanations.csv, summary.json)."),
    gt: Path = typer.Option(None, "--gt", help="Ground-truth masks (folder, or dataset folder with masks/) to score the heatmaps against."),
    checkpoint: str = typer.Option("best", help="best or last."),
    layer: str = typer.Option(None, "--layer", help="Grad-CAM layer, a module name (default: the model's; head_input = the feature the classifier reads)."),
    target_class: int = typer.Option(None, "--target-class", help="Class index Grad-CAM explains (default: the most probable infection class)."),
    tolerance: float = typer.Option(0.0, "--tolerance", help="Pointing game: a peak within this many pixels of the lesion is a hit."),
    tta: bool = typer.Option(False, "--tta", help="Predict with a horizontally flipped pass too (Grad-CAM uses the plain pass)."),
    no_panels: bool = typer.Option(False, "--no-panels", help="Skip the panel PNGs."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad input."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Explain a joint model's decisions: segmentation, Grad-CAM of the classifier and attention, per image."""
    from covseg.api import explain as run_explain
    from covseg.cli._batch import console, finish, progress_bar, say_models
    from covseg.errors import ConfigError
    from covseg.inference.predictor import list_inputs

    if not tolerance >= 0:  # NaN too
        raise ConfigError(f"--tolerance: {tolerance} must be non-negative")
    say_models(model, quiet)
    total = len(list_inputs(input))
    with progress_bar("explaining", total, quiet) as advance:
        report, summary = run_explain(
            model, input, output, gt=gt, checkpoint=checkpoint, layer=layer, target_class=target_class,
            tolerance=tolerance, tta=tta, panels=not no_panels, strict=strict, on_done=advance,
        )
    out = console()
    for kind, agg in summary.get("explanation", {}).items():
        share = agg["metrics"]["inside_share"]["mean"]
        chance = agg["metrics"]["mask_fraction"]["mean"]
        out.print(
            f"{kind}: share inside the lesion {share:.3f} (chance {chance:.3f}), pointing game {agg['pointing_game']:.3f} "
            f"over {agg['metrics']['pointing_hit']['n']} images with a lesion",
            markup=False,
        )
    finish(report, output, f"{len(report.written)} explained into {output}")
