"""3D volume files: NIfTI (nibabel) and DICOM series read with their spacing and affine, NIfTI written.

Geometry is checked on reading (positive voxel size, a finite, invertible affine) so volumes in ml
and distances in mm are never silently wrong. Callers import these names from
:mod:`covseg.data.imageio`, which registers the NIfTI format with these readers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from covseg.data.dicom import read_dicom_series
from covseg.data.formats import format_of
from covseg.data.paths import require_file, suffix_of
from covseg.errors import DataError
from covseg.registry import FILE_FORMATS
from covseg.utils.atomic import write_with


def read_label_volume(path: str | Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """Read a 3D label volume as uint8 (values must be whole numbers 0..255)."""
    arr, spacing, affine = read_volume(path)
    if arr.size and (arr.min() < 0 or arr.max() > 255 or not np.all(arr == np.round(arr))):
        raise DataError(
            f"label volume values must be whole numbers 0..255 (found {arr.min():g}..{arr.max():g})", path
        )
    return arr.astype(np.uint8), spacing, affine


def read_volume(
    path: str | Path, *, check_finite: bool = True
) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """Read a NIfTI file or DICOM series: ``(array (X, Y, Z) float32, spacing mm, 4×4 affine)``.

    With ``check_finite`` (default) a volume holding NaN or infinite voxels is refused. A slice
    stack (:class:`covseg.data.stack.SliceStack`) reads its slices.
    """
    stack_reader = getattr(path, "read_volume", None)
    path = Path(path)
    if callable(stack_reader):
        arr, spacing, affine = stack_reader()
    elif path.is_dir():
        arr, spacing, affine = read_dicom_series(path)
    else:
        fmt = format_of(suffix_of(path))
        reader = (
            fmt.read if fmt is not None and fmt.kind == "volume" and fmt.read is not None else _read_nifti
        )
        arr, spacing, affine = reader(path)
    _check_geometry(path, spacing, affine)
    if check_finite and not np.isfinite(arr).all():
        raise DataError(f"volume contains {int((~np.isfinite(arr)).sum())} NaN or infinite voxels", path)
    return arr, spacing, affine


def _read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """A NIfTI file's ``(array (X, Y, Z) float32, spacing mm, affine)``; refuses a non-positive header voxel size."""
    require_file(path)
    try:
        import nibabel as nib

        with _quiet_nibabel():
            img = nib.load(str(path))
            arr = np.asarray(img.dataobj, dtype=np.float32)
            affine = np.asarray(img.affine, dtype=np.float64)
            header_zooms = _raw_pixdim(img, path)
            spacing = tuple(float(s) for s in img.header.get_zooms()[:3])
    except Exception as exc:
        raise DataError(f"unreadable NIfTI ({type(exc).__name__}: {exc})", path) from None
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise DataError(f"expected a 3D volume, got shape {arr.shape}", path)
    if header_zooms is not None and not (np.all(np.isfinite(header_zooms)) and np.all(header_zooms > 0)):
        raise DataError(
            f"voxel size {[float(z) for z in header_zooms]} in the header (pixdim) is not positive: "
            "volumes in ml and distances in mm would be wrong",
            path,
        )
    return arr, spacing, affine


def _check_geometry(path: Path, spacing: tuple[float, ...], affine: np.ndarray) -> None:
    """Refuse a volume whose voxel size or voxel-to-world matrix cannot place it in space."""
    if len(spacing) < 3 or not all(np.isfinite(s) and s > 0 for s in spacing[:3]):
        raise DataError(
            f"voxel size {list(spacing)} is not positive: volumes and distances would be wrong", path
        )
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise DataError("the affine (voxel-to-world matrix) holds NaN or infinite values", path)
    if abs(float(np.linalg.det(a[:3, :3]))) < 1e-12 * max(1.0, float(np.abs(a[:3, :3]).max()) ** 3):
        raise DataError(
            "the affine (voxel-to-world matrix) is singular: the volume's axes cannot be placed", path
        )


def _raw_pixdim(img, path: Path) -> np.ndarray | None:
    """The voxel size as stored in a NIfTI file's header (nibabel silently replaces zeros by 1 when loading)."""
    import nibabel as nib

    if (
        not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image))
        or suffix_of(path) not in FILE_FORMATS.get("nifti").suffixes
    ):
        return None
    with nib.openers.ImageOpener(str(path)) as f:
        raw = type(img.header).from_fileobj(f, check=False)
    return np.asarray(raw["pixdim"][1:4], dtype=np.float64)


class _quiet_nibabel:
    """Silence nibabel's log lines while reading (a damaged header is reported by covseg in one line)."""

    def __enter__(self):
        import logging

        self.logger = logging.getLogger("nibabel")
        self.level = self.logger.level
        self.logger.setLevel(logging.CRITICAL)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def write_volume(
    path: str | Path,
    volume: np.ndarray,
    affine: np.ndarray,
    dtype: str | None = None,
    *,
    descrip: bytes | None = None,
) -> Path:
    """Write a NIfTI volume atomically with the given affine.

    ``dtype="scaled-uint8"`` stores a float map (probabilities) as uint8 with the NIfTI slope and
    intercept that nibabel picks, a quarter of float32's size; readers get floats back.
    ``descrip`` goes into the header (covseg's intensity marker, :func:`covseg.data.intensity.nifti_marker`).
    """
    import nibabel as nib

    arr = np.asarray(volume)
    scaled = dtype == "scaled-uint8"
    if scaled:
        arr = arr.astype(np.float32)
    elif dtype is not None:
        arr = arr.astype(dtype)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    if scaled:
        img.set_data_dtype(np.uint8)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    if descrip is not None:
        img.header["descrip"] = descrip
    return write_with(path, lambda p: nib.save(img, str(p)))
