"""A volume's preview picture: axial, coronal and sagittal slices through the largest lesion, with the
prediction drawn over them as every covseg overlay is (:func:`covseg.viz.overlay.overlay`).

Slices are taken in RAS and shown in radiological convention (patient's right on the viewer's
left, anterior / superior at the top), each stretched to square millimetres so an anisotropic
volume is not squashed.
"""

from __future__ import annotations

import numpy as np

PANEL_HEIGHT = 256
GAP = 4


def _panel(image: np.ndarray, labels: np.ndarray, mm_per_row: float, mm_per_col: float) -> np.ndarray:
    """One slice (rows × cols, already in display orientation) overlaid and resized to square mm."""
    from PIL import Image

    from covseg.viz.overlay import overlay

    rgb = overlay(image, None, labels)
    height_mm, width_mm = rgb.shape[0] * mm_per_row, rgb.shape[1] * mm_per_col
    width = max(1, round(PANEL_HEIGHT * width_mm / height_mm))
    return np.asarray(Image.fromarray(rgb).resize((width, PANEL_HEIGHT), Image.Resampling.NEAREST))


def three_view_preview(display: np.ndarray, labels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """RGB uint8: axial | coronal | sagittal slices of ``display`` (a volume ``(X, Y, Z)`` of 0..255
    values) through the largest connected lesion of ``labels`` (the volume's centre without one)."""
    from covseg.inference.statistics import largest_lesion_point
    from covseg.transforms.volume import oriented_spacing, to_ras

    image, ornt = to_ras(np.asarray(display, dtype=np.float32), affine)
    lab = to_ras(np.asarray(labels), affine)[0]
    sx, sy, sz = oriented_spacing(affine, ornt)
    x, y, z = largest_lesion_point(lab)

    def show(a: np.ndarray) -> np.ndarray:  # (horizontal, vertical) in RAS → rows top-down, cols radiological
        return a.T[::-1, ::-1]

    panels = [
        _panel(show(image[:, :, z]), show(lab[:, :, z]), sy, sx),  # axial: anterior up, patient's right on the left
        _panel(show(image[:, y, :]), show(lab[:, y, :]), sz, sx),  # coronal: superior up
        _panel(show(image[x, :, :]), show(lab[x, :, :]), sz, sy),  # sagittal: superior up, anterior on the left
    ]
    gap = np.zeros((PANEL_HEIGHT, GAP, 3), dtype=np.uint8)
    return np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
