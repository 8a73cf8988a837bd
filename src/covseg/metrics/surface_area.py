"""Surface distances weighted by surfel area: the surface Dice (NSD) of FLARE's evaluation script.

FLARE21–24 score NSD with DeepMind's ``surface_distance`` library
(github.com/google-deepmind/surface-distance, ``metrics.py``; FLARE's ``SurfaceDice.py`` is a copy).
Unlike :mod:`covseg.metrics.surface` (MONAI's count of surface voxels), it works on a grid shifted
by half a voxel, whose points are the corners of the voxels:

* every corner gets a **neighbour code**, one bit per voxel of the 2×2(×2) block around it (outside
  the image counts as background); a corner whose block is neither all in nor all out is a
  **surface element** (surfel);
* a surfel's **area** (3D, mm²) or **length** (2D, mm) is that of the marching-cubes (marching
  squares) surface through its block, scaled by the spacing: in 3D the sum over the block's
  triangles of ``|(n0·s1·s2, n1·s0·s2, n2·s0·s1)|`` for the triangle's area vector ``n`` in voxel
  units (the table below); in 2D the segments between edge midpoints;
* a surfel's **distance** is the euclidean distance (in mm, ``spacing`` per axis) to the nearest
  surfel of the other mask (the library takes it from a distance transform of the other surfel map;
  covseg finds the nearest surfel with a KD-tree, which is faster on large crops, and computes the
  distance from the integer offset exactly as the distance transform does);
* **surface Dice** at tolerance τ = (area of A's surfels within τ of B + area of B's surfels within τ
  of A) / (area of A + area of B); the **average surface distance** per direction and the **robust
  Hausdorff distance** at a percentile (the smallest distance below which that share of the area
  lies, the larger of the two directions) come from the same distances and areas.

Empty masks follow the library: one side empty → NSD 0, distances ``inf``; both empty → NaN (the
FLARE table applies FLARE's own rules before this is called, see :mod:`covseg.metrics.flare`).
Only the union bounding box of both masks (plus one corner) is processed; the result is the same
as on the whole image. Agreement with the library: ``tests/metrics/test_metrics_surface_area.py`` (stored
reference values) and ``bench/bench_nsd_reference.py``.

The 3D table: the area vectors of the marching-cubes triangles of each of the 256 neighbour codes,
as in the library's ``lookup_tables.py`` (Apache-2.0, © 2018 Google Inc.), stored here as the
absolute components ×8 (only their magnitudes enter the area); code ``c`` and its complement
``255 - c`` have the same triangles, so codes 0–127 are listed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from covseg.metrics.surface import union_bbox

# Codes 0..127: the triangles' area vectors, "|n0| |n1| |n2|" × 8 as three digits, triangles apart by spaces.
_TRIANGLES_3D_TEXT = (
    "000,111,111,220 220,111,202 202,111 111,400 222 111,111,111 111,202 202,400 222 111,220 220,"
    "400 222 111,400 222 111,400 400,111,022 022,111 111,040 222 111,111 111,004 222 111,"
    "111 111 111,111 222 222 111,111 111,022 022 111,202 202 111,111 333 022 202,111 220 220,"
    "333 022 111 220,400 111 222 111,400 111 222,111,111 111,022 022,040 111 222,111 111,"
    "111 202 202,022 022 111,333 022 111 202,111 111,111 111 111,004 222 111,222 222 111 111,"
    "111 220 220,400 222 111 111,022 333 111 220,400 222 111,220 220,040 222 111,040 111 222,"
    "040 040,220 220 111,333 202 111 220,111 040 222 111,040 222 111,111 220 220,040 222 111 111,"
    "333 220 111 202,040 222 111,220 220 220 220,220 220 111,111 220 220,220 220,111,111 111,"
    "111 111,111 220 220,022 022,004 222 111,022 022 111,333 022 111 220,111 111,111 111 111,"
    "111 202 202,400 222 111 111,040 222 111,222 222 111 111,202 333 022 111,400 222 111,202 202,"
    "004 222 111,111 202 202,202 333 220 111,004 222 111,004 004,111 111 222 004,111 222 004,"
    "202 202 111,004 222 111 111,202 202 202 202,111 202 202,202 333 220 111,004 222 111,"
    "111 202 202,202 202,111 111,111 111 111,111 022 022,040 111 222 111,022 022 111,"
    "004 222 111 111,022 022 022 022,022 022 111,111 111 111,111 111 111 111,004 222 111 111,"
    "111 111 111,040 222 111 111,111 111 111,022 022 111,111 111,400 222 111,222 111 222 111,"
    "333 022 111 202,040 222 111,333 220 022 111,111 222 004,111 022 022,022 022,400 222 111 111,"
    "111 111 111,202 202 111,111 111,220 220 111,111 111,111 111,111"
)
_TRIANGLES_3D = _TRIANGLES_3D_TEXT.split(",")


class SurfelDistances(NamedTuple):
    """Each mask's surfel distances to the other surface (mm) and surfel areas (mm² in 3D, mm in 2D)."""

    pred_to_gt: np.ndarray
    pred_areas: np.ndarray
    gt_to_pred: np.ndarray
    gt_areas: np.ndarray


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if ndim not in (2, 3):
        raise ValueError(f"surfel surface distances need a 2D or 3D mask, got {ndim}D")
    values = (1.0,) * ndim if spacing is None else tuple(float(s) for s in spacing)
    if len(values) != ndim or not all(s > 0 and math.isfinite(s) for s in values):
        raise ValueError(f"spacing {values} does not fit a {ndim}D mask (one positive number per axis)")
    return values


