"""Predict a folder of files: masks, soft maps, overlays; bad files are listed, not fatal.

The output folder is checked against the inputs first (:class:`covseg.utils.outputs.OutputFolder`)
and locked while the batch writes it; inputs whose outputs would share a name (``a.png`` and
``a.jpg``) are refused, not overwritten; a failed write (disk full, read-only folder) stops the
batch with one line. A second run into the same folder adds to its index: ``predictions.csv``
keeps the earlier rows of cases this run did not redo (:class:`EarlierIndex`).
"""

from __future__ import annotations

import contextlib
import csv
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from covseg.engine.runtime import Runtime
from covseg.errors import CovsegError, DataError, OutputError
from covseg.inference.predictor import BasePredictor, PostprocessOptions
from covseg.utils.atomic import write_text
from covseg.utils.outputs import OutputFolder, one_line, read_csv, write_csv


@dataclass
class BatchReport:
    """What a batch run wrote and which inputs failed (with their one-line reasons)."""

    written: list[dict] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def for_each_file(
    files: list[Path],
    work: Callable[[Path], dict],
    strict: bool = False,
    on_done: Callable[[], None] | None = None,
) -> BatchReport:
    """Run ``work(path) -> row`` on every file: a bad file is listed and skipped unless ``strict``;
    each row gets the file's seconds (and the process's CPU seconds: all threads).

    A ``CovsegError`` gives the file's one-line problem; any other exception raised on one file
    (a reader broken by a file nobody foresaw) is listed as such, so one file never costs the
    rest of the batch. An ``OutputError`` (disk full, read-only folder) stops the batch: every
    further file would fail the same way.
    """
    report = BatchReport()
    for path in files:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            row = work(path)
            row["seconds"] = round(time.perf_counter() - t0, 4)
            row["cpu_seconds"] = round(time.process_time() - c0, 4)
            report.written.append(row)
        except OutputError:
            raise
        except CovsegError as exc:
            if strict:
                raise
            report.failed.append((str(path), exc.problem if exc.path else str(exc)))
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            problem = f"unexpected {type(exc).__name__} while processing this file ({first})"
            if strict:
                raise DataError(problem, path) from None
            report.failed.append((str(path), problem))
        if on_done:
            on_done()
    return report


