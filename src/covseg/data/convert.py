"""Dataset conversion behind ``covseg data convert``: between 2D layouts, and volumes to slices.

Targets: ``folder`` (``images/ masks/ edges/ masks_<name>/``), ``infnet`` (``Imgs/ GT/ Edge/``)
and ``cosup`` (``image/ mask/ mask_/``). A volumetric source (NIfTI, DICOM) is cut into axial
PNG slices on the way, through an HU window, shown in the radiological convention (see
:func:`axial_slices`).

Rules: inputs are never modified (the destination may not lie inside the source or around
it); every file is written atomically; a case that fails is listed and the batch goes on.
Images are copied byte for byte where the target allows it; masks already stored as 0/255
(or as class indices) are copied, others are re-encoded as 0/255 PNG.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from covseg.data.convert_cases import TARGETS, ConvertReport, _convert_image, _convert_volume, _Options
from covseg.data.index import DatasetIndex
from covseg.data.layouts import list_splits, open_dataset
from covseg.data.sample import CaseRecord
from covseg.data.slicing import WINDOWS, apply_window, axial_slices, parse_window
from covseg.errors import CovsegError, DataError, OutputError
from covseg.utils.atomic import write_json
from covseg.utils.outputs import OutputFolder, write_csv

__all__ = [
    "TARGETS",
    "WINDOWS",
    "ConvertReport",
    "apply_window",
    "axial_slices",
    "convert_dataset",
    "parse_window",
]


def _check_destination(src: Path, dst: Path, overwrite: bool) -> None:
    s, d = src.resolve(), dst.resolve()
    if s == d or s in d.parents or d in s.parents:
        raise DataError(
            f"destination must lie outside the source (source: {src}) so inputs are never modified", dst
        )
    if d.exists() and not d.is_dir():
        raise DataError("destination exists and is not a folder", dst)
    if d.exists() and any(d.iterdir()) and not overwrite:
        raise DataError("destination folder is not empty (use --overwrite to write into it)", dst)


def convert_dataset(
    src: str | Path,
    dst: str | Path,
    to: str,
    *,
    layout: str = "auto",
    split: str | None = None,
    window: str | tuple[float, float] | None = "lung",
    labels: list[int] | None = None,
    orientation: str = "radiological",
    skip_empty: bool = False,
    derive_edges: bool | None = None,
    mask: str | Path | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ConvertReport:
    """Convert the dataset at ``src`` into layout ``to`` under ``dst`` (splits go to ``dst/<split>/``).

    ``window`` (volumes): HU window name or ``(low, high)``; ``labels``: label values of a
    multi-label mask volume that form the foreground (others → background); ``skip_empty``:
    write only slices whose mask has foreground; ``derive_edges``: write edge maps derived from
    the masks where the source has none (default: yes for ``infnet`` and ``cosup``, which train
    with edges); ``mask``: a mask volume for a single NIfTI ``src``.
    """
    if to not in TARGETS:
        raise DataError(f"unknown target layout {to!r} (known: {', '.join(TARGETS)})")
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.exists():
        raise DataError("source not found", src)
    _check_destination(src, dst, overwrite)
    report = ConvertReport(src, dst, to)
    derive = derive_edges if derive_edges is not None else to in ("infnet", "cosup")
    options = _Options(to, parse_window(window), labels, orientation, skip_empty, derive)
    splits = list_splits(src, layout) if split is None and src.is_dir() else []
    jobs: list[tuple[DatasetIndex, Path]] = []
    if splits:
        jobs = [(open_dataset(src, layout, s), dst / s) for s in splits]
    else:
        index = open_dataset(src, layout, split)
        if mask is not None:
            if len(index.records) != 1:
                raise DataError("--mask goes with a single-volume source", src)
            index.records[0].mask = Path(mask)
        jobs = [(index, dst)]
    # a pair list may name files anywhere, the destination included: no output may replace one of them
    options.guard = OutputFolder(
        dst, "data convert", [p for index, _ in jobs for rec in index.records for p in _input_files(rec)]
    )
    total = sum(len(index.records) for index, _ in jobs)
    done = 0
    for index, out in jobs:
        provenance: list[dict[str, Any]] = []
        texts: dict[str, str] = {}
        for rec in index.records:
            name = rec.case_id.rsplit("/", 1)[-1]
            options.case_files = []
            try:
                if index.volumetric:
                    provenance += _convert_volume(rec, name, out, options, report)
                else:
                    _convert_image(rec, name, out, options, report)
                if rec.text is not None:
                    texts[name] = rec.text
            except (CovsegError, OSError, ValueError) as exc:
                if isinstance(exc, OutputError):
                    raise  # disk full, read-only destination: every further case would fail too
                report.failed.append((rec.case_id, str(exc)))
                for path in options.case_files:  # no half-written case: its other files would be orphans
                    path.unlink(missing_ok=True)
                report.written -= len(options.case_files)
            report.cases += 1
            done += 1
            if progress:
                progress(done, total)
        if provenance:
            write_csv(options.guard.check(out / "slices.csv"), provenance)
            report.written += 1
        if texts:
            write_json(options.guard.check(out / "texts.json"), texts)
            report.written += 1
            reread = " (the folder layout reads it back)" if to == "folder" else ""
            report.notes.append(f"{len(texts)} texts written to {out / 'texts.json'}{reread}")
    if options.uncarried:
        report.notes.append(
            f"not carried to {to}: " + ", ".join(f"{k} ({v})" for k, v in sorted(options.uncarried.items()))
        )
    if options.reencoded:
        report.notes.append(
            f"{options.reencoded} masks re-encoded as PNG (0/255 for binary; the source stored them differently)"
        )
    return report


def _input_files(rec: CaseRecord) -> list[Path]:
    """Every file a case reads: image (and channel files), mask, edge, extra masks."""
    files = [Path(rec.image), *(Path(p) for p in rec.meta.get("channels", []))]
    files += [Path(p) for p in (rec.mask, rec.edge) if p is not None]
    return files + [Path(p) for p in rec.masks.values()]
