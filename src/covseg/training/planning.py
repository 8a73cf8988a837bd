"""Dataset fingerprint and volume plan, the way nnU-Net plans a 3D configuration.

The fingerprint is what the training volumes are: spacing and shape per case (after
reorientation to RAS), whether they are stored as HU or as 0..255 display values, and intensity
percentiles (all voxels and foreground voxels, a fixed-seed sample of each case). The plan turns
it into preprocessing: the target spacing (the median spacing; for anisotropic sets, where one
axis is more than three times coarser than the finest, that axis takes the 10th percentile, as
nnU-Net does), the window, the z-score statistics (of the windowed intensities), the crop, and a
patch size (the median resampled shape, shrunk along its longest side in millimetres until it
fits a voxel budget, in multiples of 16 no larger than the grid). Both are saved in the run
folder (``plan.json``) and the plan in ``model.json`` (``volume``), so prediction replays it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from covseg.data.intensity import DISPLAY, HU, hu_window, intensity_space
from covseg.transforms.volume import (
    VolumePlan,
    oriented_spacing,
    ras_orientation,
    scale_intensity,
)

SAMPLE_PER_CASE = 20_000
PATCH_MULTIPLE = 16
ANISOTROPY = 3.0


def case_fingerprint(
    volume: np.ndarray, affine: np.ndarray, label: np.ndarray | None, seed: int = 0, space: str | None = None
) -> dict[str, Any]:
    """Spacing and shape along RAS, intensity space (``space``, else decided from the values by
    :func:`covseg.data.intensity.intensity_space`), and a sample of intensities (all, foreground)."""
    space = space or intensity_space(volume)
    ornt = ras_orientation(affine)
    shape = [0, 0, 0]
    for axis_in, (axis_out, _) in enumerate(ornt):
        shape[int(axis_out)] = int(volume.shape[axis_in])
    rng = np.random.default_rng(seed)
    flat = np.asarray(volume, dtype=np.float32).reshape(-1) if volume.ndim == 3 else np.asarray(volume[..., 0], np.float32).reshape(-1)
    sample = flat[rng.integers(0, flat.size, size=min(SAMPLE_PER_CASE, flat.size))]
    fg = np.zeros(0, np.float32)
    if label is not None and np.any(label > 0):
        values = flat[np.flatnonzero(np.asarray(label).reshape(-1) > 0)]
        fg = values[rng.integers(0, values.size, size=min(SAMPLE_PER_CASE, values.size))]
    return {
        "spacing": list(oriented_spacing(affine, ornt)),
        "shape": shape,
        "display": space != HU,
        "space": space,
        "sample": sample,
        "foreground_sample": fg,
    }


def dataset_fingerprint(cases: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The fingerprint of a training set from its :func:`case_fingerprint` entries (JSON-ready)."""
    spacings = np.array([c["spacing"] for c in cases], dtype=np.float64)
    shapes = np.array([c["shape"] for c in cases], dtype=np.int64)
    everything = np.concatenate([c["sample"] for c in cases])
    foreground = np.concatenate([c["foreground_sample"] for c in cases])
    pct = (0.5, 50.0, 99.5)

    def percentiles(values: np.ndarray) -> dict[str, float] | None:
        if values.size == 0:
            return None
        return {f"p{p:g}": float(np.percentile(values, p)) for p in pct} | {"mean": float(values.mean()), "std": float(values.std())}

    displays = [bool(c["display"]) for c in cases]
    return {
        "cases": len(cases),
        "spacings": spacings.tolist(),
        "shapes": shapes.tolist(),
        "median_spacing": np.median(spacings, axis=0).tolist(),
        "median_shape": np.median(shapes, axis=0).tolist(),
        "display_range": all(displays),
        "mixed_intensity_storage": len(set(displays)) > 1,
        "intensity": percentiles(everything),
        "foreground_intensity": percentiles(foreground),
    }


