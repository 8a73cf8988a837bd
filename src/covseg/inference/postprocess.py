"""Mask postprocessing: keep the largest components, drop small ones."""

from __future__ import annotations

import numpy as np


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Zero every connected component (per label) smaller than ``min_size`` pixels/voxels."""
    from scipy import ndimage

    if min_size <= 1:
        return mask
    out = mask.copy()
    for label in np.unique(mask[mask > 0]):
        comps, n = ndimage.label(mask == label)
        if n == 0:
            continue
        sizes = np.bincount(comps.ravel())
        small = np.flatnonzero(sizes < min_size)
        small = small[small > 0]
        out[np.isin(comps, small)] = 0
    return out


def keep_largest_components(mask: np.ndarray, k: int = 1) -> np.ndarray:
    """Keep the ``k`` largest connected components of each label."""
    from scipy import ndimage

    out = np.zeros_like(mask)
    for label in np.unique(mask[mask > 0]):
        comps, n = ndimage.label(mask == label)
        if n == 0:
            continue
        sizes = np.bincount(comps.ravel())[1:]
        keep = np.argsort(sizes)[::-1][:k] + 1
        out[np.isin(comps, keep)] = label
    return out


#: ``lungs_only``: how far (mm) predictions may reach beyond the classical lung mask. That mask
#: is air below -400 HU, so a dense lesion at the lung border (subpleural consolidation, the
#: typical COVID-19 site) lies partly outside it; the margin keeps it (measured on 3D phantoms and
#: the real CT by bench/bench_lungs_only.py: README "Restricting CT predictions to the lungs").
LUNG_MARGIN_MM = 15.0

#: the one-line problem of --lungs-only (``lungs_only=True``) on anything but a CT volume in HU
LUNGS_NEED_VOLUME = "--lungs-only needs a CT volume in HU"


def lungs_of(volume: np.ndarray, affine: np.ndarray, space: str | None = None) -> np.ndarray:
    """The classical lung mask (:func:`covseg.transforms.lungmask.lung_mask`) of a CT volume in HU, as bool;
    a ``DataError`` when the volume is not in HU (``space``, else decided from its values), or no lungs are found in it."""
    from covseg.data.intensity import HU, intensity_space
    from covseg.errors import DataError
    from covseg.transforms.intensity import SPACE_WORDS
    from covseg.transforms.lungmask import lung_mask

    space = space or intensity_space(volume)
    if space != HU:
        raise DataError(f"{LUNGS_NEED_VOLUME}; this volume holds {SPACE_WORDS[space]}")
    lungs = lung_mask(volume, affine).astype(bool)
    if not lungs.any():
        raise DataError("--lungs-only found no lungs in this volume (no air-filled region inside the body); is it a chest CT in HU?")
    return lungs


def zero_outside(probs: np.ndarray, region: np.ndarray, num_classes: int) -> np.ndarray:
    """Soft maps with every voxel outside ``region`` set to background: binary maps ``(*spatial)`` to 0;
    K-class maps ``(K, *spatial)`` to class 0 (probability 1 there, 0 for the others, so voxels still sum to 1)."""
    region = np.asarray(region, dtype=bool)
    out = np.array(probs, dtype=np.float32, copy=True)
    if num_classes == 1:
        out[~region] = 0.0
    else:
        out[:, ~region] = 0.0
        out[0][~region] = 1.0
    return out
