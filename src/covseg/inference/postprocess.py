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
