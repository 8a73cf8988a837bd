"""Reading and writing images, masks and volumes, with one-line errors naming the file.

2D: PNG/JPG/TIF/BMP through Pillow (tifffile for multi-page or float TIFF), single-frame
DICOM through pydicom, ``.npy`` arrays. 3D: NIfTI through nibabel, DICOM series through
pydicom; spacing and affine are kept.

Masks are decoded once by :func:`analyse_mask`, which both the loader (:func:`read_mask`)
and ``covseg data check`` use, so a mask is never read one way and checked another.

The readers live by kind, this module dispatches between them and registers the built-in
:data:`~covseg.registry.FILE_FORMATS` entries beside them: :mod:`covseg.data.paths` (suffix,
stem, readable file), :mod:`covseg.data.image_files` (2D images, spacing, PNG/JPEG writers),
:mod:`covseg.data.mask_decoding` (mask encodings), :mod:`covseg.data.volume_files` (NIfTI,
DICOM series). Every name is importable from here as before.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# DICOM sniffing lives in covseg.data.dicom, which imports nothing from this module (no cycle);
# is_dicom_file stays importable from here as before.
from covseg.data.dicom import is_dicom_file, is_dicom_series
from covseg.data.formats import FileFormat, register_format, suffixes
from covseg.data.image_files import (
    EXIF_ORIENTATION,
    SPACING_KEY,
    _read_dicom_2d,
    _read_npy,
    _read_pil_image,
    _read_tiff,
    _read_tiff_image,
    bit_depth_scale,
    exif_rotation,
    image_size,
    read_image,
    read_spacing_2d,
    write_image,
    write_mask,
)

# private readers that covseg.metrics.evaluation imports from here (explicit re-export)
from covseg.data.image_files import _open_pil as _open_pil
from covseg.data.mask_decoding import MAX_CLASS_INDEX, MaskInfo, analyse_mask
from covseg.data.paths import require_file, stem_of, suffix_of
from covseg.data.volume_files import _read_nifti, read_label_volume, read_volume, write_volume
from covseg.registry import FILE_FORMATS

# The built-in file formats (covseg.data.formats), in the order of the suffix lists derived below.
register_format(
    FileFormat(
        "png",
        (".png",),
        "image",
        lambda p: _read_pil_image(p),
        pillow=True,
        write=lambda p, a, **kw: write_image(p, a, **kw),
        description="PNG (Pillow)",
    )
)
register_format(
    FileFormat(
        "jpeg",
        (".jpg", ".jpeg"),
        "image",
        lambda p: _read_pil_image(p),
        pillow=True,
        description="JPEG (Pillow)",
    )
)
register_format(
    FileFormat(
        "tiff",
        (".tif", ".tiff"),
        "image",
        _read_tiff_image,
        lambda p: _read_tiff(p),
        description="TIFF, single page (tifffile; deeper than 8 bits scaled to 0..255)",
    )
)
register_format(
    FileFormat(
        "bmp", (".bmp",), "image", lambda p: _read_pil_image(p), pillow=True, description="BMP (Pillow)"
    )
)
register_format(
    FileFormat(
        "dicom",
        (".dcm",),
        "either",
        lambda p: _read_dicom_2d(p)[0],
        listed=False,
        description="DICOM: one frame as a 2D image; a folder of them is a series (pydicom)",
    )
)
register_format(
    FileFormat("npy", (".npy",), "either", lambda p: _read_npy(p), description="NumPy array (no pickles)")
)
register_format(
    FileFormat(
        "nifti",
        (".nii", ".nii.gz"),
        "volume",
        lambda p: _read_nifti(p),
        write=lambda p, v, a, **kw: write_volume(p, v, a, **kw),
        description="NIfTI volume (nibabel)",
    )
)

# Built-in suffix lists, derived from the FILE_FORMATS registry (covseg.data.formats) when this
# module is imported; code that must also see formats registered later calls formats.suffixes().
IMAGE_SUFFIXES = suffixes("image")
VOLUME_SUFFIXES = suffixes("volume") + suffixes("either")
NIFTI_SUFFIXES = FILE_FORMATS.get("nifti").suffixes

__all__ = [
    "EXIF_ORIENTATION",
    "IMAGE_SUFFIXES",
    "MAX_CLASS_INDEX",
    "NIFTI_SUFFIXES",
    "SPACING_KEY",
    "VOLUME_SUFFIXES",
    "MaskInfo",
    "analyse_mask",
    "bit_depth_scale",
    "exif_rotation",
    "image_size",
    "is_dicom_file",
    "is_volume",
    "read_image",
    "read_label_volume",
    "read_mask",
    "read_spacing_2d",
    "read_volume",
    "require_file",
    "stem_of",
    "suffix_of",
    "write_image",
    "write_mask",
    "write_volume",
]


def is_volume(path: str | Path) -> bool:
    """True for volume files (NIfTI), DICOM series folders and slice stacks (:class:`covseg.data.stack.SliceStack`)."""
    if callable(getattr(path, "read_volume", None)):
        return True
    p = Path(path)
    return suffix_of(p) in suffixes("volume") or is_dicom_series(p)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask as a uint8 label map (0 = background); NIfTI masks give ``(X, Y, Z)``.

    Palette images give their indices; 1-bit, 0/1 and 0/255 images give 0/1; grey images
    whose values are small integers (0..31) are multi-class indices; any other grey image
    (anti-aliased 0..255) is binarised at half range; RGB(A) masks are foreground wherever a
    colour channel is non-zero (or, for black images, wherever alpha is non-zero).
    """
    path = Path(path)
    if is_volume(path):
        return read_label_volume(path)[0]
    return analyse_mask(path).labels