def distinct_stems(files: list[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files whose outputs get distinct names, and a failure line for each file of a clashing group.

    Outputs are named by stem (``a.png`` and ``a.jpg`` both give ``masks/a.png``); names that differ
    only in case clash too, as they would on case-insensitive disks.
    """
    from covseg.data.imageio import stem_of

    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(stem_of(f).casefold(), []).append(f)
    keep, failed = [], []
    for f in files:
        group = groups[stem_of(f).casefold()]
        if len(group) == 1:
            keep.append(f)
        else:
            others = ", ".join(g.name for g in group if g != f)
            failed.append((str(f), f"its outputs would overwrite those of {others} (same name without suffix); rename one"))
    return keep, failed


def write_failures(out_dir: Path, report: BatchReport) -> None:
    """``failed.txt``: one line per input that failed, with its reason."""
    if report.failed:
        write_text(out_dir / "failed.txt", "".join(failure_line(p, m) for p, m in report.failed))


def failure_line(path: str, problem: str) -> str:
    return f"{one_line(path)}: {one_line(problem)}\n"


_NUMBER = re.compile(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|-?(inf|nan)")


def _typed(text: str) -> object:
    """A cell read back from an index file: numbers as numbers (so the CSV writer keeps them numbers)."""
    if not _NUMBER.fullmatch(text):
        return text
    return int(text) if text.lstrip("-").isdigit() else float(text)


class EarlierIndex:
    """The index file (``predictions.csv``, ``confidence.csv``) and ``failed.txt`` of earlier runs into a folder.

    Read before a run starts; :meth:`merge` gives the earlier rows of cases the new run did not redo,
    followed by the new rows, so two runs into one folder (one after the other) lose no row. A
    case is keyed by ``key(row)``: the name of its output file, so ``-o out`` and ``-o ./out/`` agree.
    """

    def __init__(self, out_dir: Path, index_name: str, key: Callable[[dict], str]) -> None:
        self.index = Path(out_dir) / index_name
        self.failed_path = Path(out_dir) / "failed.txt"
        self.key = key
        self.rows: list[dict] = []
        self.failed_lines: list[str] = []
        try:
            if self.index.is_file():
                self.rows = [{k: _typed(v) for k, v in row.items()} for row in read_csv(self.index)]
            if self.failed_path.is_file():
                self.failed_lines = self.failed_path.read_text(encoding="utf-8", errors="surrogateescape").splitlines(keepends=True)
        except (OSError, csv.Error) as exc:
            raise OutputError(f"cannot read the earlier run's file to add to it ({exc}); move it away", self.index) from None

    def merge(self, report: BatchReport, inputs: list[Path]) -> tuple[list[dict], list[str]]:
        """(rows, failed.txt lines) of the earlier runs and ``report`` together; the later run wins per case."""
        redone = {self.key(row) for row in report.written}
        rows = [row for row in self.rows if self.key(row) not in redone] + report.written
        tried = tuple(f"{one_line(p)}: " for p in inputs)
        failed = [line for line in self.failed_lines if not line.startswith(tried)]
        return rows, failed + [failure_line(p, m) for p, m in report.failed]


def write_index(
    out_dir: Path, name: str, rows: list[dict], columns: list[str], failed: list[str], float_format: str | None = None
) -> None:
    """Write a batch's index file and ``failed.txt`` (removed when nothing failed)."""
    if rows:
        write_csv(out_dir / name, rows, columns, float_format)
    if failed:
        write_text(out_dir / "failed.txt", "".join(failed))
    else:
        (out_dir / "failed.txt").unlink(missing_ok=True)


def run_dirs_of(predictor: BasePredictor) -> list[Path]:
    """The run folders a predictor reads (one, or an ensemble's members)."""
    dirs = getattr(predictor, "run_dirs", None) or [getattr(predictor, "run_dir", None)]
    return [Path(d) for d in dirs if d is not None]


def model_label(predictor: BasePredictor) -> str:
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


def predict_files(
    predictor: BasePredictor,
    files: list[Path],
    out_dir: Path,
    tta_flip: bool = False,
    post: PostprocessOptions | None = None,
    window: tuple[float, float] | None = None,
    strict: bool = False,
    overlays: OverlayRenderer | None = None,
    extra_for: Callable[[Path], dict] | None = None,
    on_done: Callable[[], None] | None = None,
    batch_size: int = 8,
    runtime: Runtime | None = None,
    probs: bool = True,
    save_lung_mask: bool = False,
    statistics: bool = False,
    preview: PreviewRenderer | None = None,
    dicom_outputs: tuple[str, ...] = (),
) -> BatchReport:
    """Predict each file; a bad file is recorded and skipped unless ``strict``.

    ``overlays`` draws each prediction over its image into ``overlays/`` (None: no overlays);
    ``probs=False`` writes no soft maps (``probs/``), which for large volumes saves time and disk.
    With ``post.lungs_only`` a 2D image is a bad file (the lung mask needs a CT volume in HU), and
    each row has the volume's ``lung_ml`` and ``infected_percent_of_lungs``; ``save_lung_mask``
    writes that mask into ``lungs/``.
    ``statistics`` writes each case's :func:`covseg.inference.statistics.case_statistics` into
    ``statistics/<stem>.json`` (and the row's ``statistics``) and the batch's ``statistics.csv``;
    ``preview`` draws each volume's three-view picture into ``previews/<stem>.png``.
    Each row records the file's seconds and peak memory (CUDA: ``max_memory_allocated`` for the
    file; CPU: the process's peak resident memory so far). Under torchrun (``runtime`` with
    several processes) each process predicts its share of ``files`` and the main one writes
    ``predictions.csv`` with every row: each output is written exactly once. The folder is locked
    while the batch runs, and an earlier run's rows of other cases stay in ``predictions.csv``.
    ``dicom_outputs`` (``dicom-seg``, ``rtstruct``) also writes each DICOM series' mask as those
    objects (:mod:`covseg.inference.dicom_out`); any other input is then a bad file.
    """
    from covseg.inference.dicom_out import DICOM_OUTPUTS

    save_lung_mask = save_lung_mask and post is not None and post.lungs_only
    runtime = runtime or getattr(predictor, "runtime", None) or Runtime()
    folder = OutputFolder(
        out_dir, "predict", [*files, *run_dirs_of(predictor)],
        owned=("masks", "probs", "overlays", "predictions.csv", "failed.txt", *(("lungs",) if save_lung_mask else ()),
               *(("statistics", "statistics.csv") if statistics else ()), *(("previews",) if preview else ()),
               *(DICOM_OUTPUTS[kind][0] for kind in dicom_outputs)),
        legacy=("predictions.csv",),
    )
    folder.validate()
    with folder.lock() if runtime.is_main else contextlib.nullcontext():
        earlier = earlier_stats = None
        if runtime.is_main:
            folder.prepare()
            earlier = EarlierIndex(out_dir, "predictions.csv", key=lambda row: Path(str(row.get("mask", ""))).name)
            if statistics:
                earlier_stats = EarlierIndex(out_dir, "statistics.csv", key=lambda row: str(row.get("case", "")))
        runtime.barrier()
        report = _predict_all(
            predictor, files, folder, earlier, tta_flip, post, window, strict, overlays, extra_for, on_done, batch_size,
            runtime, probs, save_lung_mask, (statistics, preview), dicom_outputs,
        )  # fmt: skip
        if earlier_stats is not None:
            _write_statistics_table(folder.path, report, earlier_stats)
        return report


def _predict_all(
    predictor: BasePredictor, files: list[Path], folder: OutputFolder, earlier: EarlierIndex | None, tta_flip, post, window,
    strict, overlays, extra_for, on_done, batch_size, runtime: Runtime, probs: bool, save_lung_mask: bool,
    statistics: tuple[bool, PreviewRenderer | None] = (False, None),
    dicom_outputs: tuple[str, ...] = (),
) -> BatchReport:
    from covseg.data.imageio import is_volume
    from covseg.inference.dicom_out import require_dicom_series, write_case_outputs
    from covseg.inference.postprocess import LUNGS_NEED_VOLUME

    lungs_only = post is not None and post.lungs_only
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
            row = _predict_volume(predictor, path, folder, tta_flip, post, window, overlays, extra, batch_size, probs, save_lung_mask, statistics)
            if dicom_outputs:
                row.update(write_case_outputs(path, Path(row["mask"]), predictor.num_classes, dicom_outputs, folder.path, folder.check))
        elif lungs_only:
            raise DataError(f"{LUNGS_NEED_VOLUME} (NIfTI, DICOM series or a stack of HU slices), not a 2D image", path)
        else:
            row = _predict_image(predictor, path, folder, tta_flip, post, overlays, extra, probs, statistics[0])
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


def gather_report(runtime: Runtime, report: BatchReport, files: list[Path]) -> BatchReport:
    """Every process's rows, in the order of ``files`` (one process: the report itself)."""
    if not runtime.distributed:
        return report
    order = {str(f): i for i, f in enumerate(files)}
    parts = runtime.gather_objects((report.written, report.failed))
    written = sorted((row for rows, _ in parts for row in rows), key=lambda r: order.get(r.get("input", ""), 0))
    failed = sorted((f for _, fails in parts for f in fails), key=lambda f: order.get(f[0], 0))
    return BatchReport(written=written, failed=failed)


def _checked_paths(folder: OutputFolder, path: Path, volume: bool) -> dict[str, Path]:
    from covseg.data.imageio import stem_of

    paths = output_paths(folder.path, stem_of(path), volume=volume)
    for target in paths.values():
        folder.check(target)
    return paths


def _predict_image(
    predictor: BasePredictor, path: Path, folder: OutputFolder, tta, post, overlays, extra, probs: bool = True, statistics: bool = False
) -> dict:
    from covseg.data.imageio import read_image, write_image, write_mask
    from covseg.data.intensity import space_of

    paths = _checked_paths(folder, path, volume=False)
    image = read_image(path)
    pred = predictor.predict_image(image, tta_flip=tta, post=post, space=space_of(path, image), **extra)
    write_mask(paths["mask"], pred.labels, scale_binary=predictor.num_classes == 1)
    if not probs:
        paths["prob"] = ""  # type: ignore[assignment]
    elif pred.probs.ndim == 2:
        write_image(paths["prob"], np.round(pred.probs * 255.0))
    else:
        from covseg.utils.atomic import write_with

        paths["prob"] = folder.check(paths["prob"].with_suffix(".npy"))
        write_with(paths["prob"], lambda p: np.save(p, pred.probs.astype(np.float16), allow_pickle=False))
    if overlays is not None:
        write_image(paths["overlay"], overlays(image, pred.labels))
    row = {
        "input": str(path),
        "mask": str(paths["mask"]),
        "prob": str(paths["prob"]),
        "foreground_fraction": float((pred.labels > 0).mean()),
        **class_columns(pred.class_probs, getattr(predictor, "class_names", None)),
    }
    if statistics:
        from covseg.data.imageio import read_spacing_2d
        from covseg.inference.statistics import case_statistics

        try:
            stats = case_statistics(pred.labels, pixel_spacing=read_spacing_2d(path), intensities=image if image.ndim == 2 else None,
                                    space=space_of(path, image), num_classes=predictor.num_classes)  # fmt: skip
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


def class_columns(class_probs: np.ndarray | None, names: list[str] | None) -> dict:
    """``predicted_class`` and one ``p_<name>`` column per class of a joint model's prediction ({} without)."""
    if class_probs is None:
        return {}
    names = names or [f"class{c}" for c in range(len(class_probs))]
    return {"predicted_class": names[int(np.argmax(class_probs))], **{f"p_{n}": float(p) for n, p in zip(names, class_probs)}}


def _predict_volume(
    predictor: BasePredictor, path: Path, folder: OutputFolder, tta, post, window, overlays, extra, batch_size,
    probs: bool = True, save_lung_mask: bool = False, statistics: tuple[bool, PreviewRenderer | None] = (False, None),
) -> dict:
    from covseg.data.imageio import read_volume, write_image, write_volume
    from covseg.transforms.orientation import volume_to_slices

    paths = _checked_paths(folder, path, volume=True)
    from covseg.data.intensity import space_of

    volume, _, affine = read_volume(path)
    space = space_of(path, volume)
    try:
        pred = predictor.predict_volume(volume, affine, tta_flip=tta, post=post, window=window, batch_size=batch_size, space=space, **extra)
    except DataError as exc:  # the volume's own problem (no lungs in it): name the file, --strict included
        raise exc if exc.path else DataError(exc.problem, path) from None
    write_volume(paths["mask"], pred.labels, affine, dtype="uint8")
    if probs:
        soft = pred.probs if pred.probs.ndim == 3 else np.moveaxis(pred.probs, 0, -1)
        write_volume(paths["prob"], soft, affine, dtype="scaled-uint8")
    else:
        paths["prob"] = ""  # type: ignore[assignment]
    if overlays is not None:
        from covseg.data.intensity import to_unit

        slices = volume_to_slices(volume, affine)
        label_slices = volume_to_slices(pred.labels, affine)
        z = int(np.argmax((label_slices > 0).sum(axis=(1, 2)))) if label_slices.any() else len(slices) // 2
        shown = to_unit(slices[z], space, window) * 255.0
        write_image(paths["overlay"], overlays(shown, label_slices[z]))
    from covseg.transforms.volume import voxel_volume_ml

    voxel_ml = voxel_volume_ml(affine)
    row = {
        "input": str(path),
        "mask": str(paths["mask"]),
        "prob": str(paths["prob"]),
        "foreground_fraction": float((pred.labels > 0).mean()),
        "foreground_ml": float((pred.labels > 0).sum() * voxel_ml),
    }
    lungs = pred.meta.get("lung_mask")
    if lungs is not None:
        row["lung_ml"] = float(lungs.sum() * voxel_ml)
        row["infected_percent_of_lungs"] = lung_involvement_percent(row["foreground_ml"], row["lung_ml"])
        if save_lung_mask:
            row["lung_mask"] = str(write_volume(paths["lungs"], lungs, affine, dtype="uint8"))
    if statistics[0]:
        from covseg.inference.statistics import case_statistics

        stats = case_statistics(pred.labels, affine=affine, intensities=volume, space=space,
                                num_classes=predictor.num_classes, lungs=lungs)  # fmt: skip
        _write_case_statistics(row, paths, stats)
    if statistics[1] is not None:
        from covseg.data.intensity import to_unit

        row["preview"] = str(write_image(paths["preview"], statistics[1](np.round(to_unit(volume, space, window) * 255.0), pred.labels, affine)))
    return row


def lung_involvement_percent(infected_ml: float, lung_ml: float) -> float:
    """Infected volume as a percentage of the lung mask's volume (the share CT severity scores grade).

    The lung mask is the classical air-based one, which can leave dense consolidation out, so on
    such scans this overstates the share (it can pass 100 with ``--lung-margin`` > 0)."""
    return float(100.0 * infected_ml / lung_ml) if lung_ml > 0 else 0.0


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