def surfel_area_table(spacing: Sequence[float]) -> np.ndarray:
    """Surfel area (3D: 256 codes) or contour length (2D: 16 codes) of every neighbour code at ``spacing``."""
    if len(spacing) == 2:
        return _contour_length_table(float(spacing[0]), float(spacing[1]))
    s0, s1, s2 = (float(s) for s in spacing)
    scale = np.array([s1 * s2, s0 * s2, s0 * s1])
    table = np.zeros(256)
    for code, entry in enumerate(_TRIANGLES_3D):
        normals = np.array([[int(d) for d in tri] for tri in entry.split()], dtype=np.float64) / 8.0
        area = sum(float(np.linalg.norm(n * scale)) for n in normals)
        table[code] = table[255 - code] = area
    return table


def _contour_length_table(s0: float, s1: float) -> np.ndarray:
    """Marching squares on the 2×2 block (bits 8, 4, 2, 1 = top left, top right, bottom left, bottom right):
    one corner in (or out) cuts its corner with a segment of half the block's diagonal; two side by side
    give a straight segment across the block (length ``s1`` for a row pair, ``s0`` for a column pair);
    two diagonal ones give two corner cuts."""
    diag = 0.5 * math.sqrt(s0**2 + s1**2)
    table = np.zeros(16)
    for code in range(1, 15):
        inside = bin(code).count("1")
        if inside in (1, 3):
            table[code] = diag
        elif code in (0b1100, 0b0011):
            table[code] = s1
        elif code in (0b1010, 0b0101):
            table[code] = s0
        else:  # 0b1001, 0b0110: opposite corners
            table[code] = 2 * diag
    return table


def neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """The neighbour code of every voxel corner (shape + 1 per axis): bit ``2^(K-1-b)`` set when the block's voxel
    number ``b`` (row-major in the 2×2(×2) block, K = 4 or 8) is inside; outside the image is background."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1).astype(np.uint8)
    shape = tuple(n + 1 for n in mask.shape)
    codes = np.zeros(shape, dtype=np.uint8)
    nbits = 2**mask.ndim
    for b in range(nbits):
        offset = [(b >> (mask.ndim - 1 - axis)) & 1 for axis in range(mask.ndim)]
        block = padded[tuple(slice(o, o + n) for o, n in zip(offset, shape))]
        codes |= block << np.uint8(nbits - 1 - b)
    return codes


def surfel_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None
) -> SurfelDistances:
    """Distances and areas of both masks' surfels (the library's ``compute_surface_distances``, unsorted).

    ``spacing`` in mm per axis (voxels when None). A mask that is empty has no surfels; the other
    mask's distances are then ``inf``."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"shapes differ: prediction {pred.shape}, ground truth {gt.shape}")
    sp = _spacing(spacing, pred.ndim)
    box = union_bbox(pred, gt, margin=0)
    if box is None:
        empty = np.zeros(0)
        return SurfelDistances(empty, empty, empty, empty)
    table = surfel_area_table(sp)
    full = len(table) - 1
    codes = [neighbour_codes(m[box]) for m in (pred, gt)]
    points = [np.argwhere((c != 0) & (c != full)) for c in codes]
    areas = [table[c[tuple(p.T)]] for c, p in zip(codes, points)]
    return SurfelDistances(
        pred_to_gt=_nearest_distances(points[0], points[1], sp),
        pred_areas=areas[0],
        gt_to_pred=_nearest_distances(points[1], points[0], sp),
        gt_areas=areas[1],
    )


def _nearest_distances(source: np.ndarray, target: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distance (mm) of each ``source`` corner to its nearest ``target`` corner (``inf`` without targets).

    The nearest corner comes from a KD-tree; its distance is then taken from the integer offset the way
    ``scipy.ndimage.distance_transform_edt`` (the library's) computes it, ``sqrt(sum((offset·spacing)²))``,
    so that distances on the tolerance agree to the last bit."""
    from scipy.spatial import KDTree

    if len(source) == 0:
        return np.zeros(0)
    if len(target) == 0:
        return np.full(len(source), np.inf)
    scale = np.asarray(spacing)
    nearest = KDTree(target * scale, leafsize=32).query(source * scale, k=1)[1]
    offsets = (source - target[nearest]).T.astype(np.float64)
    offsets *= scale[:, None]
    return np.sqrt(np.add.reduce(offsets * offsets, axis=0))


def surface_dice(distances: SurfelDistances, tolerance: float) -> float:
    """Surface Dice at ``tolerance`` (mm): the area of both surfaces within τ of the other over their total area."""
    d = distances
    within = d.gt_areas[d.gt_to_pred <= tolerance].sum() + d.pred_areas[d.pred_to_gt <= tolerance].sum()
    total = d.gt_areas.sum() + d.pred_areas.sum()
    return float(within / total) if total > 0 else float("nan")


def average_surface_distances(distances: SurfelDistances) -> tuple[float, float]:
    """Area-weighted mean distance ``(gt → pred, pred → gt)`` (NaN for a mask without surfels)."""
    out = []
    for dist, area in (
        (distances.gt_to_pred, distances.gt_areas),
        (distances.pred_to_gt, distances.pred_areas),
    ):
        out.append(float(np.sum(dist * area) / np.sum(area)) if area.size else float("nan"))
    return out[0], out[1]


def robust_hausdorff(distances: SurfelDistances, percent: float = 95.0) -> float:
    """The larger of the two directed distances below which ``percent`` % of the surface area lies (``inf`` if a
    mask has no surfels): surfels sorted by (distance, area), the first whose cumulated area share reaches it."""
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must lie in [0, 100], got {percent}")
    worst = -math.inf
    for dist, area in (
        (distances.gt_to_pred, distances.gt_areas),
        (distances.pred_to_gt, distances.pred_areas),
    ):
        if dist.size == 0:
            worst = math.inf
            continue
        order = np.lexsort((area, dist))
        share = np.cumsum(area[order]) / np.sum(area[order])
        idx = min(int(np.searchsorted(share, percent / 100.0)), dist.size - 1)
        worst = max(worst, float(dist[order][idx]))
    return worst


def surfel_surface_dice(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None, tolerance: float = 1.0
) -> float:
    """NSD of two boolean masks as FLARE's script computes it (0 if one mask is empty, NaN if both are)."""
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite non-negative number, got {tolerance}")
    return surface_dice(surfel_distances(pred, gt, spacing), tolerance)
