"""Inf-Net: ``Imgs/ GT/ Edge/`` (``Prior/``, ``GT-1/``, ``GT-2/``, ``GT-Multiclass/`` as named masks)."""

from __future__ import annotations

from pathlib import Path

from covseg.data.index import DatasetIndex
from covseg.data.layouts.common import (
    INFNET_MASK_DIRS,
    Layout,
    ReadOptions,
    child_dir,
    read_paired_folders,
    register_builtin,
)
from covseg.errors import DataError


def _detect_infnet(p: Path) -> bool:
    return child_dir(p, "Imgs") is not None


def _read_infnet(root: Path, split: str | None, opts: ReadOptions) -> DatasetIndex:
    """Inf-Net ``Imgs/ GT/ Edge/``; ``Prior/`` (Semi-Inf-Net's infection prior, MultiClassInfection-Train)
    and ``GT-1/``/``GT-2/`` (the per-class masks of MultiClassInfection-Test) become named masks.
    ``GT-Multiclass/`` is covseg's own name for a multi-class mask kept beside a binary ``GT/``."""
    image_dir = child_dir(root, "Imgs")
    if image_dir is None:
        raise DataError("no Imgs/ folder", root)
    extra = {name: d for name, folder in INFNET_MASK_DIRS.items() if (d := child_dir(root, folder)) is not None}
    return read_paired_folders(root, "infnet", image_dir, child_dir(root, "GT"), child_dir(root, "Edge"), extra, split, opts=opts)


INFNET = register_builtin(
    Layout("infnet", "Inf-Net: Imgs/ GT/ Edge/ (Prior/, GT-1/, GT-2/)", _detect_infnet, _read_infnet), __name__
)
