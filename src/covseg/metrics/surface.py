"""Surface-distance metrics (HD95, ASSD, NSD) that reproduce MONAI 1.6 exactly, without importing it.

Definitions, as in ``monai.metrics`` (``compute_hausdorff_distance``, ``compute_average_surface_distance``
with ``symmetric=True``, ``compute_surface_dice`` with ``use_subvoxels=False``), euclidean metric:

* **surface (edge) voxels** of a mask ``M``: ``M & ~binary_erosion(M)`` with the 4-/6-connected
  cross as structuring element and everything outside the image counted as background (so mask
  voxels on the image border are surface voxels);
* **directed surface distances** ``d(A→B)``: for every surface voxel of A, the euclidean distance
  (voxel centres scaled by ``spacing``, in mm when the spacing is in mm) to the nearest surface
  voxel of B, computed with a KD-tree in float64 and stored as float32 like MONAI;
* **HD95** = ``max(q95(d(P→G)), q95(d(G→P)))``: the 95th percentile is taken *per direction*
  (``torch.quantile`` linear interpolation, the same as ``numpy.quantile``'s default) and the
  larger of the two directed values is reported. This is what MONAI returns for
  ``percentile=95, directed=False``; it is *not* the 95th percentile of the pooled distances;
* **ASSD** = mean of the pooled distances ``d(P→G) ∪ d(G→P)`` (each surface voxel weighs the same);
* **NSD** at tolerance τ = ``(#{d(P→G) ≤ τ} + #{d(G→P) ≤ τ}) / (|∂P| + |∂G|)`` counting surface
  voxels (not surface areas), with the comparison done in float32 like MONAI.

For speed both masks are first cropped to the bounding box of ``pred ∪ gt`` plus a one-voxel
margin (clipped to the image). Erosion and nearest-neighbour distances are unchanged by that crop,
so results are identical to the uncropped computation (tests check this against MONAI).

Empty masks. When exactly one side is empty MONAI 1.6 returns ``inf`` for ASSD and the plain
Hausdorff distance, NaN for HD95 (``torch.quantile`` of all-``inf`` distances) and 0 for NSD;
when both are empty it returns NaN for all three. Here the choice is explicit:

* one side empty: HD95 and ASSD take ``empty_distance`` – ``"nan"``, ``"max"`` (the image
  diagonal, the largest distance two voxel centres of this image can have, in spacing units), or
  any number; NSD is 0 (no surface voxel is within τ). ``float("inf")`` reproduces MONAI's ASSD
  and its plain (100th-percentile) Hausdorff distance, both ``inf``, but *not* MONAI's HD95, which
  is NaN there (``torch.quantile`` of infinite distances: ``empty_distance="nan"`` gives that);
* both empty: the ``empty`` policy – ``"nan"``: NaN; ``"one"`` (perfect): HD95 = ASSD = 0 and
  NSD = 1; ``"zero"`` (failure): HD95 and ASSD take ``empty_distance`` and NSD = 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from covseg.metrics.overlap import EmptyPolicy, empty_value

EmptyDistance = Literal["nan", "max"] | float
SURFACE_METRICS: tuple[str, ...] = ("hd95", "assd", "nsd")


def union_bbox(pred: np.ndarray, gt: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Slices of the bounding box of ``pred | gt`` grown by ``margin`` and clipped to the image; None if empty."""
    union = pred | gt
    slices = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        hits = np.flatnonzero(union.any(axis=other)) if other else np.flatnonzero(union)
        if hits.size == 0:
            return None
        lo = max(int(hits[0]) - margin, 0)
        hi = min(int(hits[-1]) + margin + 1, union.shape[axis])
        slices.append(slice(lo, hi))
    return tuple(slices)


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boolean map of the mask voxels that touch background (cross-shaped neighbourhood, outside = background).

    The erosion by the cross is an AND of the mask with its 2·ndim one-voxel shifts on a
    background-padded copy: the same voxels as ``scipy.ndimage.binary_erosion`` with
    ``border_value=0``, at a fraction of its cost on the small crops scored here."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros_like(mask)
    padded = np.pad(mask, 1)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    eroded = mask.copy()
    for axis in range(mask.ndim):
        for lo, hi in ((0, -2), (2, None)):
            shifted = list(inner)
            shifted[axis] = slice(lo, hi)
            eroded &= padded[tuple(shifted)]
    return mask & ~eroded