def target_spacing(fingerprint: dict[str, Any]) -> tuple[float, float, float]:
    """nnU-Net's rule: the median spacing; an axis over three times coarser than the finest takes its 10th percentile."""
    spacings = np.asarray(fingerprint["spacings"], dtype=np.float64)
    target = np.median(spacings, axis=0)
    worst = int(np.argmax(target))
    if target[worst] > ANISOTROPY * target.min():
        target[worst] = float(np.percentile(spacings[:, worst], 10))
    return tuple(float(v) for v in target)  # type: ignore[return-value]


def patch_size_for(grid_shape: Sequence[float], spacing: Sequence[float], budget: int, multiple: int = PATCH_MULTIPLE) -> tuple[int, ...]:
    """The median grid shape (rounded down to ``multiple``, so a patch holds no padding), shrunk along
    its longest side in mm until it holds at most ``budget`` voxels; never below ``multiple`` per axis."""
    patch = [max(multiple, int(np.floor(s / multiple)) * multiple) for s in grid_shape]
    while int(np.prod(patch)) > budget:
        extent = [p * sp if p > multiple else -1.0 for p, sp in zip(patch, spacing)]
        axis = int(np.argmax(extent))
        if extent[axis] < 0:
            break
        patch[axis] -= multiple
    return tuple(patch)


def make_plan(
    fingerprint: dict[str, Any],
    cases: Sequence[dict[str, Any]],
    cfg: Any,
    patch_dims: int = 3,
    patch_size: Sequence[int] | None = None,
) -> VolumePlan:
    """The volume plan of a fingerprint under the config's choices (``cfg``: ``preprocess.volume``).

    ``cases`` are the :func:`case_fingerprint` entries (their intensity samples give the z-score
    statistics of the scaled intensities). ``patch_dims`` 2 plans an in-plane patch (2.5D);
    ``patch_size`` given (``sampler.patch_size``) is kept.
    """
    if cfg.spacing == "auto":
        spacing: tuple[float, float, float] | None = target_spacing(fingerprint)
    elif cfg.spacing is None:
        spacing = None
    else:
        spacing = tuple(float(v) for v in cfg.spacing)  # type: ignore[assignment]
    if spacing is not None and cfg.spacing_scale != 1.0:
        spacing = tuple(s * cfg.spacing_scale for s in spacing)  # type: ignore[assignment]
    window = hu_window() if cfg.window == "auto" else (None if cfg.window is None else tuple(float(v) for v in cfg.window))
    display = bool(fingerprint["display_range"])
    crop = cfg.crop if cfg.crop != "auto" else ("none" if display else "body")
    scaling = VolumePlan(window=window)  # type: ignore[arg-type]
    scaled = np.concatenate([scale_intensity(c["sample"], scaling, c.get("space") or (DISPLAY if c["display"] else HU))[0] for c in cases])
    mean, std = float(scaled.mean()), float(scaled.std()) or 1.0
    if patch_size is None:
        median_spacing = np.asarray(fingerprint["median_spacing"], dtype=np.float64)
        grid = np.asarray(fingerprint["median_shape"], dtype=np.float64) * median_spacing / np.asarray(spacing or median_spacing)
        if patch_dims == 2:
            side = int(np.sqrt(cfg.patch_voxels))
            patch_size = patch_size_for(grid[:2], (spacing or median_spacing)[:2], side * side)
        else:
            patch_size = patch_size_for(grid, spacing or median_spacing, cfg.patch_voxels)
    return VolumePlan(
        spacing=spacing,  # type: ignore[arg-type]
        window=window,  # type: ignore[arg-type]
        normalise=cfg.normalise,
        mean=mean,
        std=std,
        crop=crop,
        crop_margin_mm=cfg.crop_margin_mm,
        interpolation=cfg.interpolation,
        patch_size=tuple(int(p) for p in patch_size),
        context_slices=int(cfg.context_slices),
    )
