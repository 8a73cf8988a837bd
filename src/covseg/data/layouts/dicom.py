"""DICOM series: one folder per series (the folder itself or sub-folders up to 4 deep), NIfTI
masks in ``masks/`` (or ``labels/``) or beside the series folder."""

from __future__ import annotations

import os
from pathlib import Path

from covseg.data.dicom import is_dicom_file
from covseg.data.imageio import NIFTI_SUFFIXES
from covseg.data.index import DatasetIndex, Finding, finding
from covseg.data.layouts.common import (
    Layout,
    ReadOptions,
    child_dir,
    list_files,
    natural_key,
    register_builtin,
)
from covseg.data.sample import CaseRecord
from covseg.errors import DataError


def _series_dirs(p: Path, max_depth: int = 4) -> list[Path]:
    out = []
    base_depth = len(p.parts)
    for dirpath, dirnames, filenames in os.walk(p):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d.lower() not in ("masks", "labels"))
        if len(Path(dirpath).parts) - base_depth > max_depth:
            dirnames[:] = []
            continue
        if any(is_dicom_file(Path(dirpath) / f) for f in filenames):
            out.append(Path(dirpath))
    return sorted(out, key=lambda d: [natural_key(part) for part in d.relative_to(p).parts])


def _detect_dicom(p: Path) -> bool:
    if not p.is_dir():
        return False
    try:
        with os.scandir(p) as it:
            entries = list(it)
    except OSError:
        return False
    if any(e.is_file() and is_dicom_file(Path(e.path)) for e in entries[:200]):
        return True
    for e in entries[:50]:
        if e.is_dir() and not e.name.startswith(".") and e.name.lower() not in ("masks", "labels", "images"):
            sub = Path(e.path)
            if any(is_dicom_file(f) for f in list(sub.iterdir())[:50]):
                return True
    return False


def _read_dicom(root: Path, split: str | None, opts: ReadOptions) -> DatasetIndex:
    """DICOM series: the folder itself, or one sub-folder per series (any depth up to 4).
    A series' mask is a NIfTI volume named after it in ``masks/`` (or ``labels/``) or beside
    the series folder (``<series>.nii.gz``, ``<series>_mask.nii.gz``)."""
    series = _series_dirs(root)
    if not series:
        raise DataError("no DICOM series found", root)
    mask_dir = child_dir(root, "masks", "labels")
    findings: list[Finding] = []
    records = []
    for s in series:
        case_id = s.name if s == root else s.relative_to(root).as_posix()
        flat = case_id.replace("/", "_")
        names = [f"{n}{suf}" for n in dict.fromkeys([flat, s.name, f"{s.name}_mask", f"{flat}_mask"]) for suf in NIFTI_SUFFIXES]
        candidates = [d / n for d in (mask_dir, s.parent) if d is not None for n in names]
        mask = next((c for c in candidates if c.is_file()), None)
        records.append(CaseRecord(case_id, s, mask, meta={"series_folder": str(s)}))
    if mask_dir is not None:
        used = {r.mask for r in records}
        for m in list_files(mask_dir, NIFTI_SUFFIXES):
            if m not in used:
                findings.append(finding("orphan_mask", m, "mask volume without a DICOM series of the same name"))
        findings += [finding("orphan_image", r.image, f"series without a mask volume in {mask_dir.name}/") for r in records if r.mask is None]
    elif not any(r.mask for r in records):
        findings.append(finding("unlabelled", root, f"{len(records)} series without mask volumes"))
    return DatasetIndex(root, "dicom", records, split, False, True, findings)


DICOM = register_builtin(
    Layout("dicom", "DICOM series folders, NIfTI masks in masks/ or beside", _detect_dicom, _read_dicom), __name__
)
