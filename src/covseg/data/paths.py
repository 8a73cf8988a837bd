"""A file's suffix and stem, and the one-line refusal of a path that is not a readable file.

Shared by every reader and writer of :mod:`covseg.data.imageio` (and importable from there):
kept apart so the per-kind modules (2D images, masks, volumes) need nothing from the dispatch.
"""

from __future__ import annotations

from pathlib import Path

from covseg.errors import DataError


def suffix_of(path: str | Path) -> str:
    """Lower-case suffix, treating ``.nii.gz`` as one."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def stem_of(path: str | Path) -> str:
    """File name without its (possibly double) suffix."""
    name = Path(path).name
    suf = suffix_of(path)
    return name[: -len(suf)] if suf and name.lower().endswith(suf) else name


def require_file(path: Path) -> None:
    """One line when ``path`` is not a readable file: missing, a broken link or link loop, a folder."""
    if path.is_file():
        return
    if path.is_symlink():
        raise DataError("broken symbolic link (its target is missing, or links form a loop)", path)
    if path.is_dir():
        raise DataError("a folder, not a file", path)
    raise DataError("file not found", path)
