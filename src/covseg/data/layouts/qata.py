"""QaTa-COV19 with captions (SGSeg): ``images/ masks/`` + ``captions.csv`` or
``annotations/annotation.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from covseg.data.index import DatasetIndex
from covseg.data.layouts.common import Layout, ReadOptions, child_dir, read_paired_folders, register_builtin
from covseg.errors import DataError


def _qata_annotation(p: Path) -> Path | None:
    for base in (p, p.parent):
        ann = base / "annotations" / "annotation.json"
        if ann.is_file():
            return ann
    return None


def _detect_qata(p: Path) -> bool:
    if child_dir(p, "images") is None:
        return False
    if (p / "captions.csv").is_file():
        return True
    ann = _qata_annotation(p)
    if ann is None:
        return False
    try:
        with ann.open(encoding="utf-8-sig") as fh:
            head = fh.read(2048)
    except OSError:
        return False
    return head.lstrip().startswith("{") and '"image_path"' in head and '"caption"' in head


def _read_qata(root: Path, split: str | None, opts: ReadOptions) -> DatasetIndex:
    """QaTa-COV19 with captions: ``captions.csv`` (name, caption, pulmonary_infection,
    infected_area, pseudo_label) or ``annotations/annotation.json`` (beside or one level up,
    the split chosen by this folder's name). The structured fields go to ``CaseRecord.meta``."""
    image_dir = child_dir(root, "images")
    if image_dir is None:
        raise DataError("no images/ folder", root)
    source: Any = root / "captions.csv" if (root / "captions.csv").is_file() else _qata_annotation(root)
    return read_paired_folders(
        root, "qata", image_dir, child_dir(root, "masks"), None, None, split, source, True, opts
    )


QATA = register_builtin(
    Layout(
        "qata",
        "QaTa-COV19: images/ masks/ captions.csv or annotations/annotation.json",
        _detect_qata,
        _read_qata,
        has_text=True,
    ),
    __name__,
)
