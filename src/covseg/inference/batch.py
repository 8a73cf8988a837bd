"""Predict a folder of files: masks, soft maps, overlays; bad files are listed, not fatal.

The output folder is checked against the inputs first (:class:`covseg.utils.outputs.OutputFolder`)
and locked while the batch writes it; inputs whose outputs would share a name (``a.png`` and
``a.jpg``) are refused, not overwritten; a failed write (disk full, read-only folder) stops the
batch with one line. A second run into the same folder adds to its index: ``predictions.csv``
keeps the earlier rows of cases this run did not redo (:class:`EarlierIndex`). Each file is
predicted by :func:`covseg.inference.case.predict_case` (as in the app) and written here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covseg.errors import CovsegError, DataError
from covseg.inference.case import CaseResult, class_columns, lung_involvement_percent, predict_case
from covseg.inference.files import (  # the batch machinery (its own module now): importable from here as before
    BatchReport,
    EarlierIndex,
    distinct_stems,
    failure_line,
    for_each_file,
    gather_report,
    write_failures,
    write_index,
)
from covseg.inference.options import PredictOptions
from covseg.utils.outputs import OutputFolder, write_csv

#: zlib level of the soft-map, overlay and preview PNGs: level 1 encodes a 369x273 RGB overlay in 9 ms
#: instead of 36 ms (level 6, PIL's default) with files no larger; at level 6 writing them took longer
#: than the network on 50 CT slices (4.4 vs 3.9 CPU s, cProfile of `covseg predict`, 2026-12-07)
FAST_PNG = 1

if TYPE_CHECKING:  # torch-free at import: a torch-free prediction (covseg.inference.onnx_start) writes through here
    from covseg.engine.runtime import Runtime

__all__ = [
    "BatchReport", "EarlierIndex", "class_columns", "distinct_stems", "failure_line", "for_each_file", "gather_report",
    "lung_involvement_percent", "model_label", "output_paths", "predict_files", "run_dirs_of", "write_failures", "write_index",
]  # fmt: skip


def run_dirs_of(predictor: Any) -> list[Path]:
    """The run folders a predictor reads (one, or an ensemble's members)."""
    dirs = getattr(predictor, "run_dirs", None) or [getattr(predictor, "run_dir", None)]
    return [Path(d) for d in dirs if d is not None]


def model_label(predictor: Any) -> str:
    """Which model(s) a predictor runs, as recorded in ``predictions.csv`` (``shipped model NAME`` or
    ``run folder /absolute/path``; an ensemble's members joined by `` + ``)."""
    from covseg import zoo

    def one(folder: Path) -> str:
        folder = folder.resolve()
        return f"shipped model {folder.name}" if folder.parent == zoo.ZOO_DIR.resolve() else f"run folder {folder}"

    return " + ".join(one(d) for d in run_dirs_of(predictor)) or type(predictor).__name__


def output_paths(out_dir: Path, stem: str, volume: bool) -> dict[str, Path]:
    """Where one input's outputs go: ``masks/``, ``probs/``, ``overlays/``, ``statistics/``, ``previews/`` (and a volume's lung mask,
    ``lungs/``) under ``out_dir``."""
    suffix = ".nii.gz" if volume else ".png"
    paths = {
        "mask": out_dir / "masks" / f"{stem}{suffix}",
        "prob": out_dir / "probs" / f"{stem}{suffix}",
        "overlay": out_dir / "overlays" / f"{stem}.png",
        "statistics": out_dir / "statistics" / f"{stem}.json",
        "preview": out_dir / "previews" / f"{stem}.png",
    }
    if volume:
        paths["lungs"] = out_dir / "lungs" / f"{stem}{suffix}"
    return paths


#: draws a label map over an image: ``render(image, labels) -> RGB uint8`` (``covseg.viz`` gives one)
OverlayRenderer = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: draws a volume's preview: ``render(display (X, Y, Z) 0..255, labels, affine) -> RGB uint8`` (``covseg.viz.preview``)
PreviewRenderer = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class _Batch:
    """One batch's settings and writers, handed to each file's work."""

    predictor: Any
    folder: OutputFolder
    options: PredictOptions
    overlays: OverlayRenderer | None
    preview: PreviewRenderer | None


def predict_files(
    predictor: Any,
    files: list[Path],
    out_dir: Path,
    options: PredictOptions | None = None,
    *,
    overlays: OverlayRenderer | None = None,
    preview: PreviewRenderer | None = None,
    extra_for: Callable[[Path], dict] | None = None,
    on_done: Callable[[], None] | None = None,
    runtime: Runtime | None = None,
) -> BatchReport:
    """Predict each file with ``options`` (:class:`~covseg.inference.options.PredictOptions`); a bad file is
    recorded and skipped unless ``options.strict``.

    ``overlays`` draws each prediction over its image into ``overlays/`` (None: no overlays);
    ``options.probs`` False writes no soft maps (``probs/``), which for large volumes saves time and disk.
    With ``options.lungs_only`` a 2D image is a bad file (the lung mask needs a CT volume in HU), and
    each row has the volume's ``lung_ml`` and ``infected_percent_of_lungs``; ``save_lung_mask``
    writes that mask into ``lungs/``.
    ``options.statistics`` writes each case's :func:`covseg.inference.statistics.case_statistics` into
    ``statistics/<stem>.json`` (and the row's ``statistics``) and the batch's ``statistics.csv``;
    ``preview`` draws each volume's three-view picture into ``previews/<stem>.png``.
    Each row records the file's seconds and peak memory (CUDA: ``max_memory_allocated`` for the
    file; CPU: the process's peak resident memory so far). Under torchrun (``runtime`` with
    several processes) each process predicts its share of ``files`` and the main one writes
    ``predictions.csv`` with every row: each output is written exactly once. The folder is locked
    while the batch runs, and an earlier run's rows of other cases stay in ``predictions.csv``.
    ``options.output_types`` ``dicom-seg`` / ``rtstruct`` also write each DICOM series' mask as those
    objects (:mod:`covseg.inference.dicom_out`); any other input is then a bad file.
    """
    from covseg.inference.dicom_out import DICOM_OUTPUTS, check_output_types

    options = options or PredictOptions()
    dicom_outputs = check_output_types(options.output_types)
    if runtime is None and getattr(predictor, "runtime", None) is None:
        from covseg.engine.runtime import Runtime

        runtime = Runtime()
    runtime = runtime or predictor.runtime
    folder = OutputFolder(
        out_dir, "predict", [*files, *run_dirs_of(predictor)],
        owned=("masks", "probs", "overlays", "predictions.csv", "failed.txt", *(("lungs",) if options.writes_lung_mask else ()),
               *(("statistics", "statistics.csv") if options.statistics else ()), *(("previews",) if preview else ()),
               *(DICOM_OUTPUTS[kind][0] for kind in dicom_outputs)),
        legacy=("predictions.csv",),
    )
    folder.validate()
    batch = _Batch(predictor, folder, options, overlays, preview)
    with folder.lock() if runtime.is_main else contextlib.nullcontext():
        earlier = earlier_stats = None
        if runtime.is_main:
            folder.prepare()
            earlier = EarlierIndex(out_dir, "predictions.csv", key=lambda row: Path(str(row.get("mask", ""))).name)
            if options.statistics:
                earlier_stats = EarlierIndex(out_dir, "statistics.csv", key=lambda row: str(row.get("case", "")))
        runtime.barrier()
        report = _predict_all(batch, files, earlier, extra_for, on_done, runtime, dicom_outputs)
        if earlier_stats is not None:
            _write_statistics_table(folder.path, report, earlier_stats)
        return report


def _predict_all(
    batch: _Batch, files: list[Path], earlier: EarlierIndex | None, extra_for, on_done, runtime: Runtime, dicom_outputs: tuple[str, ...]
) -> BatchReport:
    from covseg.data.imageio import is_volume
    from covseg.inference.dicom_out import require_dicom_series, write_case_outputs
    from covseg.inference.postprocess import LUNGS_NEED_VOLUME

    predictor, folder, strict = batch.predictor, batch.folder, batch.options.strict
    all_files = list(files)
    files, clashes = distinct_stems(files)
    if clashes and strict:
        raise DataError(clashes[0][1], clashes[0][0])
    model = model_label(predictor)

    def work(path: Path) -> dict:
        runtime.reset_peak_memory()
        extra = extra_for(path) if extra_for else {}
        if dicom_outputs:
            require_dicom_series(path, dicom_outputs)
        if is_volume(path):
            row = _predict_volume(batch, path, extra)
            if dicom_outputs:
                row.update(write_case_outputs(path, Path(row["mask"]), predictor.num_classes, dicom_outputs, folder.path, folder.check))
        elif batch.options.lungs_only:
            raise DataError(f"{LUNGS_NEED_VOLUME} (NIfTI, DICOM series or a stack of HU slices), not a 2D image", path)
        else:
            row = _predict_image(batch, path, extra)
        row["peak_memory_mb"] = round(runtime.peak_memory_mb(), 1)
        row["model"] = model
        return row

    report = for_each_file(runtime.shard(files), work, strict and not runtime.distributed, on_done)
    report = gather_report(runtime, report, files)
    if strict and report.failed:
        path, problem = report.failed[0]
        raise CovsegError(problem, path)
    report.failed = clashes + report.failed
    if earlier is not None:
        _write_index(folder.path, report, earlier, all_files)
    return report


def _checked_paths(folder: OutputFolder, path: Path, volume: bool) -> dict[str, Path]:
    from covseg.data.imageio import stem_of

    paths = output_paths(folder.path, stem_of(path), volume=volume)
    for target in paths.values():
        folder.check(target)
    return paths


def _predict_image(batch: _Batch, path: Path, extra: dict) -> dict:
    from covseg.data.imageio import write_image, write_mask

    predictor, folder = batch.predictor, batch.folder
    paths = _checked_paths(folder, path, volume=False)
    case = predict_case(predictor, path, batch.options, is_volume=False, **extra)
    image, pred = case.image, case.prediction
    write_mask(paths["mask"], pred.labels, scale_binary=predictor.num_classes == 1)
    if not batch.options.probs:
        paths["prob"] = ""  # type: ignore[assignment]
    elif pred.probs.ndim == 2:
        write_image(paths["prob"], np.round(pred.probs * 255.0), compress_level=FAST_PNG)
    else:
        from covseg.utils.atomic import write_with

        paths["prob"] = folder.check(paths["prob"].with_suffix(".npy"))
        write_with(paths["prob"], lambda p: np.save(p, pred.probs.astype(np.float16), allow_pickle=False))
    if batch.overlays is not None:
        write_image(paths["overlay"], batch.overlays(image, pred.labels), compress_level=FAST_PNG)
    row = {
        "input": str(path),
        "mask": str(paths["mask"]),
        "prob": str(paths["prob"]),
        "foreground_fraction": float((pred.labels > 0).mean()),
        **class_columns(pred.class_probs, getattr(predictor, "class_names", None)),
    }
    if batch.options.statistics:
        from covseg.data.imageio import read_spacing_2d

        try:
            stats = case.statistics(predictor.num_classes, pixel_spacing=read_spacing_2d(path))
        except DataError as exc:
            raise exc if exc.path else DataError(exc.problem, path) from None
        _write_case_statistics(row, paths, stats)
    return row


def _write_case_statistics(row: dict, paths: dict[str, Path], stats: dict) -> None:
    """``statistics/<stem>.json`` of one case, and its numbers in the row (for the table and the API)."""
    from covseg.utils.atomic import write_json

    stats = {"input": row["input"], "mask": row["mask"], **stats}
    row["statistics"] = stats
    row["statistics_file"] = str(write_json(paths["statistics"], stats))


def _predict_volume(batch: _Batch, path: Path, extra: dict) -> dict:
    from covseg.data.imageio import write_image, write_volume
    from covseg.data.intensity import to_unit
    from covseg.transforms.orientation import volume_to_slices

    predictor, folder, options = batch.predictor, batch.folder, batch.options
    paths = _checked_paths(folder, path, volume=True)
    try:
        case: CaseResult = predict_case(predictor, path, options, is_volume=True, **extra)
    except DataError as exc:  # the volume's own problem (no lungs in it): name the file, --strict included
        raise exc if exc.path else DataError(exc.problem, path) from None
    volume, affine, space, pred = case.image, case.affine, case.space, case.prediction
    write_volume(paths["mask"], pred.labels, affine, dtype="uint8")
    if options.probs:
        soft = pred.probs if pred.probs.ndim == 3 else np.moveaxis(pred.probs, 0, -1)
        write_volume(paths["prob"], soft, affine, dtype="scaled-uint8")
    else:
        paths["prob"] = ""  # type: ignore[assignment]
    if batch.overlays is not None:
        slices = volume_to_slices(volume, affine)
        label_slices = volume_to_slices(pred.labels, affine)
        z = int(np.argmax((label_slices > 0).sum(axis=(1, 2)))) if label_slices.any() else len(slices) // 2
        shown = to_unit(slices[z], space, options.window) * 255.0
        write_image(paths["overlay"], batch.overlays(shown, label_slices[z]), compress_level=FAST_PNG)
    voxel_ml = case.voxel_ml()
    row = {
        "input": str(path),
        "mask": str(paths["mask"]),
        "prob": str(paths["prob"]),
        "foreground_fraction": float((pred.labels > 0).mean()),
        "foreground_ml": float((pred.labels > 0).sum() * voxel_ml),
    }
    lungs = case.lung_mask
    if lungs is not None:
        row["lung_ml"] = float(lungs.sum() * voxel_ml)
        row["infected_percent_of_lungs"] = lung_involvement_percent(row["foreground_ml"], row["lung_ml"])
        if options.writes_lung_mask:
            row["lung_mask"] = str(write_volume(paths["lungs"], lungs, affine, dtype="uint8"))
    if options.statistics:
        _write_case_statistics(row, paths, case.statistics(predictor.num_classes))
    if batch.preview is not None:
        row["preview"] = str(write_image(paths["preview"], batch.preview(np.round(to_unit(volume, space, options.window) * 255.0), pred.labels, affine), compress_level=FAST_PNG))
    return row


def _write_statistics_table(out_dir: Path, report: BatchReport, earlier: EarlierIndex) -> None:
    """``statistics.csv``: a row per case and class, this run's cases added to the earlier runs'."""
    from covseg.data.imageio import stem_of
    from covseg.inference.statistics import TABLE_COLUMNS, table_rows

    new = [r for row in report.written if "statistics" in row for r in table_rows(stem_of(row["mask"]), row["input"], row["statistics"])]
    redone = {r["case"] for r in new}
    rows = [r for r in earlier.rows if str(r.get("case", "")) not in redone] + new
    if rows:
        write_csv(out_dir / "statistics.csv", rows, TABLE_COLUMNS)


def _write_index(out_dir: Path, report: BatchReport, earlier: EarlierIndex, files: list[Path]) -> None:
    """``predictions.csv`` and ``failed.txt``: this run's rows and failures added to the earlier runs'."""
    if not report.written and not report.failed:
        return
    rows, failed = earlier.merge(report, files)
    keys = ["input", "mask", "prob", "foreground_fraction", "foreground_ml", "seconds", "cpu_seconds", "peak_memory_mb", "model"]
    lung_keys = [k for k in ("lung_ml", "infected_percent_of_lungs", "lung_mask") if any(k in row for row in rows)]
    keys[5:5] = lung_keys + [k for k in ("dicom_seg", "rtstruct") if any(k in row for row in rows)]
    keys += list(dict.fromkeys(k for row in rows for k in row if k.startswith(("p_", "predicted_class"))))
    write_index(out_dir, "predictions.csv", rows, keys, failed)
