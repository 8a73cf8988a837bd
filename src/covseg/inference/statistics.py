"""Per-case statistics of a predicted label map (TotalSegmentator's ``statistics.json`` idea).

One function, :func:`case_statistics`, gives the numbers that ``covseg predict --statistics``
writes (``statistics/<stem>.json`` and a ``statistics.csv`` row per case and class), that
:func:`covseg.api.predict` returns and that the app shows, so all three always agree. Per class:

- size: a volume in ml (voxels × ``|det(affine[:3, :3])|`` / 1000, so a sheared grid is measured
  right), or for a 2D image the area in mm² when its file states a pixel spacing, else in pixels;
  the ``unit`` field says which;
- for inputs in HU: the mean and the 5/50/95th percentile HU inside the class;
- for CT volumes in HU: the share (%) of each lung that the class covers, the lungs taken from
  covseg's classical lung mask (:func:`covseg.transforms.lungmask.lung_mask`) and split into the
  patient's left and right in RAS world coordinates;
- the number of connected components (face and edge neighbours: 8 in 2D, 26 in 3D).

Pure NumPy/SciPy: no model, no drawing (the preview PNG is drawn by ``covseg.viz.preview``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from covseg.errors import DataError
from covseg.transforms.volume import voxel_volume_ml

#: percentiles of HU reported inside each class
HU_PERCENTILES = (5, 50, 95)
#: class names of the label values of a model with ``num_classes`` outputs (binary: one output)
DEFAULT_CLASS_NAMES = {1: {1: "infection"}, 2: {1: "infection"}, 3: {1: "ground_glass_opacity", 2: "consolidation"}}
#: columns of the batch table ``statistics.csv``: one row per case and class
TABLE_COLUMNS = [
    "case", "input", "class", "label", "unit", "size", "voxels", "components",
    "hu_mean", "hu_p5", "hu_p50", "hu_p95", "left_lung_percent", "right_lung_percent",
]  # fmt: skip


def class_names_for(num_classes: int) -> dict[int, str]:
    """Label value → class name: ``infection`` for a binary model (one output, or two with softmax), ground-glass opacity and consolidation
    for Inf-Net's three classes, ``class<k>`` otherwise."""
    if num_classes in DEFAULT_CLASS_NAMES:
        return dict(DEFAULT_CLASS_NAMES[num_classes])
    return {k: f"class{k}" for k in range(1, max(int(num_classes), 2))}


def count_components(mask: np.ndarray) -> int:
    """Connected components of a boolean mask, with face, edge and corner neighbours (8 in 2D, 26 in 3D)."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return 0
    return int(ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))[1])


def hu_summary(values: np.ndarray) -> dict[str, float] | None:
    """Mean and :data:`HU_PERCENTILES` of ``values`` (None when there are none)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return None
    out = {"mean": round(float(values.mean()), 3)}
    for q, v in zip(HU_PERCENTILES, np.percentile(values, HU_PERCENTILES)):
        out[f"p{q}"] = round(float(v), 3)
    return out


