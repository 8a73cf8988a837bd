"""Folder evaluation behind ``covseg evaluate``: score paired cases, write per-case CSV, summary and report.

Pairing and reading the files (formats, resizing, refused pairs) live in
:mod:`covseg.metrics.cases`, a scored case as the report shows it in
:mod:`covseg.metrics.case_display`; their names are re-exported here, so
``covseg.metrics.evaluation`` stays the one import path of the command's building blocks.

A bad case (unreadable file, missing partner, unresolvable mismatch) is recorded with a one-line
problem naming the file and the batch continues, unless ``strict``. A ground-truth case without a
prediction is a bad case unless ``missing="empty"`` scores it as an empty prediction. The output
files are written as one unit, ``summary.json`` last (:func:`covseg.utils.atomic.write_unit`).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from covseg.errors import DataError
from covseg.metrics._arrays import PredType
from covseg.metrics.base import MetricAccumulator, Reduction

# The case files' and the display's names, re-exported: callers import them from here.
from covseg.metrics.case_display import (  # noqa: F401  (re-exports)
    case_display_arrays,
    case_display_arrays_nd,
    reads_gt_as_toolbox,
)
from covseg.metrics.cases import (  # noqa: F401  (re-exports)
    FILE_SUFFIXES,
    VOLUME_SUFFIXES,
    BadCase,
    Case,
    LoadedCase,
    fit_prediction,
    load_case,
    natural_key,
    pair_cases,
    read_ground_truth,
    read_prediction,
    read_toolbox_ground_truth,
    resolve_gt_folder,
    resolve_prediction_folder,
)
from covseg.metrics.flare import FlareMetrics
from covseg.metrics.medical import MedicalMetrics
from covseg.metrics.sod import SodMetrics, SpecificityRule
from covseg.utils.atomic import write_unit
from covseg.utils.outputs import csv_text as neutral_csv_text

PROTOCOLS: tuple[str, ...] = ("medical", "sod", "flare")


@dataclass
class EvaluationRun:
    """Everything a report needs: the filled accumulator, scored and bad cases, resizes, timing."""

    accumulator: MetricAccumulator
    cases: list[Case] = field(default_factory=list)
    bad: list[BadCase] = field(default_factory=list)
    resized: dict[str, tuple[int, ...]] = field(default_factory=dict)
    spacing_source: str = "none"
    seconds: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)
    #: more results of the same cases (``covseg.metrics.joint``): ``summary`` entries, ``per_case`` columns, ``panels``
    extras: dict[str, Any] = field(default_factory=dict)
    #: cases whose ground truth, read as the MATLAB toolbox reads it (``gt > 128``), differs from covseg's reading
    toolbox_gt_differs: list[str] = field(default_factory=list)


def make_accumulator(
    protocol: str,
    *,
    threshold: float = 0.5,
    tolerance: float = 1.0,
    num_classes: int = 1,
    empty: str = "nan",
    empty_distance: str | float = "nan",
    pred_type: PredType = "auto",
    specificity_rule: SpecificityRule = "pysodmetrics",
    toolbox: str = "pysodmetrics",
) -> MetricAccumulator:
    """The accumulator of a protocol by name (``toolbox``: the sod variant, ``pysodmetrics``, ``matlab`` or ``matlab-2020-11``)."""
    if protocol == "medical":
        return MedicalMetrics(
            num_classes=num_classes,
            threshold=threshold,
            tolerance=tolerance,
            empty=empty,  # type: ignore[arg-type]
            empty_distance=empty_distance,
            pred_type=pred_type,
        )
    if protocol == "flare":  # DSC and NSD per class (FLARE22's table)
        return FlareMetrics(
            num_classes=num_classes,
            threshold=threshold,
            tolerance=tolerance,
            empty=empty,
            pred_type=pred_type,  # type: ignore[arg-type]
        )
    if protocol == "sod":
        if num_classes != 1:
            raise DataError("the sod protocol is binary (num_classes=1); score each class folder separately")
        return SodMetrics(specificity_rule=specificity_rule, toolbox=toolbox)  # type: ignore[arg-type]
    raise DataError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


READ_THREADS = min(4, os.cpu_count() or 1)
"""Threads that read case files ahead of the scoring (1: read in the scoring thread)."""


def read_ahead(
    cases: Sequence[Case], read: Callable[[Case], LoadedCase], threads: int | None = None
) -> Iterator[Future]:
    """Futures of ``read(case)`` in the order of ``cases``, at most ``2 × threads`` cases read ahead.

    Closing the iterator early (a strict run's first bad case) cancels the reads not yet started.
    """
    threads = READ_THREADS if threads is None else threads
    if threads <= 1 or len(cases) <= 1:
        for case in cases:
            done: Future = Future()
            try:
                done.set_result(read(case))
            except Exception as exc:  # raised again by .result(), as from a thread
                done.set_exception(exc)
            yield done
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="covseg-read")
    finished = False
    try:
        queue: collections.deque[Future] = collections.deque()
        todo = iter(cases)
        for case in itertools.islice(todo, 2 * threads):
            queue.append(pool.submit(read, case))
        while queue:
            head = queue.popleft()
            for case in itertools.islice(todo, 1):
                queue.append(pool.submit(read, case))
            yield head
        finished = True
    finally:  # every future handed out still runs; closed early, the ones not handed out are cancelled
        pool.shutdown(wait=not finished, cancel_futures=not finished)


@contextlib.contextmanager
def _problem_of(case: Case) -> Iterator[None]:
    """A ``ValueError`` of scoring as the one-line problem of the case's prediction file."""
    try:
        yield
    except ValueError as exc:
        raise DataError(str(exc), case.pred_path) from None


def _read_and_score(
    case: Case, *, load: Callable[[Case], LoadedCase], accumulator: MetricAccumulator
) -> tuple[LoadedCase, list[dict[str, Any]] | None]:
    """One case read and, where the protocol allows it (``case_records``), scored without recording."""
    loaded = load(case)
    medical = loaded.voxel_ml is not None and isinstance(accumulator, MedicalMetrics)
    extra = {"voxel_ml": loaded.voxel_ml} if medical else {}
    with _problem_of(case):
        records = accumulator.case_records(loaded.pred, loaded.gt, loaded.spacing, case.case_id, **extra)
    return loaded, records


def evaluate_cases(
    cases: Sequence[Case],
    accumulator: MetricAccumulator,
    *,
    num_classes: int = 1,
    pred_type: PredType = "auto",
    spacing: tuple[float, ...] | None = None,
    strict: bool = False,
    on_case: Callable[[Case, BadCase | None], None] | None = None,
) -> EvaluationRun:
    """Score every case into ``accumulator``; bad cases are collected (or raised at once when ``strict``).

    The next cases are read, and scored where the protocol can score without recording
    (``MetricAccumulator.case_records``), in a few threads (image decoding and the KD-tree queries
    release the GIL); their records are added in the cases' order, so the results do not change.
    """
    run = EvaluationRun(accumulator=accumulator)
    load = functools.partial(
        load_case,
        protocol=accumulator.protocol,
        num_classes=num_classes,
        pred_type=pred_type,
        spacing=spacing,
        toolbox_gt=reads_gt_as_toolbox(accumulator),
    )
    read = functools.partial(_read_and_score, load=load, accumulator=accumulator)
    start = time.perf_counter()
    header_spacing = False
    with contextlib.closing(read_ahead(cases, read)) as reads:  # a strict stop cancels the reads ahead
        for case, pending in zip(cases, reads):
            problem: BadCase | None = None
            try:
                loaded, records = pending.result()
                if records is None:  # a protocol that scores only while recording
                    with _problem_of(case):
                        accumulator.update(
                            loaded.pred, loaded.gt, spacing=loaded.spacing, case_id=case.case_id
                        )
                else:
                    accumulator.add_records(case.case_id, records)
                run.cases.append(case)
                if loaded.resized_from is not None:
                    run.resized[case.case_id] = loaded.resized_from
                if loaded.toolbox_gt_differs:
                    run.toolbox_gt_differs.append(case.case_id)
                header_spacing = header_spacing or (spacing is None and loaded.spacing is not None)
            except DataError as exc:
                if strict:
                    raise
                problem = BadCase(exc.path or str(case.pred_path or case.gt_path), exc.problem)
                run.bad.append(problem)
            if on_case is not None:
                on_case(case, problem)
    run.seconds = time.perf_counter() - start
    if spacing is not None:
        run.spacing_source = f"--spacing {'x'.join(format(v, 'g') for v in spacing)}"
    elif header_spacing:
        run.spacing_source = "ground-truth file metadata (NIfTI header, PNG covseg:spacing, TIFF resolution)"
    else:
        run.spacing_source = "none: distances are in pixels/voxels"
    return run


# ------------------------------------------------------------------------------------------ outputs
def package_versions() -> dict[str, str | None]:
    """Versions of the packages that shape the numbers (None when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("covseg", "numpy", "scipy", "pillow", "nibabel", "torch", "monai", "matplotlib"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _finite_or_none(obj: Any) -> Any:
    """JSON-safe copy: NaN becomes null, ±inf the strings "inf" / "-inf", tuples lists."""
    if isinstance(obj, dict):
        return {str(k): _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _format_cell(value: Any) -> Any:
    """A tuple (spacing) as ``AxB``; everything else as it is, for the CSV writer (numbers stay numbers)."""
    if isinstance(value, tuple):
        return "x".join(format(float(v), "g") for v in value)
    return value


def per_case_rows(run: EvaluationRun) -> list[dict[str, Any]]:
    """Accumulator records joined with file names and resize information."""
    by_id = {c.case_id: c for c in run.cases}
    extra = run.extras.get("per_case", {})
    rows = []
    for rec in run.accumulator.per_case():
        case = by_id.get(rec["case_id"])
        resized = run.resized.get(rec["case_id"])
        rows.append(
            {
                **rec,
                "pred_file": (case.pred_path.name if case.pred_path else "(none: scored as empty)")
                if case
                else "",
                "gt_file": case.gt_path.name if case else "",
                "resized_from": "x".join(map(str, resized)) if resized else "",
                **extra.get(rec["case_id"], {}),
            }
        )
    return rows


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """CSV of the rows (columns in first-seen order; NaN as ``nan``)."""
    return neutral_csv_text(
        [{k: _format_cell(v) for k, v in row.items()} for row in rows], float_format=".10g"
    )


def build_summary(run: EvaluationRun, reduction: Reduction = "nanmean") -> dict[str, Any]:
    """Summary dict: protocol, parameters, statistics, counts, bad cases, resizes, versions."""
    agg = run.accumulator.aggregate(reduction)  # sod: includes the 256-point image-averaged curves
    return {
        **agg,
        "num_bad": len(run.bad),
        "bad_cases": [{"path": b.path, "problem": b.problem, "kind": b.kind} for b in run.bad],
        "num_unscored": sum(b.is_failure for b in run.bad),
        "resized_cases": {cid: list(shape) for cid, shape in run.resized.items()},
        "resize_note": (
            "predictions whose size differs from the ground truth were resized to it "
            "(soft maps bilinear, masks nearest) and scored at the ground truth's resolution"
        ),
        "spacing_source": run.spacing_source,
        "options": run.options,
        "seconds": round(run.seconds, 3),
        "versions": package_versions(),
        "surface_distances": "scipy KD-tree reproducing monai.metrics (monai itself is not imported)",
        **(
            {
                "toolbox_ground_truth": {
                    "cases": list(run.toolbox_gt_differs),
                    "note": "read as Inf-Net's main.m reads masks (gt > 128; a 0/1 or label-index mask is empty), "
                    "these ground truths differ from their non-zero foreground; they were scored as the toolbox reads them",
                }
            }
            if run.toolbox_gt_differs
            else {}
        ),
        **run.extras.get("summary", {}),
    }


ReportRenderer = Callable[["EvaluationRun", dict[str, Any]], "str | bytes"]
"""Renders ``report.html`` from a run and its summary; supplied by a layer above metrics
(:func:`covseg.viz.evaluation_report.render_evaluation_report`), never imported from here."""


def write_outputs(
    run: EvaluationRun,
    out_dir: Path,
    *,
    reduction: Reduction = "nanmean",
    report: ReportRenderer | None = None,
) -> dict[str, Path]:
    """Write ``per_case.csv``, ``summary.json`` and, given a ``report`` renderer, ``report.html``, each atomically.

    ``report(run, summary)`` returns the page (``summary`` as :func:`build_summary` gives it);
    metrics hands its results up to the caller's renderer rather than importing :mod:`covseg.viz`.
    Returns ``{"csv": ..., "summary": ..., "report": ...}`` for the files written.
    """
    if isinstance(report, bool):
        raise TypeError(
            "write_outputs(report=...) takes a renderer such as "
            "covseg.viz.evaluation_report.render_evaluation_report, or None; not a bool"
        )
    rows = per_case_rows(run)
    summary = build_summary(run, reduction)
    writers: dict[str, Callable[[Path], Any]] = {
        "per_case.csv": lambda p: p.write_text(csv_text(rows), encoding="utf-8", errors="surrogateescape"),
        "summary.json": lambda p: p.write_text(summary_json_text(summary) + "\n", encoding="utf-8"),
    }
    if report is not None:
        page = report(run, summary)
        writers["report.html"] = (
            (lambda p: p.write_text(page, encoding="utf-8", errors="surrogateescape"))
            if isinstance(page, str)
            else (lambda p: p.write_bytes(page))
        )
    # without a report, an old one is removed with the old unit: it would not match the new summary
    paths = write_unit(out_dir, writers, commit="summary.json", stale=("report.html",))
    return {
        {"per_case.csv": "csv", "summary.json": "summary", "report.html": "report"}[name]: path
        for name, path in paths.items()
    }


def summary_json_text(summary: dict[str, Any]) -> str:
    """The JSON text ``write_outputs`` writes for a summary (strict JSON: no NaN)."""
    return json.dumps(_finite_or_none(summary), indent=2, default=_jsonable)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)
