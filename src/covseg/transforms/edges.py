"""Edge ground truth derived from a segmentation mask.

Edge-supervised models (Inf-Net's edge attention, the co-supervision scheme's edge module)
need an edge map beside the mask. Inf-Net ships its edge maps (``Edge/``), and they are
exactly the pixels where the mask's central-difference gradient is non-zero: a 2-pixel
band, one pixel inside and one outside the boundary (verified on all 50 Doctor-label edge
maps of the Inf-Net training set: identical, pixel for pixel). ``width=2`` reproduces that.
Other widths give a morphological band around the boundary.
"""

from __future__ import annotations

import numpy as np


def mask_to_edge(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Edge map (uint8 0/1) of a 2D or 3D mask; any label > 0 counts as foreground.

    ``width=2`` (default) is Inf-Net's edge: pixels whose central difference
    ``m[i+1] - m[i-1]`` along any axis is non-zero (edge-replicated borders, as
    ``numpy.gradient``), i.e. one pixel on each side of the boundary. ``width=1`` gives the
    mask's own boundary pixels (foreground with a background 4-neighbour); larger widths
    add ``ceil(w/2)`` pixels inside and ``floor(w/2)`` outside with 4-connected steps.
    """
    if width < 1:
        raise ValueError(f"edge width must be >= 1, got {width}")
    fg = np.asarray(mask) > 0
    if fg.ndim not in (2, 3):
        raise ValueError(f"mask_to_edge needs a 2D or 3D mask, got shape {fg.shape}")
    if width == 2:
        return _central_difference_edge(fg)
    from scipy import ndimage

    cross = ndimage.generate_binary_structure(fg.ndim, 1)
    inner = (width + 1) // 2
    outer = width // 2
    eroded = ndimage.binary_erosion(fg, cross, iterations=inner, border_value=1)
    band = fg & ~eroded
    if outer:
        band |= ndimage.binary_dilation(fg, cross, iterations=outer) & ~fg
    return band.astype(np.uint8)


def _central_difference_edge(fg: np.ndarray) -> np.ndarray:
    values = fg.astype(np.int8)
    edge = np.zeros(fg.shape, dtype=bool)
    padded = np.pad(values, 1, mode="edge")
    inner = tuple(slice(1, -1) for _ in range(fg.ndim))
    for axis in range(fg.ndim):
        ahead = list(inner)
        behind = list(inner)
        ahead[axis] = slice(2, None)
        behind[axis] = slice(None, -2)
        edge |= padded[tuple(ahead)] != padded[tuple(behind)]
    return edge.astype(np.uint8)
