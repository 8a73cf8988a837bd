"""A classical lung mask of a CT volume in HU: threshold, morphology, components (no network).

Steps (SciPy ``ndimage``): the body is the largest component above -500 HU with its holes filled
slice by slice; air inside the body (below ``air_hu``) is the lung candidate; an opening removes
thin airways and noise; components whose median is below ``gas_hu`` are gas (bowel, stomach,
trachea: nearly -1000 HU, where lung parenchyma with its vessels lies near -850) and are dropped;
the largest one or two remaining components are kept (two when the second holds at least
``second_fraction`` of the first: separate lungs), and holes (vessels, dense lesions) are
filled slice by slice, with a closing of ``closing_mm`` so consolidations at the lung border stay
inside. Good enough to crop to the lungs or measure infection per lung; not a segmentation of
diseased lungs that lose their air.
"""

from __future__ import annotations

import math

import numpy as np


def _largest(
    mask: np.ndarray, keep: int = 1, second_fraction: float = 0.0, values: np.ndarray | None = None, min_median: float | None = None
) -> np.ndarray:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    if values is not None and min_median is not None:
        medians = ndimage.median(values, labels, index=np.arange(1, n + 1))
        sizes[1:][np.asarray(medians) < min_median] = 0
        if not sizes.any():
            return np.zeros_like(mask, dtype=bool)
    order = np.argsort(sizes)[::-1]
    chosen = [order[0]]
    if keep > 1 and n > 1 and sizes[order[1]] >= second_fraction * sizes[order[0]]:
        chosen.append(order[1])
    return np.isin(labels, chosen)


def _fill_slices(mask: np.ndarray, axis: int) -> np.ndarray:
    from scipy import ndimage

    out = np.moveaxis(mask.copy(), axis, 0)
    for k in range(out.shape[0]):
        out[k] = ndimage.binary_fill_holes(out[k])
    return np.moveaxis(out, 0, axis)


def _ball(radius: tuple[int, ...]) -> np.ndarray:
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    return sum((g / max(r, 1)) ** 2 for g, r in zip(grids, radius)) <= 1.0


def _axes(affine: np.ndarray) -> tuple[int, list[float]]:
    """The input axis that runs inferior–superior, and the voxel spacing (mm) along each input axis."""
    from covseg.transforms.volume import oriented_spacing, ras_orientation

    ornt = ras_orientation(affine)
    spacing_ras = oriented_spacing(affine, ornt)
    return int(np.flatnonzero(ornt[:, 0] == 2)[0]), [spacing_ras[int(ornt[i, 0])] for i in range(3)]


def dilate_mm(mask: np.ndarray, affine: np.ndarray, margin_mm: float) -> np.ndarray:
    """``mask`` (bool) grown to every voxel whose centre lies within ``margin_mm`` of it, in mm along each
    axis (anisotropic voxels honoured). A Euclidean distance transform over the mask's bounding box
    grown by the margin: its cost does not grow with the margin, as a ball-shaped dilation's would."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if margin_mm <= 0 or not mask.any():
        return mask
    _, spacing = _axes(affine)
    pad = [math.floor(margin_mm / s) for s in spacing]
    box = tuple(
        slice(max(int(idx.min()) - p, 0), min(int(idx.max()) + p + 1, n))
        for idx, p, n in zip(np.nonzero(mask), pad, mask.shape)
    )
    out = mask.copy()
    out[box] = ndimage.distance_transform_edt(~mask[box], sampling=spacing) <= margin_mm
    return out


def lung_mask(
    volume: np.ndarray,
    affine: np.ndarray,
    air_hu: float = -400.0,
    body_hu: float = -500.0,
    second_fraction: float = 0.1,
    closing_mm: float = 6.0,
    gas_hu: float = -950.0,
) -> np.ndarray:
    """Lungs (uint8 0/1) of a CT volume ``(X, Y, Z)`` in HU, in the volume's own geometry."""
    from scipy import ndimage

    vol = np.asarray(volume, dtype=np.float32)
    axial, spacing = _axes(affine)
    body = _fill_slices(_largest(vol > body_hu), axial)
    air = (vol < air_hu) & body
    opened = ndimage.binary_opening(air, structure=_ball(tuple(max(1, round(2.0 / s)) for s in spacing)))
    lungs = _largest(opened, keep=2, second_fraction=second_fraction, values=vol, min_median=gas_hu)
    radius = tuple(max(1, math.ceil(closing_mm / s)) for s in spacing)
    pad = [(r, r) for r in radius]
    closed = ndimage.binary_closing(np.pad(lungs, pad), structure=_ball(radius))
    lungs = closed[tuple(slice(r, -r) for r in radius)] & body
    return _fill_slices(lungs, axial).astype(np.uint8)
