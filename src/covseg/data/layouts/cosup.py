"""Co-supervision (Hu et al. 2022): ``image/ mask/ mask_/`` (``mask_`` = edges), or numbered
``image1/ mask1/ mask_1/``."""

from __future__ import annotations

import re
from pathlib import Path

from covseg.data.index import DatasetIndex
from covseg.data.layouts.common import Layout, ReadOptions, read_paired_folders, register_builtin, subdirs
from covseg.errors import DataError

_COSUP_RE = re.compile(r"^(image|mask_|mask)(\d*)$", re.IGNORECASE)


def _cosup_dirs(p: Path) -> dict[str, dict[str, Path]]:
    groups: dict[str, dict[str, Path]] = {}
    if not p.is_dir():
        return groups
    for d in subdirs(p):
        m = _COSUP_RE.match(d.name)
        if m:
            groups.setdefault(m.group(2), {})[m.group(1).lower()] = d
    return {n: g for n, g in groups.items() if "image" in g and "mask" in g}


def _detect_cosup(p: Path) -> bool:
    return bool(_cosup_dirs(p))


def _read_cosup(root: Path, split: str | None, opts: ReadOptions) -> DatasetIndex:
    """``image/ mask/ mask_/`` (``mask_`` = edge ground truth); the numbered variant ``image1/ mask1/ mask_1/`` too."""
    groups = _cosup_dirs(root)
    if not groups:
        raise DataError("no image/ and mask/ folders", root)
    number = "" if "" in groups else sorted(groups)[0]
    g = groups[number]
    return read_paired_folders(root, "cosup", g["image"], g["mask"], g.get("mask_"), None, split, opts=opts)


COSUP = register_builtin(
    Layout("cosup", "co-supervision: image/ mask/ mask_/ (mask_ = edges)", _detect_cosup, _read_cosup), __name__
)
