"""DICOM series reading with pydicom: slices sorted along their normal, HU rescaled."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from covseg.errors import DataError


def read_dicom_series(folder: str | Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """Read one series: ``(array (X, Y, Z) float32 HU, spacing mm, RAS 4×4 affine)``.

    The affine maps voxel indices to RAS millimetres (DICOM's LPS with x and y negated),
    matching what nibabel gives for the same scan stored as NIfTI.
    """
    import pydicom

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
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
        slices.append(ds)
    uids = {getattr(ds, "SeriesInstanceUID", None) for ds in slices}
    if len(uids) > 1:
        raise DataError(f"folder mixes {len(uids)} series; give one series per folder", folder)
    orient = np.array(slices[0].ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = orient[:3], orient[3:]
    normal = np.cross(row_dir, col_dir)
    slices.sort(key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, dtype=np.float64), normal)))
    positions = np.array([ds.ImagePositionPatient for ds in slices], dtype=np.float64)
    pixel = [float(v) for v in slices[0].PixelSpacing]  # (row spacing, column spacing)
    if len(slices) > 1:
        gaps = np.diff(positions @ normal)
        dz = float(np.median(gaps))
        if dz <= 0 or np.any(np.abs(gaps - dz) > 0.01 * max(dz, 1e-6) + 1e-3):
            raise DataError("DICOM slices are not evenly spaced (missing or duplicate slice?)", folder)
    else:
        dz = float(getattr(slices[0], "SliceThickness", 1.0) or 1.0)
    vol = []
    for ds in slices:
        arr = ds.pixel_array.astype(np.float32)
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        vol.append(arr * slope + intercept)
    # pixel_array is (rows, columns); index i runs along columns (row_dir), j along rows (col_dir).
    data = np.stack(vol, axis=-1).transpose(1, 0, 2)  # (X=columns, Y=rows, Z)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * pixel[1]
    lps[:3, 1] = col_dir * pixel[0]
    lps[:3, 2] = normal * dz
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return np.ascontiguousarray(data), (pixel[1], pixel[0], abs(dz)), affine
