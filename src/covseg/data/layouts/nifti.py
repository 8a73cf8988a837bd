"""NIfTI volumes: ``images/`` + ``labels/`` or ``masks/``; nnU-Net ``imagesTr/labelsTr`` (and
``imagesTs/labelsTs``), channel files ``case_0000``, ``case_0001`` forming one case."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from covseg.data.imageio import NIFTI_SUFFIXES, stem_of, suffix_of
from covseg.data.index import DatasetIndex, Finding, finding
from covseg.data.layouts.common import (
    Layout,
    ReadOptions,
    attach_text_source,
    child_dir,
    dataset_json_info,
    list_files,
    match_partners,
    register_builtin,
)
from covseg.data.sample import CaseRecord
from covseg.data.text_sources import resolve_split
from covseg.errors import DataError

_CHANNEL_RE = re.compile(r"^(.*)_(\d{4})$")


def _nifti_groups(p: Path) -> dict[str, tuple[Path, Path | None]]:
    groups = {}
    if (tr := child_dir(p, "imagesTr")) is not None:
        groups["train"] = (tr, child_dir(p, "labelsTr"))
        if (ts := child_dir(p, "imagesTs")) is not None:
            groups["test"] = (ts, child_dir(p, "labelsTs"))
    elif (images := child_dir(p, "images")) is not None:
        groups[""] = (images, child_dir(p, "labels", "masks"))
    return groups


def _detect_nifti(p: Path) -> bool:
    if p.is_file():
        return suffix_of(p) in NIFTI_SUFFIXES
    groups = _nifti_groups(p)
    return any(list_files(images, NIFTI_SUFFIXES) for images, _ in groups.values())


def _nifti_splits(p: Path) -> list[str]:
    groups = _nifti_groups(p) if p.is_dir() else {}
    return list(groups) if len(groups) > 1 else []


def _read_nifti(root: Path, split: str | None, opts: ReadOptions) -> DatasetIndex:
    """NIfTI volumes: ``images/`` with ``labels/`` or ``masks/``, or nnU-Net's ``imagesTr/labelsTr``
    (``imagesTs/labelsTs`` as split ``test``). Channel files ``case_0000``, ``case_0001`` form one
    case (all listed in ``meta["channels"]``); ``dataset.json`` labels go to ``info``."""
    if root.is_file():
        rec = CaseRecord(stem_of(root), root)
        return DatasetIndex(root.parent, "nifti", [rec], split, False, True, [])
    groups = _nifti_groups(root)
    if not groups:
        raise DataError("no images/ or imagesTr/ folder", root)
    if split is not None and "" not in groups:
        key = resolve_split(split, list(groups))
        if key is None:
            raise DataError(f"no split {split!r} (splits: {', '.join(groups)})", root)
    else:
        key = "" if "" in groups else "train"
    image_dir, label_dir = groups[key]
    findings: list[Finding] = []
    files = list_files(image_dir, NIFTI_SUFFIXES)
    channelled = bool(files) and all(_CHANNEL_RE.match(stem_of(f)) for f in files)
    cases: dict[str, list[Path]] = {}
    for f in files:
        stem = stem_of(f)
        base = _CHANNEL_RE.match(stem).group(1) if channelled else stem  # type: ignore[union-attr]
        cases.setdefault(base, []).append(f)
    by_case = {case: paths[0] for case, paths in cases.items()}
    masks = match_partners(by_case, list_files(label_dir, NIFTI_SUFFIXES), "label volume", findings) if label_dir else {}
    records = []
    for case, paths in cases.items():
        meta: dict[str, Any] = {"channels": [str(p) for p in paths]} if len(paths) > 1 else {}
        records.append(CaseRecord(case, paths[0], masks.get(case), meta=meta))
    if label_dir is None:
        if records:
            findings.append(finding("unlabelled", image_dir, f"{len(records)} volumes without label volumes (no labels folder)"))
    else:
        findings += [finding("orphan_image", r.image, f"volume without a label volume in {label_dir.name}/") for r in records if r.mask is None]
    info = dataset_json_info(root, findings)
    index = DatasetIndex(root, "nifti", records, split if split is None else key, False, True, findings, info=info)
    return attach_text_source(index, split, opts)


NIFTI = register_builtin(
    Layout(
        "nifti",
        "NIfTI volumes: images/ + labels|masks/, nnU-Net imagesTr/labelsTr",
        _detect_nifti,
        _read_nifti,
        _nifti_splits,
    ),
    __name__,
)
