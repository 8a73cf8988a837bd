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
    from covseg.inference.options import ExplainOptions
    from covseg.inference.predictor import list_inputs

    options = ExplainOptions(checkpoint=checkpoint, gt=gt, layer=layer, target_class=target_class, tolerance=tolerance, tta=tta,
                             panels=not no_panels, strict=strict).checked()  # fmt: skip
    say_models(model, quiet)
    with progress_bar("explaining", len(list_inputs(input)), quiet) as advance:
        report, summary = run_explain(model, input, output, options, on_done=advance)
    for kind, agg in summary.get("explanation", {}).items():
        metrics = agg["metrics"]
        console().print(
            f"{kind}: share inside the lesion {metrics['inside_share']['mean']:.3f} (chance {metrics['mask_fraction']['mean']:.3f}), "
            f"pointing game {agg['pointing_game']:.3f} over {metrics['pointing_hit']['n']} images with a lesion",
            markup=False,
        )
    finish(report, output, f"{len(report.written)} explained into {output}")
