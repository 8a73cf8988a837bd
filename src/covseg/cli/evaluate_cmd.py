"""``covseg evaluate``: score predicted masks or soft maps against ground truth.

The command builds one :class:`covseg.metrics.options.EvaluateOptions` and calls
:func:`covseg.api.evaluate`, which checks and writes the output folder through the output guard
(:class:`covseg.utils.outputs.OutputFolder`); here it only shows progress and prints. Heavy imports
(numpy, scipy, matplotlib, rich progress) happen inside the command so that ``covseg --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer


def evaluate(
    pred: Path = typer.Option(
        ..., "--pred", help="Folder of predictions: PNG/JPG/TIFF soft maps (0..255) or masks, .npy, NIfTI."
    ),
    gt: Path = typer.Option(
        ..., "--gt", help="Folder of ground-truth masks, or a dataset folder with masks/ (and images/)."
    ),
    images: Path | None = typer.Option(
        None,
        "--images",
        help="Folder of the original images, for overlays (default: <gt>/images if present).",
    ),
    protocol: str = typer.Option(
        "medical",
        "--protocol",
        help="medical (thresholded masks, distances in mm), sod (Inf-Net toolbox on soft maps) or flare "
        "(FLARE22's table: DSC and NSD per class, seconds and peak memory per case from predict's predictions.csv).",
    ),
    timings: Path | None = typer.Option(
        None,
        "--timings",
        help="flare: the predictions.csv with seconds and peak_memory_mb per case (default: the one covseg predict wrote beside --pred).",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (default: outputs/evaluate/<pred folder>-<protocol>)."
    ),
    threshold: float = typer.Option(
        0.5, "--threshold", help="medical: soft maps are foreground where p >= threshold."
    ),
    tolerance: str = typer.Option(
        "1",
        "--tolerance",
        help="NSD tolerance τ in mm (pixels when no spacing is known); flare: also flare22 = FLARE22's "
        "per-organ τ and rules (13 organs).",
    ),
    spacing: str | None = typer.Option(
        None,
        "--spacing",
        help="Pixel/voxel spacing in mm, e.g. 0.7 or 0.7,0.7 or 0.8,0.8,3 (default: the ground truth file's own: NIfTI header, PNG covseg:spacing, TIFF resolution; else pixels).",
    ),
    num_classes: int = typer.Option(
        1, "--num-classes", help="medical: number of foreground classes K (labels 1..K)."
    ),
    empty: str = typer.Option(
        "nan", "--empty", help="Undefined ratios / both-empty cases: nan, one (perfect) or zero (failure)."
    ),
    empty_distance: str = typer.Option(
        "nan",
        "--empty-distance",
        help="HD95/ASSD when one side is empty: nan, max (image diagonal) or a number in mm.",
    ),
    pred_type: str = typer.Option(
        "auto",
        "--pred-type",
        help="How to read predictions: auto, soft (probability maps) or mask (label maps).",
    ),
    specificity_rule: str = typer.Option(
        "pysodmetrics",
        "--specificity-rule",
        help="sod: pysodmetrics, or infnet (specificity 0 where TP = 0, as Inf-Net's MATLAB code).",
    ),
    reduction: str = typer.Option(
        "nanmean",
        "--reduction",
        help="NaN cases in the summary: nanmean (leave out, counted) or mean (NaN propagates).",
    ),
    missing_pred: str = typer.Option(
        "error",
        "--missing-pred",
        help="A ground-truth case without a prediction: error (listed; exit code 1) or empty (scored as an empty prediction).",
    ),
    toolbox: str = typer.Option(
        "pysodmetrics",
        "--toolbox",
        help="sod: pysodmetrics (default); matlab: Inf-Net's MATLAB EvaluationTool as it made the published "
        "numbers (commit fb3a03b, E-measure at p > t), to 1e-12 and NaN where it gives NaN, S-measure clamped at 0; "
        "matlab-2020-11: the same at commit e723632 (E-measure at p >= t). Both read ground-truth image files as "
        "main.m does: foreground where the value > 128 (colour via rgb2gray), so a 0/1 mask is empty.",
    ),
    classes: Path | None = typer.Option(
        None,
        "--classes",
        help="Joint models: CSV with p_<class> columns per input (default: the predictions.csv covseg predict "
        "wrote beside --pred, if it has them).",
    ),
    labels: Path | None = typer.Option(
        None, "--labels", help="Image-level labels CSV (image,label[,patient]) for classification (default: non-empty ground truth = positive)."
    ),
    patient_pattern: str | None = typer.Option(
        None,
        "--patient-pattern",
        help="Patient-level diagnosis: a regular expression whose first group (or whole match) in a case's stem is its "
        "patient (else the labels CSV's patient column).",
    ),
    patient_rule: str = typer.Option(
        "max", "--patient-rule", help="How slice scores make a patient's score: max (a lesion anywhere) or mean."
    ),
    explanations: Path | None = typer.Option(
        None, "--explanations", help="Output folder of covseg explain: heatmaps scored against the ground truth, panels in the report."
    ),
    pointing_tolerance: float = typer.Option(
        0.0, "--pointing-tolerance", help="Pointing game: a heatmap peak within this many pixels of the lesion is a hit."
    ),
    show: int = typer.Option(6, "--show", help="Worst and best cases shown as overlays in the report."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write report.html."),
    strict: bool = typer.Option(
        False, "--strict", help="Stop at the first bad case (non-zero exit) instead of skipping it."
    ),
) -> None:
    """Evaluate predictions against ground truth; writes per_case.csv, summary.json and report.html."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from covseg.api import evaluate as run_evaluate
    from covseg.cli._batch import console as err_console
    from covseg.cli._batch import user_text
    from covseg.metrics.options import EvaluateOptions

    options = EvaluateOptions(
        protocol=protocol, out=out, images=images, threshold=threshold, tolerance=tolerance, spacing=spacing,
        num_classes=num_classes, empty=empty, empty_distance=empty_distance, pred_type=pred_type,
        specificity_rule=specificity_rule, reduction=reduction, missing_pred=missing_pred, toolbox=toolbox, classes=classes,
        labels=labels, patient_pattern=patient_pattern, patient_rule=patient_rule, explanations=explanations,
        pointing_tolerance=pointing_tolerance, show=show, report=report, strict=strict, timings=timings,
    )  # fmt: skip
    err = err_console()
    progress = Progress(TextColumn("[bold]evaluate[/]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        TextColumn("{task.description}"), console=err, disable=not err.is_terminal)  # fmt: skip
    task = progress.add_task("", total=0)

    def listener(event: str, value: object) -> None:
        if event == "predictions":
            err.print(f"reading the predictions in {user_text(value)} (the soft maps of a covseg predict output folder)"
                      if value.name == "probs" else f"reading the masks in {user_text(value)} (this predict run wrote no soft maps)")  # type: ignore[attr-defined]  # fmt: skip
        elif event == "flare_masks":
            err.print(f"reading the label masks in {user_text(value)} (the flare protocol scores masks)")
        elif event == "skipped":
            err.print(f"[yellow]skipped[/] {user_text(value)}")
        elif event == "start":
            progress.update(task, total=value)
            progress.start()

    def on_case(case, problem) -> None:
        if problem is not None:
            progress.console.print(f"[yellow]skipped[/] {user_text(problem)}", highlight=False)
        progress.update(task, advance=1, description=user_text(case.case_id))

    try:
        result = run_evaluate(pred, gt, options, listener=listener, on_case=on_case)
    finally:
        progress.stop()
    print_result(result, options.protocol)
    unscored = [b for b in result.run.bad if b.is_failure]
    if unscored:
        missing = sum(b.kind == "no_prediction" for b in unscored)
        hint = " (--missing-pred empty scores missing predictions as empty)" if missing else ""
        err.print(f"[bold red]{len(unscored)} ground-truth case(s) not scored[/], {missing} without a prediction{hint}")
        raise typer.Exit(1)


def print_result(result, protocol: str) -> None:
    """The summary table, the toolbox and joint numbers, notes, skipped cases and the files written (stdout)."""
    from rich.console import Console
    from rich.table import Table

    from covseg.cli._batch import user_text

    run, summary = result.run, result.summary
    console = Console(highlight=False, soft_wrap=True)
    table = Table(
        title=f"{protocol} protocol: {len(run.cases)} cases, {len(run.bad)} skipped, {run.seconds:.1f} s"
    )
    for col in ("metric", "mean ± std", "median", "n", "NaN"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, s in summary["metrics"].items():
        table.add_row(
            name, f"{s['mean']:.4f} ± {s['std']:.4f}", f"{s['median']:.4f}", str(s["n"]), str(s["n_nan"])
        )
    console.print(table)
    if protocol == "sod":
        console.print("toolbox numbers: " + ", ".join(f"{k} {v:.4f}" for k, v in summary["toolbox"].items()))
    if protocol == "flare":
        print_flare(console, run.extras["summary"]["flare"])
    joint = run.extras.get("summary", {})
    if "classification" in joint:
        console.print("classification: " + ", ".join(f"{k} {v:.4f}" for k, v in joint["classification"]["metrics"].items()))
        patient = joint["classification"].get("patient_level")
        if patient:
            scores = ", ".join(f"{k} {patient['metrics'][k]:.4f}" for k in ("auc", "sensitivity", "specificity"))
            console.print(f"per patient ({patient['num_patients']} patients, {patient['rule']} slice score): {scores}")
    for kind, agg in joint.get("explanation", {}).items():
        share = agg["metrics"]["inside_share"]["mean"]
        console.print(f"{kind}: share inside the lesion {share:.4f}, pointing game {agg['pointing_game']:.4f}")
    if run.toolbox_gt_differs:
        console.print(
            f"[yellow]note[/] {len(run.toolbox_gt_differs)} ground-truth mask(s) read as the MATLAB toolbox reads "
            "them (value > 128; a 0/1 mask is empty) differ from their non-zero foreground, scored as the toolbox "
            f"reads them: {', '.join(user_text(c) for c in run.toolbox_gt_differs[:10])}"
            + (" …" if len(run.toolbox_gt_differs) > 10 else "")
        )
    if run.resized:
        console.print(
            f"[yellow]note[/] {len(run.resized)} prediction(s) resized to their ground truth's size "
            "(scored at the ground truth's resolution)"
        )
    if run.bad:
        console.print(f"[yellow]{len(run.bad)} case(s) skipped:[/]")
        for b in run.bad:
            console.print(f"  {user_text(b)}")
    for kind, path in result.paths.items():
        console.print(f"{kind}: {user_text(path)}")


def print_flare(console, table: dict) -> None:
    """Two tables: DSC and NSD per class (and their mean), then each case's means, seconds and peak memory."""
    from rich.table import Table

    def cell(value: float) -> str:
        return f"{value:.4f}"

    tol = table["tolerance_mm"]
    at = "FLARE22's per-organ τ" if tol == "flare22" else f"{tol:g} mm"
    how = {"surfel": "surface area, as FLARE's script", "voxel": "surface voxel count, as MONAI"}.get(table.get("nsd", "voxel"))
    classes = Table(title=f"FLARE table: NSD at {at} (by {how})")
    for col in ("class", "DSC", "NSD"):
        classes.add_column(col, justify="left" if col == "class" else "right")
    for c, scores in table["per_class"].items():
        classes.add_row(c, cell(scores["dsc"]), cell(scores["nsd"]))
    classes.add_row("mean", cell(table["mean"]["mean_dsc"]), cell(table["mean"]["mean_nsd"]))
    console.print(classes)
    cases = Table(title=f"per case ({table['timed_cases']} timed by covseg predict)")
    for col in ("case", "DSC", "NSD", "seconds", "peak MB"):
        cases.add_column(col, justify="left" if col == "case" else "right")
    for row in table["cases"]:
        cases.add_row(row["case_id"], cell(row["mean_dsc"]), cell(row["mean_nsd"]), f"{row['seconds']:.2f}", f"{row['peak_memory_mb']:.0f}")
    console.print(cases)
