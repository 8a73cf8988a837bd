"""DICOM files: recognising them (``.dcm`` or the ``DICM`` preamble) and reading a series with
pydicom (slices sorted along their normal, HU rescaled).

This module imports nothing from :mod:`covseg.data.imageio`; ``imageio`` imports it (and
re-exports :func:`is_dicom_file` and :func:`is_dicom_series`), so the two never form a cycle.
pydicom itself is imported only when a series is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from covseg.errors import DataError


def is_dicom_file(path: str | Path) -> bool:
    """True for ``.dcm`` files and extension-less files carrying the ``DICM`` preamble."""
    p = Path(path)
    if not p.is_file() or p.name.startswith("."):
        return False
    if p.name.lower().endswith(".dcm"):
        return True
    if p.suffix:
        return False
    try:
        with p.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_dicom_series(path: str | Path) -> bool:
    """True for a folder holding DICOM slices."""
    p = Path(path)
    return p.is_dir() and any(is_dicom_file(f) for f in p.iterdir())


def series_files(folder: str | Path) -> list[Path]:
    """The DICOM files of a series folder (``.dcm`` or ``DICM`` preamble; ``DICOMDIR`` skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("not a folder", folder)
    return sorted(p for p in folder.iterdir() if is_dicom_file(p) and p.name.upper() != "DICOMDIR")


def read_dicom_series(folder: str | Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """Read one series: ``(array (X, Y, Z) float32 HU, spacing mm, RAS 4×4 affine)``.

    The affine maps voxel indices to RAS millimetres (DICOM's LPS with x and y negated),
    matching what nibabel gives for the same scan stored as NIfTI. Slices are ordered by
    their position along the slice normal, not by file name.
    """
    import pydicom

    folder = Path(folder)
    files = series_files(folder)
    if not files:
        raise DataError("no DICOM files in folder", folder)
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), force=True)
            _ = ds.pixel_array
        except Exception as exc:
            raise DataError(f"unreadable DICOM ({type(exc).__name__}: {exc})", f) from None
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise DataError("DICOM slice without ImagePositionPatient/ImageOrientationPatient", f)
        if "PixelSpacing" not in ds:
            raise DataError("DICOM slice without PixelSpacing", f)
        slices.append((f, ds))
    uids = {getattr(ds, "SeriesInstanceUID", None) for _, ds in slices}
    if len(uids) > 1:
        raise DataError(f"folder mixes {len(uids)} series; give one series per folder", folder)
    orient = np.array(slices[0][1].ImageOrientationPatient, dtype=np.float64)
    shape = (int(slices[0][1].Rows), int(slices[0][1].Columns))
    pixel = [float(v) for v in slices[0][1].PixelSpacing]  # (row spacing, column spacing)
    for f, ds in slices[1:]:
        if not np.allclose(np.array(ds.ImageOrientationPatient, dtype=np.float64), orient, atol=1e-4):
            raise DataError(f"orientation (ImageOrientationPatient) of slice {f.name} differs from the rest of the series", f)
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise DataError(f"slice size {int(ds.Rows)}×{int(ds.Columns)} differs from {shape[0]}×{shape[1]}", f)
        other = [float(v) for v in ds.PixelSpacing]
        if not np.allclose(other, pixel, rtol=1e-4, atol=1e-6):
            raise DataError(
                f"PixelSpacing {other[0]:g}×{other[1]:g} mm of slice {f.name} differs from the first slice's "
                f"{pixel[0]:g}×{pixel[1]:g} mm (one series must share one pixel grid)",
                f,
            )
    row_dir, col_dir = orient[:3], orient[3:]
    normal = np.cross(row_dir, col_dir)  # only to order the slices: the slice step comes from their positions
    slices.sort(key=lambda item: float(np.dot(np.array(item[1].ImagePositionPatient, dtype=np.float64), normal)))
    positions = np.array([ds.ImagePositionPatient for _, ds in slices], dtype=np.float64)
    step = slice_step(positions, normal, slices, folder)
    vol = []
    for _, ds in slices:
        arr = ds.pixel_array.astype(np.float32)
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        vol.append(arr * slope + intercept)
    # pixel_array is (rows, columns); index i runs along columns (row_dir), j along rows (col_dir).
    data = np.stack(vol, axis=-1).transpose(1, 0, 2)  # (X=columns, Y=rows, Z)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * pixel[1]
    lps[:3, 1] = col_dir * pixel[0]
    lps[:3, 2] = step  # first to last slice: a gantry tilt keeps its shear
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return np.ascontiguousarray(data), (pixel[1], pixel[0], float(np.linalg.norm(step))), affine


def slice_step(positions: np.ndarray, normal: np.ndarray, slices: list, folder: Path) -> np.ndarray:
    """The vector (LPS mm) from one slice's origin to the next: ``(last - first) / (n - 1)`` from
    ImagePositionPatient, as dcm2niix and nibabel do, so a gantry-tilted series keeps its tilt (the step
    is then not along the slice normal). Slices must lie evenly on that line (no missing or duplicate
    slice); one slice steps along its normal by ``SliceThickness``."""
    if len(positions) == 1:
        return normal * float(getattr(slices[0][1], "SliceThickness", 1.0) or 1.0)
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    gaps = np.diff(positions @ normal)
    dz = float(np.dot(step, normal))
    if dz <= 0 or np.any(np.abs(gaps - dz) > 0.01 * max(dz, 1e-6) + 1e-3):
        raise DataError("DICOM slices are not evenly spaced (missing or duplicate slice?)", folder)
    expected = positions[0] + np.outer(np.arange(len(positions)), step)
    off = np.linalg.norm(positions - expected, axis=1)
    if float(off.max()) > 0.01 * float(np.linalg.norm(step)) + 1e-3:
        worst = int(np.argmax(off))
        raise DataError(f"slice origins do not lie on one line ({off[worst]:.2f} mm off it): not one volume", slices[worst][0])
    return step
