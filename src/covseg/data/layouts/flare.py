"""FLARE22 (the SemiSeg-CSSN abdominal-organ data): ``train_images/*_0000.nii.gz`` with
``train_mask/*.nii.gz``, unlabelled ``trainu_images/``, and maybe ``validation_images/``
(with ``validation_mask/`` where its labels are at hand).

Splits: ``train`` (labelled), ``validation`` (labelled or not) and ``unlabelled`` (aliases
``unlabeled``, ``trainu``, ``u``). Reading the folder without a split gives its labelled splits
only, so ``data.root`` trains on labelled cases and ``semi.unlabeled: {root: FOLDER, split:
unlabelled}`` feeds the semi-supervised trainers (``cps`` on volumes) with ``trainu_images``.
Masks are multi-class label maps (FLARE22: 13 organs, labels 1..13).
"""

from __future__ import annotations

import re
from pathlib import Path

from covseg.data.imageio import NIFTI_SUFFIXES, stem_of
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
from covseg.errors import DataError

_CHANNEL_RE = re.compile(r"^(.*)_(\d{4})$")
#: split name -> (image folder, mask folder or None)
_FOLDERS = {
    "train": ("train_images", "train_mask"),
    "validation": ("validation_images", "validation_mask"),
    "unlabelled": ("trainu_images", None),
}
_ALIASES = {
    "train": "train", "training": "train", "tr": "train",
    "validation": "validation", "valid": "validation", "val": "validation",
    "unlabelled": "unlabelled", "unlabeled": "unlabelled", "trainu": "unlabelled", "u": "unlabelled",
}


def _groups(p: Path) -> dict[str, tuple[Path, Path | None]]:
    """The splits present in ``p``: ``{split: (image folder, mask folder or None)}``."""
    out: dict[str, tuple[Path, Path | None]] = {}
    for split, (images, masks) in _FOLDERS.items():
        folder = child_dir(p, images)
        if folder is not None:
            out[split] = (folder, child_dir(p, masks) if masks else None)
    return out


def _detect_flare(p: Path) -> bool:
    """A folder with ``train_images/`` holding NIfTI volumes and a ``train_mask/`` beside it."""
    if not p.is_dir():
        return False
    train = _groups(p).get("train")
    return train is not None and train[1] is not None and bool(list_files(train[0], NIFTI_SUFFIXES))


def _labelled_splits(p: Path) -> list[str]:
    return [s for s, (_, masks) in _groups(p).items() if masks is not None]


def _flare_splits(p: Path) -> list[str]:
    labelled = _labelled_splits(p) if p.is_dir() else []
    return labelled if len(labelled) > 1 else []


def _read_flare(root: Path, split: str | None, opts: ReadOptions) -> DatasetIndex:
    """The cases of one split (default ``train``); channel files ``case_0000`` form case ``case``."""
    groups = _groups(root)
    key = "train" if split is None else _ALIASES.get(split.lower(), split.lower())
    if key not in groups:
        raise DataError(f"no split {split!r} (splits: {', '.join(groups)})", root)
    image_dir, mask_dir = groups[key]
    findings: list[Finding] = []
    cases: dict[str, list[Path]] = {}
    for f in list_files(image_dir, NIFTI_SUFFIXES):
        match = _CHANNEL_RE.match(stem_of(f))
        cases.setdefault(match.group(1) if match else stem_of(f), []).append(f)
    by_case = {case: paths[0] for case, paths in cases.items()}
    masks = match_partners(by_case, list_files(mask_dir, NIFTI_SUFFIXES), "label volume", findings) if mask_dir else {}
    records = [
        CaseRecord(case, paths[0], masks.get(case), meta={"channels": [str(p) for p in paths]} if len(paths) > 1 else {})
        for case, paths in cases.items()
    ]
    if mask_dir is None:
        if records and key != "unlabelled":
            findings.append(finding("unlabelled", image_dir, f"{len(records)} volumes without label volumes"))
    else:
        findings += [finding("orphan_image", r.image, f"volume without a label volume in {mask_dir.name}/") for r in records if r.mask is None]
    info = dataset_json_info(root, findings)
    index = DatasetIndex(root, "flare", records, split if split is None else key, False, True, findings, info=info)
    return attach_text_source(index, split, opts)


FLARE = register_builtin(
    Layout(
        "flare",
        "FLARE22 / SemiSeg-CSSN: train_images/*_0000.nii.gz + train_mask/, unlabelled trainu_images/, validation_images/",
        _detect_flare,
        _read_flare,
        _flare_splits,
    ),
    __name__,
)
