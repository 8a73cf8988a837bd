"""The generic layout: ``images/`` + ``masks/`` (or ``labels/``), ``edges/``, ``masks_<name>/``,
``texts.json``, paired by stem. Detected last: most other layouts also have an ``images/``."""

from __future__ import annotations

from pathlib import Path

from covseg.data.index import DatasetIndex
from covseg.data.layouts.common import (
    Layout,
    ReadOptions,
    child_dir,
    list_files,
    read_paired_folders,
    register_builtin,
    subdirs,
)
from covseg.errors import DataError


def _detect_folder(p: Path) -> bool:
    images = child_dir(p, "images")
    return images is not None and bool(list_files(images))


def _read_folder(root: Path, split: str | None, opts: ReadOptions) -> DatasetIndex:
    """Generic ``images/`` + ``masks/`` (or ``labels/``) paired by stem; ``edges/``; every
    ``masks_<name>/`` becomes ``CaseRecord.masks[name]`` (``masks_multiclass`` → ``"multiclass"``);
    ``texts.json`` (``{stem: text}``, as ``covseg data convert`` writes it) gives texts. Images
    without a mask folder are an unlabelled pool (a warning, not an error)."""
    image_dir = child_dir(root, "images")
    if image_dir is None:
        raise DataError("no images/ folder", root)
    extra = {}
    for d in subdirs(root):
        low = d.name.lower()
        if low.startswith("masks_") and len(low) > 6:
            extra[d.name[6:].lower()] = d
    texts = root / "texts.json"
    return read_paired_folders(
        root, "folder", image_dir, child_dir(root, "masks", "labels"), child_dir(root, "edges"), extra, split,
        texts if texts.is_file() else None, False, opts,
    )


FOLDER = register_builtin(
    Layout("folder", "generic: images/ masks/ [edges/ masks_<name>/ texts.json] paired by stem", _detect_folder, _read_folder),
    __name__,
)
