"""The one rule that decides the intensity space of every input scan: HU, 0..255 display or 0..1.

A CT model sees 0..1 intensities (:func:`covseg.transforms.intensity.to_unit`); how an input gets
there depends on what it holds, and a wrong guess is a silent wrong result (a 0..255 volume
windowed as if it were HU loses or invents lesions). :func:`intensity_space` decides, first from
the file's header (:func:`header_space`), then from the values:

1. covseg's own marker in a NIfTI header (``descrip`` ``covseg:intensity=<space>``, written by
   ``data convert --stack``) says what covseg stored;
2. a DICOM file or series of modality CT (or ``RescaleType`` HU) holds HU;
3. 8-bit and 16-bit image files (PNG, JPEG, BMP, unsigned TIFF) and stacks of them are display
   values (16-bit ones are scaled to 0..255 when read), and so is a NIfTI stored as unscaled uint8;
4. otherwise the values decide: anything below 0 or above 255 is HU, fractional values within
   0..1 are an already windowed 0..1 volume, the rest is 0..255 display.

The CLI (``predict``, ``lungmask``, ``data convert``), the Python API, the app and training all ask
this function; nothing else guesses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from covseg.transforms.intensity import (
    DISPLAY,
    DISPLAY_MAX,
    HU,
    LUNG_WINDOW,
    SPACES,
    UNIT,
    hu_window,
    to_unit,
)

__all__ = ["DISPLAY", "HU", "LUNG_WINDOW", "UNIT", "header_space", "hu_window", "intensity_space", "nifti_marker", "space_of", "to_unit"]

MARKER_PREFIX = "covseg:intensity="


def nifti_marker(space: str) -> bytes:
    """The NIfTI ``descrip`` covseg writes into a volume whose intensity space it knows."""
    if space not in SPACES:
        raise ValueError(f"unknown intensity space {space!r}")
    return f"{MARKER_PREFIX}{space}".encode()


def intensity_space(values: np.ndarray, header: str | None = None) -> str:
    """``hu``, ``display`` or ``unit`` for ``values`` (an image or volume); ``header`` is what the
    file's header said (:func:`header_space`), which wins over the values (rules in the module docstring)."""
    if header in SPACES:
        return header
    arr = np.asarray(values)
    if arr.size == 0:
        return DISPLAY
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if lo < 0.0 or hi > DISPLAY_MAX:
        return HU
    if hi <= 1.0 and arr.dtype.kind == "f" and not bool(np.all(arr == np.round(arr))):
        return UNIT
    return DISPLAY


def header_space(path: Any) -> str | None:
    """What the header of the file (or DICOM series folder, or slice stack) at ``path`` says about its
    intensities, or None when only the values can tell. Never raises: an unreadable header says nothing."""
    from covseg.data.imageio import IMAGE_SUFFIXES, NIFTI_SUFFIXES, suffix_of

    files = getattr(path, "files", None)
    if callable(getattr(path, "read_volume", None)):  # a stack of slice images: what its slices' header says
        return header_space(files[0]) if files else None
    p = Path(path)
    suffix = suffix_of(p)
    try:
        if p.is_dir():
            from covseg.data.dicom import series_files

            files = series_files(p)
            return _dicom_space(files[0]) if files else None
        if suffix == ".dcm" or (not p.suffix and _has_dicom_preamble(p)):
            return _dicom_space(p)
        if suffix in NIFTI_SUFFIXES:
            return _nifti_space(p)
        if suffix in (".tif", ".tiff"):
            return _tiff_space(p)
        if suffix in IMAGE_SUFFIXES:
            from PIL import Image

            with Image.open(p) as im:
                return None if im.mode in ("I", "F") and im.format != "PNG" else DISPLAY
    except Exception:
        return None
    return None


def space_of(path: Any, values: np.ndarray) -> str:
    """The intensity space of the input read from ``path`` as ``values``: header first, then values."""
    return intensity_space(values, header_space(path))


def _has_dicom_preamble(path: Path) -> bool:
    from covseg.data.dicom import is_dicom_file

    return is_dicom_file(path)


def _dicom_space(path: Path) -> str | None:
    import pydicom

    ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
    if str(getattr(ds, "Modality", "")).upper() == "CT" or str(getattr(ds, "RescaleType", "")).upper() == "HU":
        return HU
    return None


def _nifti_space(path: Path) -> str | None:
    import nibabel as nib

    img = nib.load(str(path))
    header = img.header
    descrip = bytes(np.asarray(header["descrip"]).tobytes()).split(b"\0")[0].decode("ascii", "replace").strip()
    if descrip.startswith(MARKER_PREFIX) and descrip[len(MARKER_PREFIX):] in SPACES:
        return descrip[len(MARKER_PREFIX):]
    slope, inter = header.get_slope_inter()
    unscaled = slope in (None, 1.0) and inter in (None, 0.0)
    if header.get_data_dtype() == np.uint8 and unscaled:
        return DISPLAY
    return None


def _tiff_space(path: Path) -> str | None:
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        dtype = tif.pages[0].dtype
    return DISPLAY if dtype is not None and np.dtype(dtype).kind == "u" else None
