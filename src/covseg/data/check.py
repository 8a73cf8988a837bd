"""Dataset validation behind ``covseg data check``: every file decoded, every pair compared.

What is an error, a warning or information is decided in one place, :data:`SEVERITY` in
:mod:`covseg.data.index`. In short: problems that would make training or evaluation wrong
(orphans, missing or unreadable files, size or geometry mismatches, grey-level masks, NaN,
missing text) are errors; empty masks and unlabelled images are warnings; text entries with
no image and multi-class masks are information.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from covseg.data.imageio import analyse_mask, is_volume, read_image, read_volume
from covseg.data.index import DatasetIndex, Finding, finding
from covseg.data.layouts import CONTAINER, detect_layout, find_split_folders, list_splits, open_dataset
from covseg.data.sample import CaseRecord
from covseg.errors import DataError

Progress = Callable[[int, int], None]


@dataclass
class CheckReport:
    """The result of checking a dataset (``parts`` holds one report per split when there are splits)."""

    root: Path
    layout: str
    split: str | None
    cases: int = 0
    pairs: int = 0
    unlabelled: int = 0
    with_text: int = 0
    has_text: bool = False
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0
    parts: list[CheckReport] = field(default_factory=list)

    def all_findings(self) -> list[Finding]:
        """Findings of this report and of its parts."""
        out = list(self.findings)
        for part in self.parts:
            out += part.all_findings()
        return out

    def count(self, severity: str) -> int:
        return sum(f.severity == severity for f in self.all_findings())

    def ok(self, strict: bool = False) -> bool:
        """No errors (and, with ``strict``, no warnings)."""
        return self.count("error") == 0 and (not strict or self.count("warning") == 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "layout": self.layout,
            "split": self.split,
            "cases": self.cases,
            "pairs": self.pairs,
            "unlabelled": self.unlabelled,
            "with_text": self.with_text,
            "has_text": self.has_text,
            "seconds": round(self.seconds, 3),
            "errors": self.count("error"),
            "warnings": self.count("warning"),
            "info": self.count("info"),
            "kinds": dict(Counter(f.kind for f in self.all_findings())),
            "findings": [f.to_dict() for f in self.findings],
            "parts": [p.to_dict() for p in self.parts],
        }


def check_dataset(
    path: str | Path,
    layout: str = "auto",
    split: str | None = None,
    text: Any = None,
    prompt: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    workers: int | None = None,
    **options: Any,
) -> CheckReport:
    """Check a dataset; a folder with splits is checked split by split.

    ``progress(split, done, total)`` is called as cases are checked. ``workers`` threads decode
    files in parallel (default: up to 4, bounded by the CPU count).
    """
    path = Path(path).expanduser()
    start = time.perf_counter()
    splits = list_splits(path, layout) if split is None and path.exists() else []
    if not splits:
        index = open_dataset(path, layout, split, text, prompt, **options)
        report = check_index(index, lambda done, total: progress(split or "", done, total) if progress else None, workers)
        report.seconds = time.perf_counter() - start
        return report
    parts = []
    for name in splits:
        part_start = time.perf_counter()
        index = open_dataset(path, layout, name, text, prompt, **options)
        part = check_index(index, (lambda n: lambda d, t: progress(n, d, t) if progress else None)(name), workers)
        part.seconds = time.perf_counter() - part_start
        parts.append(part)
    is_container = (detect_layout(path) if layout == "auto" else None) == CONTAINER
    layouts = sorted({p.layout for p in parts})
    report = CheckReport(
        path,
        layouts[0] if len(layouts) == 1 else "+".join(layouts),
        None,
        cases=sum(p.cases for p in parts),
        pairs=sum(p.pairs for p in parts),
        unlabelled=sum(p.unlabelled for p in parts),
        with_text=sum(p.with_text for p in parts),
        has_text=any(p.has_text for p in parts),
        parts=parts,
    )
    if is_container:
        datasets = {folder for folder, _ in find_split_folders(path).values()}
        for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if child not in datasets:
                report.findings.append(finding("ignored", child, "no dataset layout recognised here; not checked"))
    report.seconds = time.perf_counter() - start
    return report


def check_index(index: DatasetIndex, progress: Progress | None = None, workers: int | None = None) -> CheckReport:
    """Decode every file of an indexed dataset and return the findings, indexing ones first."""
    report = CheckReport(index.root, index.layout, index.split, has_text=index.has_text)
    report.findings = list(index.findings)
    report.cases = len(index.records)
    report.pairs = sum(r.mask is not None for r in index.records)
    report.unlabelled = report.cases - report.pairs
    report.with_text = sum(r.text is not None for r in index.records)
    text_reported = {f.path for f in index.findings if f.kind == "missing_text"}
    seen_images: dict[str, tuple[tuple[int, ...] | None, list[Finding]]] = {}  # CSV/CRIS rows share images
    workers = workers or min(4, os.cpu_count() or 1)
    total = len(index.records)
    done = 0
    results: list[list[Finding]] = []
    if workers > 1 and total > 8:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for found in pool.map(lambda r: check_record(r, index.has_text, seen_images), index.records):
                results.append(found)
                done += 1
                if progress:
                    progress(done, total)
    else:
        for rec in index.records:
            results.append(check_record(rec, index.has_text, seen_images))
            done += 1
            if progress:
                progress(done, total)
    for found in results:
        report.findings += [f for f in found if not (f.kind == "missing_text" and f.path in text_reported)]
    return report


def check_record(
    record: CaseRecord, has_text: bool = False, seen_images: dict[str, tuple[tuple[int, ...] | None, list[Finding]]] | None = None
) -> list[Finding]:
    """Findings for one case: readability, NaN, sizes, mask values, emptiness, text.

    ``seen_images`` caches image results by path, so an image shared by several cases
    (one row per target mask) is decoded and reported once.
    """
    found: list[Finding] = []
    if has_text and record.text is None:
        found.append(finding("missing_text", record.image, "no text for this image"))
    try:
        if is_volume(record.image):
            _check_volume_record(record, found)
        else:
            _check_image_record(record, found, {} if seen_images is None else seen_images)
    except Exception as exc:  # a file that breaks a reader in an unforeseen way is one finding, not the end of the check
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        found.append(finding("unreadable", record.image, f"unexpected {type(exc).__name__} while checking this case ({first})"))
    return found


def _check_image(path: Path) -> tuple[tuple[int, ...] | None, list[Finding]]:
    try:
        image = read_image(path, check_finite=False)
    except DataError as exc:
        return None, [finding("unreadable", path, exc.problem)]
    bad = int((~np.isfinite(image)).sum())
    return image.shape[:2], [finding("nan_volume", path, f"{bad} NaN or infinite pixels")] if bad else []


def _check_image_record(record: CaseRecord, found: list[Finding], seen: dict) -> None:
    key = str(record.image)
    if key in seen:
        shape, _ = seen[key]
    else:
        shape, image_findings = seen[key] = _check_image(Path(record.image))
        found += image_findings
    if shape is None:
        return
    slots: list[tuple[str, Path, bool]] = []
    if record.mask is not None:
        slots.append(("mask", Path(record.mask), True))
    if record.edge is not None:
        slots.append(("edge map", Path(record.edge), False))
    slots += [(f"{name} mask", Path(p), False) for name, p in record.masks.items()]
    for role, path, is_main in slots:
        try:
            info = analyse_mask(path)
        except DataError as exc:
            found.append(finding("unreadable", path, exc.problem))
            continue
        if info.labels.shape != shape:
            turned = " after its EXIF orientation (the file stores it turned)" if _exif_turned(Path(record.image)) else ""
            found.append(
                finding("size_mismatch", path, f"{role} is {_fmt(info.labels.shape)} but image {record.image} is {_fmt(shape)}{turned}")
            )
        if info.kind in ("ambiguous", "colour"):
            found.append(finding("non_binary_mask", path, _describe_values(role, info.kind, info.stored_values)))
        elif role == "edge map" and info.kind == "labels":
            found.append(finding("non_binary_mask", path, f"edge map holds {len(info.stored_values)} values {_values(info.stored_values)}; expected 0/1 or 0/255"))
        if is_main and info.is_empty:
            found.append(finding("empty_mask", path, "mask has no foreground"))
        if is_main and info.kind == "labels" and int(info.labels.max()) > 1:
            classes = tuple(v for v in info.stored_values if v)
            found.append(finding("multiclass_mask", path, f"class indices {_values(classes)} (read as labels, not binarised)"))


def _check_volume_record(record: CaseRecord, found: list[Finding]) -> None:
    channel_files = [Path(p) for p in record.meta.get("channels", [])] or [Path(record.image)]
    shape = None
    affine = None
    for path in channel_files:
        try:
            vol, _, aff = read_volume(path, check_finite=False)
        except DataError as exc:
            found.append(finding("unreadable", exc.path or path, exc.problem))
            return
        bad = int((~np.isfinite(vol)).sum())
        if bad:
            found.append(finding("nan_volume", path, f"{bad} NaN or infinite voxels"))
        if shape is None:
            shape, affine = vol.shape, aff
        elif vol.shape != shape:
            found.append(finding("size_mismatch", path, f"channel is {_fmt(vol.shape)} but {channel_files[0].name} is {_fmt(shape)}"))
    slots = [("mask", Path(record.mask), True)] if record.mask is not None else []
    if record.edge is not None:
        slots.append(("edge map", Path(record.edge), False))
    slots += [(f"{name} mask", Path(p), False) for name, p in record.masks.items()]
    for role, path, is_main in slots:
        try:
            arr, _, aff = read_volume(path, check_finite=False)
        except DataError as exc:
            found.append(finding("unreadable", exc.path or path, exc.problem))
            continue
        if arr.shape != shape:
            found.append(finding("size_mismatch", path, f"{role} is {_fmt(arr.shape)} but image {record.image} is {_fmt(shape)}"))
        elif affine is not None and not np.allclose(aff, affine, atol=1e-3):
            found.append(finding("geometry_mismatch", path, f"{role} affine differs from image {record.image}'s (orientation, spacing or origin)"))
        finite = np.isfinite(arr)
        if not finite.all():
            found.append(finding("nan_volume", path, f"{int((~finite).sum())} NaN or infinite voxels in {role}"))
            continue
        if arr.size and (arr.min() < 0 or not np.all(arr == np.round(arr))):
            found.append(finding("non_binary_mask", path, f"{role} holds non-integer or negative values ({arr.min():g}..{arr.max():g}); labels must be 0, 1, 2, ..."))
            continue
        if is_main and not arr.any():
            found.append(finding("empty_mask", path, "mask volume has no foreground"))
        if is_main and arr.max(initial=0) > 1:
            labels = np.unique(arr)
            labels = labels[labels > 0]
            found.append(finding("multiclass_mask", path, f"{labels.size} labels ({_values(tuple(int(v) for v in labels))})"))


def _exif_turned(path: Path) -> bool:
    """Whether an image file carries an EXIF rotation (which covseg applies when it reads the image)."""
    from PIL import Image

    from covseg.data.imageio import exif_rotation

    try:
        with Image.open(path) as im:
            return exif_rotation(im)
    except Exception:
        return False


def _fmt(shape: tuple[int, ...]) -> str:
    return "×".join(str(int(s)) for s in shape)


def _values(values: tuple, limit: int = 8) -> str:
    shown = ", ".join(_value(v) for v in values[:limit])
    return shown + (", …" if len(values) > limit else "")


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _describe_values(role: str, kind: str, values: tuple) -> str:
    if kind == "colour":
        return f"{role} has {len(values)}{'+' if len(values) >= 64 else ''} colours; read as foreground wherever not black"
    count = f"{len(values)}{'+' if len(values) >= 64 else ''}"
    return f"{role} holds {count} grey levels ({_values(values)}), not 0/1, 0/255 or class indices; read as binary at half range"
