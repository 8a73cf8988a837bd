"""Volumes cut into display slices: named HU windows, windowing to 8 bits, axial slices in the radiological convention.

Used by ``covseg data convert`` (:mod:`covseg.data.convert`, from which these names are importable
as before) and matched by the slice stacks of :mod:`covseg.data.stack`, which put slices back together.
"""

from __future__ import annotations

import numpy as np

from covseg.data.intensity import LUNG_WINDOW
from covseg.errors import DataError

WINDOWS: dict[str, tuple[float, float]] = {
    "lung": LUNG_WINDOW,  # W1500 L-500
    "mediastinum": (-160.0, 240.0),  # W400 L40
    "abdomen": (-150.0, 250.0),  # W400 L50
    "display": (0.0, 255.0),  # volumes already stored as 0..255 grey values (stacked 8-bit slices): unchanged
}


def parse_window(text: str | tuple[float, float] | None) -> tuple[float, float] | None:
    """``"lung"`` or ``"-1250,250"`` → ``(low, high)`` in HU; None stays None."""
    if text is None or isinstance(text, tuple):
        return text
    key = text.strip().lower()
    if key in WINDOWS:
        return WINDOWS[key]
    try:
        low, high = (float(v) for v in key.replace(":", ",").split(","))
    except ValueError:
        raise DataError(
            f"bad window {text!r}: give 'low,high' in HU or one of {', '.join(WINDOWS)}"
        ) from None
    if not high > low:
        raise DataError(f"bad window {text!r}: high must exceed low")
    return low, high


def apply_window(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Map HU to 0..255: ``round(clip((v - low) / (high - low), 0, 1) * 255)`` as uint8."""
    low, high = window
    scaled = np.clip((np.asarray(values, dtype=np.float64) - low) / (high - low), 0.0, 1.0) * 255.0
    return np.rint(scaled).astype(np.uint8)


def axial_slices(
    volume: np.ndarray, affine: np.ndarray, orientation: str = "radiological"
) -> tuple[np.ndarray, tuple[float, float], np.ndarray]:
    """Cut a volume into axial slices for display: ``(slices (Z, rows, cols), (row_mm, col_mm), z_mm)``.

    The volume is reoriented (nibabel ``io_orientation``) so that its axes run patient
    left, posterior, superior (LPS); slice ``k`` is then ``vol[:, :, k].T``: rows run anterior
    → posterior (anterior at the top), columns patient right → left (the patient's right on
    the viewer's left: radiological). ``neurological`` mirrors the columns (patient's right on
    the right). Slices go inferior → superior; ``z_mm`` is each slice's superior coordinate.
    """
    import nibabel.orientations as nio

    if orientation not in ("radiological", "neurological"):
        raise ValueError(f"orientation must be 'radiological' or 'neurological', got {orientation!r}")
    target = ("L", "P", "S") if orientation == "radiological" else ("R", "P", "S")
    ornt = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(target))
    oriented = nio.apply_orientation(np.asarray(volume), ornt)
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    spacing = [0.0, 0.0, 0.0]
    for axis_in, (axis_out, _) in enumerate(ornt):
        spacing[int(axis_out)] = float(zooms[axis_in])
    new_affine = np.asarray(affine) @ nio.inv_ornt_aff(ornt, np.asarray(volume).shape[:3])
    z_mm = np.array([(new_affine @ np.array([0.0, 0.0, k, 1.0]))[2] for k in range(oriented.shape[2])])
    slices = np.ascontiguousarray(np.transpose(oriented, (2, 1, 0, *range(3, oriented.ndim))))
    return slices, (spacing[1], spacing[0]), z_mm
