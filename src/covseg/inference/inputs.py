"""The inputs of a prediction run: a file, a folder of images, DICOM series, stacks of slices.

Kept apart from the predictor (which imports torch) so that ``covseg predict`` can list its inputs
before deciding whether it needs torch (:mod:`covseg.inference.onnx_start`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from covseg.errors import DataError


def list_inputs(
    path: Path,
    volumes: bool = False,
    stack_spacing: tuple[float, float, float] | None = None,
    series_folders: bool = False,
) -> list[Any]:
    """Inputs of a file or folder (sorted), with a clear error when empty: image and NIfTI files, a
    DICOM series folder (the folder itself; with ``series_folders`` also its sub-folders that are series).

    ``volumes`` (a volume run): slice images named ``NAME_<k>`` are stacked into one volume per NAME
    (:class:`covseg.data.stack.SliceStack`, ``stack_spacing`` mm, default 1 mm), since a volume run
    cannot segment them one by one.
    """
    from covseg.data.dicom import is_dicom_series
    from covseg.data.formats import suffixes
    from covseg.data.imageio import suffix_of

    if not path.exists():
        raise DataError("input not found", path)
    if path.is_file() or is_dicom_series(path):
        return [path]
    # broken links and link loops stay in the list: reading them gives a one-line problem, not silence
    files: list[Any] = sorted(
        p for p in path.iterdir() if (p.is_file() or p.is_symlink()) and suffix_of(p) in suffixes(listed=True)
    )
    series = []
    if series_folders:
        series = sorted(
            p
            for p in path.iterdir()
            if p.is_dir() and not p.is_symlink() and not p.name.startswith(".") and is_dicom_series(p)
        )
    if volumes:
        from covseg.data.stack import DEFAULT_SPACING, find_stacks

        stacks = find_stacks(path, stack_spacing or DEFAULT_SPACING)
        stacked = {f for s in stacks for f in s.files}
        files = [f for f in files if f not in stacked] + stacks
    files += series
    if not files:
        raise DataError("no images (PNG/JPG/TIF/BMP/NIfTI) or DICOM series in folder", path)
    return files
