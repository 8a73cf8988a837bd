"""Volume ↔ 2D slice geometry: axial slices shown in radiological convention.

A 2D model trained on CT slices (the field's PNG/JPEG slices are radiological: patient's
right on the viewer's left, anterior at the top) must see NIfTI slices the same way. The
volume is reoriented to LPS (axis 0 → patient left, axis 1 → posterior, axis 2 →
superior), then slice ``z`` is ``vol[:, :, z].T``: rows run anterior → posterior, columns
patient right → left. ``slices_to_volume`` undoes it exactly.
"""

from __future__ import annotations

import numpy as np

DISPLAY_AXCODES = ("L", "P", "S")


def _transform(affine: np.ndarray, target: tuple[str, str, str] = DISPLAY_AXCODES):
    import nibabel.orientations as nio

    return nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(target))


def volume_to_slices(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``(X, Y, Z)`` volume → ``(Z, rows, cols)`` axial slices in radiological display."""
    import nibabel.orientations as nio

    lps = nio.apply_orientation(volume, _transform(affine))
    return np.ascontiguousarray(np.transpose(lps, (2, 1, 0)))


def slices_to_volume(slices: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`volume_to_slices`: back to the volume's own axis order."""
    import nibabel.orientations as nio

    lps = np.transpose(np.asarray(slices), (2, 1, 0))
    back = nio.ornt_transform(nio.axcodes2ornt(DISPLAY_AXCODES), nio.io_orientation(affine))
    return np.ascontiguousarray(nio.apply_orientation(lps, back))


def slice_spacing(spacing: tuple[float, ...], affine: np.ndarray) -> tuple[float, float]:
    """In-plane spacing (row, column) of the display slices, in mm."""
    ornt = _transform(affine)
    # ornt[i, 0] is the output axis of input axis i; display rows = output axis 1, columns = output axis 0.
    out_spacing = [0.0, 0.0, 0.0]
    for i, (axis, _) in enumerate(ornt):
        out_spacing[int(axis)] = float(spacing[i])
    return out_spacing[1], out_spacing[0]


def voxel_volume_ml(affine: np.ndarray) -> float:
    """One voxel's volume in ml: ``|det(affine[:3, :3])| / 1000``. The product of the voxel sizes overstates
    it on a sheared grid (a gantry-tilted series: +12.2 % at a 27° shear), the determinant never does."""
    return abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0