def mask_edges(pred: np.ndarray, gt: np.ndarray, margin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Surface voxels of both masks, cropped to the bounding box of their union (empty arrays if both are empty)."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"shapes differ: prediction {pred.shape}, ground truth {gt.shape}")
    box = union_bbox(pred, gt, margin=margin)
    if box is None:
        empty = np.zeros((0,) * pred.ndim, dtype=bool)
        return empty, empty.copy()
    return surface_voxels(pred[box]), surface_voxels(gt[box])


def _nearest_distances(from_coords: np.ndarray, to_coords: np.ndarray, tree=None) -> np.ndarray:
    """Distance of each point of ``from_coords`` to the nearest of ``to_coords`` (float32; inf when none)."""
    from scipy.spatial import KDTree

    if len(from_coords) == 0:
        return np.zeros(0, dtype=np.float32)
    if len(to_coords) == 0:
        return np.full(len(from_coords), np.inf, dtype=np.float32)
    # leafsize 32 as in MONAI: one batched query per tree.
    tree = tree if tree is not None else KDTree(to_coords, leafsize=32)
    return tree.query(from_coords, k=1)[0].astype(np.float32)


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances ``(d(pred→gt), d(gt→pred))`` as float32 arrays.

    Each array has one entry per surface voxel of its source mask; entries are ``inf`` when the
    other mask is empty. Distances are in the units of ``spacing`` (voxels when None).
    """
    edges_pred, edges_gt = mask_edges(pred, gt)
    ndim = np.asarray(pred).ndim
    scale = np.ones(ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if scale.shape != (ndim,):
        raise ValueError(f"spacing {tuple(scale)} does not match a {ndim}D image")
    # each surface's coordinates once (np.argwhere is a full pass over the crop), used in both directions
    pred_coords = np.argwhere(edges_pred).astype(np.float64) * scale
    gt_coords = np.argwhere(edges_gt).astype(np.float64) * scale
    return _nearest_distances(pred_coords, gt_coords), _nearest_distances(gt_coords, pred_coords)


def image_diagonal(shape: Sequence[int], spacing: Sequence[float] | None = None) -> float:
    """Largest distance between two voxel centres of an image: ``sqrt(sum(((n_i - 1) * s_i)^2))``."""
    scale = [1.0] * len(shape) if spacing is None else list(spacing)
    return float(math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(shape, scale))))


def resolve_empty_distance(
    empty_distance: EmptyDistance, shape: Sequence[int], spacing: Sequence[float] | None
) -> float:
    """The number HD95/ASSD take when one mask is empty (``"nan"``, ``"max"`` = image diagonal, or a number)."""
    if isinstance(empty_distance, str):
        if empty_distance == "nan":
            return float("nan")
        if empty_distance == "max":
            return image_diagonal(shape, spacing)
        raise ValueError(f"empty_distance must be 'nan', 'max' or a number, got {empty_distance!r}")
    value = float(empty_distance)
    if not (value >= 0 or math.isnan(value)):
        raise ValueError(f"empty_distance must be non-negative, got {value}")
    return value


def _directed_percentile(distances: np.ndarray, percentile: float) -> float:
    return float(np.quantile(distances.astype(np.float64), percentile / 100.0))


def surface_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    tolerance: float = 1.0,
    percentile: float = 95.0,
    empty: EmptyPolicy = "nan",
    empty_distance: EmptyDistance = "nan",
) -> dict[str, float]:
    """HD95, ASSD and NSD (tolerance τ in spacing units) of two boolean masks, distances computed once.

    The keys are ``hd95``, ``assd`` and ``nsd`` whatever ``percentile`` is (see the module
    docstring for the definitions and the empty-mask rules).
    """
    if not (0 <= percentile <= 100):
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite non-negative number, got {tolerance}")
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    both_policy = empty_value(empty)
    missing = resolve_empty_distance(empty_distance, pred.shape, spacing)
    pred_any, gt_any = bool(pred.any()), bool(gt.any())
    if not pred_any and not gt_any:
        if empty == "one":
            return {"hd95": 0.0, "assd": 0.0, "nsd": 1.0}
        if empty == "zero":
            return {"hd95": missing, "assd": missing, "nsd": 0.0}
        return {"hd95": both_policy, "assd": both_policy, "nsd": both_policy}
    if not pred_any or not gt_any:
        return {"hd95": missing, "assd": missing, "nsd": 0.0}
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    pooled = np.concatenate([d_pg, d_gp])
    tau = np.float32(tolerance)
    within = int(np.count_nonzero(d_pg <= tau)) + int(np.count_nonzero(d_gp <= tau))
    return {
        "hd95": max(_directed_percentile(d_pg, percentile), _directed_percentile(d_gp, percentile)),
        "assd": float(pooled.astype(np.float64).mean()),
        "nsd": within / pooled.size,
    }


def hausdorff_distance(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] | None = None,
    percentile: float = 95.0,
    empty: EmptyPolicy = "nan",
    empty_distance: EmptyDistance = "nan",
) -> float:
    """Symmetric percentile Hausdorff distance as MONAI computes it (max of the two directed percentiles)."""
    return surface_metrics(
        pred, gt, spacing, percentile=percentile, empty=empty, empty_distance=empty_distance
    )["hd95"]


def average_symmetric_surface_distance(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] | None = None,
    empty: EmptyPolicy = "nan",
    empty_distance: EmptyDistance = "nan",
) -> float:
    """ASSD: mean of the pooled directed surface distances (MONAI ``symmetric=True``)."""
    return surface_metrics(pred, gt, spacing, empty=empty, empty_distance=empty_distance)["assd"]


def normalized_surface_dice(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] | None = None,
    tolerance: float = 1.0,
    empty: EmptyPolicy = "nan",
) -> float:
    """NSD: share of surface voxels of either mask within ``tolerance`` of the other surface."""
    return surface_metrics(pred, gt, spacing, tolerance=tolerance, empty=empty)["nsd"]
