"""``covseg evaluate``: score predicted masks or soft maps against ground truth.

Heavy imports (numpy, scipy, matplotlib, rich progress) happen inside the command so that
``covseg --help`` stays fast.
"""

from __future__ import annotations

import functools
from pathlib import Path

import typer

from covseg.errors import ConfigError

_PROTOCOLS = ("medical", "sod", "flare")
_EMPTY = ("nan", "one", "zero")
_PRED_TYPES = ("auto", "soft", "mask")
_SPEC_RULES = ("pysodmetrics", "infnet")
_REDUCTIONS = ("nanmean", "mean")
_MISSING = ("error", "empty")
_TOOLBOXES = ("pysodmetrics", "matlab", "matlab-2020-11")


def _choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{option}: {value!r} is not one of {', '.join(allowed)}")
    return value


def parse_spacing(text: str | None) -> tuple[float, ...] | None:
    """``"0.7"`` → ``(0.7,)``; ``"0.7,0.7,3"`` (or ``x`` / space separated) → a tuple of floats."""
    if text is None or not text.strip():
        return None
    parts = [p for p in text.replace("x", ",").replace(" ", ",").split(",") if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--spacing: {text!r} is not a list of numbers") from None
    if not values or any(not (v > 0) for v in values) or len(values) > 3:
        raise ConfigError(f"--spacing: {text!r}: give 1 to 3 positive numbers (mm)")
    return values


def parse_empty_distance(text: str) -> str | float:
    """``nan`` | ``max`` | a non-negative number (``inf`` reproduces MONAI)."""
    if text in ("nan", "max"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--empty-distance: {text!r}: use nan, max or a number") from None
    if not value >= 0:
        raise ConfigError(f"--empty-distance: {text!r} must be non-negative")
    return value


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
    tolerance: float = typer.Option(
        1.0, "--tolerance", help="medical: NSD tolerance τ, in mm (pixels when no spacing is known)."
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
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from covseg.cli._batch import console as err_console
    from covseg.cli._batch import user_text
    from covseg.errors import DataError
    from covseg.metrics import evaluation as ev
    from covseg.utils.outputs import OutputFolder

    protocol = _choice(protocol, _PROTOCOLS, "--protocol")
    empty = _choice(empty, _EMPTY, "--empty")
    pred_type = _choice(pred_type, _PRED_TYPES, "--pred-type")
    specificity_rule = _choice(specificity_rule, _SPEC_RULES, "--specificity-rule")
    reduction = _choice(reduction, _REDUCTIONS, "--reduction")
    missing_pred = _choice(missing_pred, _MISSING, "--missing-pred")
    toolbox = _choice(toolbox, _TOOLBOXES, "--toolbox")
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold: {threshold} must lie in [0, 1]")
    if not tolerance >= 0:
        raise ConfigError(f"--tolerance: {tolerance} must be non-negative")
    if not pointing_tolerance >= 0:
        raise ConfigError(f"--pointing-tolerance: {pointing_tolerance} must be non-negative")
    if num_classes < 1:
        raise ConfigError(f"--num-classes: {num_classes} must be at least 1")
    if patient_rule not in ("max", "mean"):
        raise ConfigError(f"--patient-rule: {patient_rule!r} is not max or mean")
    if show < 0:
        raise ConfigError(f"--show: {show} must be non-negative")
    if timings is not None and protocol != "flare":
        raise ConfigError("--timings: only the flare protocol reads predict's timings (--protocol flare)")
    spacing_values = parse_spacing(spacing)
    empty_dist = parse_empty_distance(empty_distance)

    inner = ev.resolve_prediction_folder(pred)
    if protocol == "flare" and inner.name == "probs" and (inner.parent / "masks").is_dir():
        inner = inner.parent / "masks"  # FLARE scores label masks, the ones predict wrote
        err_console().print(f"reading the label masks in {user_text(inner)} (the flare protocol scores masks)")
        pred = inner
    if inner != pred:
        err_console().print(f"reading the predictions in {user_text(inner)} (the soft maps of a covseg predict output folder)"
                            if inner.name == "probs" else f"reading the masks in {user_text(inner)} (this predict run wrote no soft maps)")
        pred = inner
    out_dir = out if out is not None else Path("outputs") / "evaluate" / f"{pred.resolve().name}-{protocol}"
    cases, bad, image_dir = ev.pair_cases(pred, gt, images, missing=missing_pred)
    folder = OutputFolder(
        out_dir, "evaluate", [pred, gt, gt / "masks", image_dir],
        owned=("per_case.csv", "summary.json", "report.html"), legacy=("summary.json",),
    )
    folder.validate()
    if strict and bad:
        raise DataError(bad[0].problem, bad[0].path)

    accumulator = ev.make_accumulator(
        protocol,
        threshold=threshold,
        tolerance=tolerance,
        num_classes=num_classes,
        empty=empty,
        empty_distance=empty_dist,
        pred_type=pred_type,  # type: ignore[arg-type]
        specificity_rule=specificity_rule,  # type: ignore[arg-type]
        toolbox=toolbox,
    )
    err = err_console()
    for b in bad:
        err.print(f"[yellow]skipped[/] {user_text(b)}")
    progress = Progress(
        TextColumn("[bold]evaluate[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
        console=err,
        disable=not err.is_terminal,
    )
    with progress:
        task = progress.add_task("", total=len(cases))

        def on_case(case: ev.Case, problem: ev.BadCase | None) -> None:
            if problem is not None:
                progress.console.print(f"[yellow]skipped[/] {user_text(problem)}", highlight=False)
            progress.update(task, advance=1, description=user_text(case.case_id))

        run = ev.evaluate_cases(
            cases,
            accumulator,
            num_classes=num_classes,
            pred_type=pred_type,  # type: ignore[arg-type]
            spacing=spacing_values,
            strict=strict,
            on_case=on_case,
        )
    run.bad = bad + run.bad
    run.options = {
        "pred": str(pred),
        "gt": str(gt),
        "images": str(image_dir) if image_dir else None,
        "spacing": list(spacing_values) if spacing_values else None,
        "strict": strict,
        "missing_pred": missing_pred,
    }

    folder.prepare()
    if run.cases:
        _attach_joint(
            run, pred, classes, labels, explanations, pointing_tolerance, num_classes, show, patient_pattern, patient_rule
        )
    if not run.cases:
        summary_path = ev.write_outputs(run, out_dir, reduction=reduction)["summary"]  # type: ignore[arg-type]
        raise DataError(
            f"no case could be scored ({len(run.bad)} problem(s), listed in {summary_path})", pred
        )

    if protocol == "flare":
        _attach_flare(run, pred, timings, reduction)
    renderer = None
    if report:  # metrics writes the files; the HTML page comes from viz, one layer up
        from covseg.viz.evaluation_report import render_evaluation_report

        renderer = functools.partial(render_evaluation_report, show=show)
    paths = ev.write_outputs(run, out_dir, reduction=reduction, report=renderer)  # type: ignore[arg-type]
    summary = accumulator.aggregate(reduction)  # type: ignore[arg-type]
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
        _print_flare(console, run.extras["summary"]["flare"])
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
    for kind, path in paths.items():
        console.print(f"{kind}: {user_text(path)}")
    unscored = [b for b in run.bad if b.is_failure]
    if unscored:
        missing = sum(b.kind == "no_prediction" for b in unscored)
        hint = " (--missing-pred empty scores missing predictions as empty)" if missing else ""
        err.print(f"[bold red]{len(unscored)} ground-truth case(s) not scored[/], {missing} without a prediction{hint}")
        raise typer.Exit(1)


def _attach_joint(
    run, pred: Path, classes, labels, explanations, tolerance: float, num_classes: int, show: int,
    patient_pattern: str | None = None, patient_rule: str = "max",
) -> None:
    """Classification (class probabilities of a joint model, per image and per patient) and explanation scores."""
    from covseg.metrics import joint

    if tolerance < 0:
        raise ConfigError(f"--pointing-tolerance: {tolerance} must be non-negative")
    scores = joint.joint_options(pred, classes)
    if scores is not None:
        joint.attach_classification(run, scores, labels, num_classes, patient_pattern, patient_rule)
    elif labels is not None:
        raise ConfigError("--labels needs class probabilities: predictions.csv of a joint model beside --pred, or --classes")
    if explanations is not None:
        joint.attach_explanations(run, explanations, tolerance, num_classes, show)


def _attach_flare(run, pred: Path, timings: Path | None, reduction: str) -> None:
    """FLARE's table (DSC, NSD per class; seconds and peak memory per case) into the summary and per-case rows."""
    from covseg.metrics import flare

    path = timings if timings is not None else flare.find_timings(pred)
    if path is not None:
        flare.attach_timings(run, flare.read_timings(path))
    table = flare.flare_table(run, reduction)  # type: ignore[arg-type]
    table["timings"] = str(path) if path is not None else None
    run.extras.setdefault("summary", {})["flare"] = table


def _print_flare(console, table: dict) -> None:
    """Two tables: DSC and NSD per class (and their mean), then each case's means, seconds and peak memory."""
    from rich.table import Table

    def cell(value: float) -> str:
        return f"{value:.4f}"

    classes = Table(title=f"FLARE table: NSD at {table['tolerance_mm']:g} mm")
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