def split_lungs(lungs: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The patient's (left, right) lung of a lung mask, split by each voxel's world x.

    NIfTI world coordinates are RAS+ (x grows toward the patient's right), whatever order the
    voxel axes are stored in: voxels whose world x lies above the midline form the right lung. The
    midline is halfway between the centroids of the two largest lung components, or the centroid
    of a single one (lungs touching each other).
    """
    from scipy import ndimage

    lungs = np.asarray(lungs, dtype=bool)
    empty = np.zeros_like(lungs)
    if not lungs.any():
        return empty, empty.copy()
    idx = np.nonzero(lungs)
    row = np.asarray(affine, dtype=np.float64)[0]
    world_x = row[0] * idx[0] + row[1] * idx[1] + row[2] * idx[2] + row[3]
    comps, n = ndimage.label(lungs, structure=np.ones((3, 3, 3), dtype=bool))
    ids = comps[idx]
    sizes = np.bincount(ids, minlength=n + 1)
    sizes[0] = 0
    largest = np.argsort(sizes)[::-1][: 2 if n > 1 else 1]
    midline = float(np.mean([world_x[ids == c].mean() for c in largest]))
    right = np.zeros_like(lungs)
    right[tuple(i[world_x > midline] for i in idx)] = True
    return lungs & ~right, right


def case_statistics(
    labels: np.ndarray,
    *,
    affine: np.ndarray | None = None,
    pixel_spacing: tuple[float, float] | None = None,
    intensities: np.ndarray | None = None,
    space: str | None = None,
    num_classes: int = 1,
    class_names: dict[int, str] | None = None,
    lungs: np.ndarray | None = None,
) -> dict[str, Any]:
    """The statistics of one predicted label map (a volume ``(X, Y, Z)`` with its ``affine``, or a
    2D image with its ``pixel_spacing`` (row_mm, col_mm) or None), as a JSON-ready dict.

    ``intensities`` (the input, same shape) in ``space`` ``"hu"`` add the HU inside each class and,
    for a volume, the lung shares (``lungs``: a lung mask already computed, else
    :func:`~covseg.transforms.lungmask.lung_mask` of the input). A multi-class model's classes are
    followed by ``infection``, every label above 0. A pixel spacing that is not a positive number
    (an untrusted file's text chunk) is a :class:`~covseg.errors.DataError`, not a NaN area.
    """
    labels = np.asarray(labels)
    volume = labels.ndim == 3
    if volume:
        if affine is None:
            raise ValueError("a volume's statistics need its affine")
        unit, per_voxel = "ml", voxel_volume_ml(affine)
    elif pixel_spacing is not None:
        if not all(np.isfinite(v) and v > 0 for v in map(float, pixel_spacing)):
            raise DataError(f"pixel spacing {tuple(map(float, pixel_spacing))} stated in the file is not positive: areas in mm² would be wrong")
        unit, per_voxel = "mm2", float(pixel_spacing[0]) * float(pixel_spacing[1])
    else:
        unit, per_voxel = "pixels", 1.0
    hu = intensities is not None and space == "hu"
    if hu and np.shape(intensities) != labels.shape:
        raise ValueError(f"intensities of shape {np.shape(intensities)} for labels of shape {labels.shape}")
    sides = _lung_sides(intensities, affine, lungs) if hu and volume else None
    names = class_names or class_names_for(num_classes)
    masks = [(name, value, labels == value) for value, name in names.items()]
    if len(names) > 1:
        masks.append(("infection", None, labels > 0))
    classes = {}
    for name, value, mask in masks:
        voxels = int(mask.sum())
        entry: dict[str, Any] = {"label": value, "voxels": voxels, "size": round(voxels * per_voxel, 4), "components": count_components(mask)}
        if hu:
            entry["hu"] = hu_summary(np.asarray(intensities)[mask])
        if sides is not None:
            entry["lung_percent"] = {
                side: round(100.0 * int((mask & lung).sum()) / int(lung.sum()), 3) if lung.any() else None
                for side, lung in sides.items()
            }
        classes[name] = entry
    out: dict[str, Any] = {"kind": "volume" if volume else "image", "unit": unit, "unit_size": round(per_voxel, 9),
                           "shape": list(labels.shape), "intensity_space": space, "classes": classes}  # fmt: skip
    if sides is not None:
        out["lungs_ml"] = {side: round(int(lung.sum()) * per_voxel, 4) for side, lung in sides.items()}
    return out


def _lung_sides(intensities: np.ndarray, affine: np.ndarray, lungs: np.ndarray | None) -> dict[str, np.ndarray]:
    from covseg.transforms.lungmask import lung_mask

    if lungs is None:
        lungs = lung_mask(intensities, affine)
    left, right = split_lungs(lungs, affine)
    return {"left": left, "right": right}


def table_rows(case: str, input: str, stats: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of ``statistics.csv`` for one case (:data:`TABLE_COLUMNS`): one per class."""
    rows = []
    for cls, entry in stats["classes"].items():
        hu = entry.get("hu") or {}
        share = entry.get("lung_percent") or {}
        rows.append({
            "case": case, "input": input, "class": cls, "label": entry["label"], "unit": stats["unit"], "size": entry["size"],
            "voxels": entry["voxels"], "components": entry["components"],
            **{f"hu_{k}": hu.get(k) for k in ("mean", "p5", "p50", "p95")},
            "left_lung_percent": share.get("left"), "right_lung_percent": share.get("right"),
        })  # fmt: skip
    return rows


def largest_lesion_point(labels: np.ndarray) -> tuple[int, ...]:
    """A voxel of the largest connected lesion (any label above 0), nearest its centroid; the array's
    centre when nothing is labelled. The preview's three slices cross here."""
    from scipy import ndimage

    fg = np.asarray(labels) > 0
    if not fg.any():
        return tuple(n // 2 for n in fg.shape)
    comps, _ = ndimage.label(fg, structure=np.ones((3,) * fg.ndim, dtype=bool))
    sizes = np.bincount(comps.ravel())
    sizes[0] = 0
    points = np.argwhere(comps == int(np.argmax(sizes)))
    nearest = np.argmin(((points - points.mean(axis=0)) ** 2).sum(axis=1))
    return tuple(int(v) for v in points[nearest])
