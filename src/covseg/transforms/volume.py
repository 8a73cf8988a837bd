"""CT volume preprocessing replayed at prediction, and its exact way back to the input's geometry.

A :class:`VolumePlan` (saved in ``model.json`` as ``volume`` and in ``plan.json``) says how a
volume ``(X, Y, Z)`` in any orientation becomes a network input ``(C, *grid)``:

1. reorient to RAS (nibabel orientations: flips and axis swaps only, exactly invertible);
2. intensities to 0..1: an HU window (lung by default), or, for volumes already stored as
   0..255 display values (stacked JPEG/PNG slices), a division by 255, never a second window;
3. resample to the plan's spacing (MONAI ``Resize`` to the target-spacing shape: trilinear for
   images, nearest for labels; ``bspline``: SciPy order-3 zoom);
4. crop to the body (threshold + morphology + largest component, MONAI's bounding box with a
   margin in mm), so no window is spent on air;
5. normalise (MONAI ``NormalizeIntensity`` with the dataset's mean / std, or per-case
   ``ScaleIntensityRangePercentiles``).

:func:`restore_volume` undoes 5–1 for a probability map: paste into the uncropped grid, resample
to the reoriented input shape, reorient back, so the map lies voxel for voxel on the input (same
shape, same affine). :class:`VolumeGeometry` holds what the way back needs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from covseg.transforms.intensity import DISPLAY_MAX as DISPLAY_MAX
from covseg.transforms.intensity import LUNG_WINDOW as LUNG_WINDOW
from covseg.transforms.orientation import voxel_volume_ml as voxel_volume_ml
from covseg.utils.monai_import import import_monai


@dataclass
class VolumePlan:
    """How a volume becomes a network input (see the module docstring); ``None`` spacing keeps the volume's.

    ``spacing`` and ``patch_size`` are in RAS axis order (left–right, posterior–anterior,
    inferior–superior). ``crop_threshold`` is in the 0..1 scaled intensity (0.5 = -500 HU in the
    lung window). ``context_slices`` > 0 gives a 2D model the neighbouring axial slices as channels.
    """

    spacing: tuple[float, float, float] | None = None
    window: tuple[float, float] | None = LUNG_WINDOW
    normalise: Literal["zscore", "percentile", "none"] = "zscore"
    mean: float = 0.0
    std: float = 1.0
    percentiles: tuple[float, float] = (0.5, 99.5)
    crop: Literal["body", "none"] = "body"
    crop_threshold: float = 0.5
    crop_margin_mm: float = 10.0
    interpolation: Literal["linear", "bspline"] = "linear"
    patch_size: tuple[int, ...] | None = None
    context_slices: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("spacing", "window", "percentiles", "patch_size"):
            d[key] = None if d[key] is None else [float(v) if key != "patch_size" else int(v) for v in d[key]]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VolumePlan:
        d = {k: v for k, v in dict(d).items() if k in cls.__dataclass_fields__}
        for key in ("spacing", "window", "percentiles", "patch_size"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


@dataclass
class VolumeGeometry:
    """What :func:`restore_volume` needs to put a grid map back on the input volume."""

    shape: tuple[int, int, int]
    ornt: np.ndarray
    oriented_shape: tuple[int, int, int]
    grid_shape: tuple[int, int, int]
    box: tuple[tuple[int, int], ...]
    spacing: tuple[float, float, float]
    display: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cropped_shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in self.box)


def ras_orientation(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation transform from the volume's axes to RAS."""
    import nibabel.orientations as nio

    return nio.ornt_transform(nio.io_orientation(np.asarray(affine)), nio.axcodes2ornt(("R", "A", "S")))


def oriented_spacing(affine: np.ndarray, ornt: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) along the RAS axes of the reoriented volume."""
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    out = [0.0, 0.0, 0.0]
    for axis_in, (axis_out, _) in enumerate(ornt):
        out[int(axis_out)] = float(zooms[axis_in])
    return out[0], out[1], out[2]


def to_ras(volume: np.ndarray, affine: np.ndarray, contiguous: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``volume`` (``(X, Y, Z)`` or ``(X, Y, Z, C)``) reoriented to RAS, and the transform used; with
    ``contiguous=False`` a view (flipped or permuted axes) where the next step makes a new array anyway."""
    import nibabel.orientations as nio

    ornt = ras_orientation(affine)
    oriented = nio.apply_orientation(volume, ornt)
    return (np.ascontiguousarray(oriented) if contiguous else oriented), ornt


def from_ras(volume: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_ras` for a ``(*spatial)`` or ``(*spatial, C)`` array."""
    import nibabel.orientations as nio

    inverse = np.zeros_like(ornt)
    for axis_in, (axis_out, flip) in enumerate(ornt):
        inverse[int(axis_out)] = [axis_in, flip]
    return np.ascontiguousarray(nio.apply_orientation(volume, inverse))


def scale_intensity(volume: np.ndarray, plan: VolumePlan, space: str) -> tuple[np.ndarray, bool]:
    """Intensities to 0..1 (:func:`covseg.transforms.intensity.to_unit`): HU through the plan's window
    (MONAI ``ScaleIntensityRange`` semantics, clipped), display values /255, 0..1 kept; a plan without
    window keeps HU as stored. ``space`` comes from :func:`covseg.data.intensity.intensity_space`;
    returns ``(scaled, not HU)``."""
    from covseg.transforms.intensity import HU, SPACES, to_unit

    if space not in SPACES:
        raise ValueError(f"unknown intensity space {space!r}")
    if space == HU and plan.window is None:
        return np.asarray(volume, dtype=np.float32), False
    return to_unit(volume, space, plan.window), space != HU


def grid_shape_for(shape: tuple[int, ...], spacing: tuple[float, ...], target: tuple[float, ...] | None) -> tuple[int, int, int]:
    """Shape of the resampled grid: each axis scaled by ``spacing / target`` (at least one voxel)."""
    if target is None:
        return tuple(int(s) for s in shape)  # type: ignore[return-value]
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target))  # type: ignore[return-value]


def resample(array: np.ndarray, shape: tuple[int, ...], mode: str = "linear") -> np.ndarray:
    """``(C, *spatial)`` resampled to ``shape``: MONAI ``Resize`` (trilinear, or nearest-exact for
    labels) or an order-3 B-spline (SciPy ``zoom`` on the voxel grid, as ``align_corners=False``)."""
    if tuple(array.shape[1:]) == tuple(shape):
        return array
    if mode == "bspline":
        from scipy.ndimage import zoom

        factors = [n / s for n, s in zip(shape, array.shape[1:])]
        return np.stack([zoom(c, factors, order=3, mode="nearest", grid_mode=True) for c in array]).astype(np.float32)
    import_monai()
    from monai.transforms import Resize

    interp = "nearest-exact" if mode == "nearest" else "trilinear"
    out = Resize(spatial_size=tuple(int(s) for s in shape), mode=interp, anti_aliasing=False)(array)
    return np.asarray(out.numpy() if hasattr(out, "numpy") else out)


def body_mask(scaled: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The body in a 0..1-scaled volume: above ``threshold``, opened, the largest component, holes filled
    slice by slice (the lungs inside the body are dark)."""
    from scipy import ndimage

    mask = ndimage.binary_opening(scaled > threshold, iterations=1)
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    mask = labels == int(np.argmax(sizes))
    for z in range(mask.shape[-1]):
        mask[..., z] = ndimage.binary_fill_holes(mask[..., z])
    return mask


def body_box(scaled: np.ndarray, plan: VolumePlan, spacing: tuple[float, ...]) -> tuple[tuple[int, int], ...]:
    """Bounding box (start, end per axis) of the body plus the plan's margin; the whole grid when none."""
    import_monai()
    from monai.transforms.utils import generate_spatial_bounding_box

    whole = tuple((0, int(n)) for n in scaled.shape)
    if plan.crop != "body":
        return whole
    mask = body_mask(scaled, plan.crop_threshold)
    if not mask.any():
        return whole
    margin = [math.ceil(plan.crop_margin_mm / s) for s in spacing]
    start, end = generate_spatial_bounding_box(mask[None], margin=margin)
    return tuple((max(0, int(a)), min(int(n), int(b))) for a, b, n in zip(start, end, scaled.shape))


def normalise(x: np.ndarray, plan: VolumePlan) -> np.ndarray:
    """Z-score with the plan's dataset statistics, or a per-case percentile range to 0..1 (MONAI)."""
    import_monai()
    from monai.transforms import NormalizeIntensity, ScaleIntensityRangePercentiles

    if plan.normalise == "zscore":
        out = NormalizeIntensity(subtrahend=plan.mean, divisor=plan.std, dtype=np.float32)(x)
    elif plan.normalise == "percentile":
        lo, hi = plan.percentiles
        out = ScaleIntensityRangePercentiles(lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True, dtype=np.float32)(x)
    else:
        return x.astype(np.float32)
    return np.asarray(out, dtype=np.float32)


def _channels_first(volume: np.ndarray) -> np.ndarray:
    return volume[None] if volume.ndim == 3 else np.moveaxis(volume, -1, 0)


def prepare_volume(volume: np.ndarray, affine: np.ndarray, plan: VolumePlan, space: str) -> tuple[np.ndarray, VolumeGeometry]:
    """A volume ``(X, Y, Z)`` (or ``(X, Y, Z, C)``) as the network input ``(C, *grid)`` float32, and its geometry;
    ``space`` is the volume's intensity space (:func:`covseg.data.intensity.intensity_space`)."""
    volume = np.asarray(volume)
    if volume.ndim not in (3, 4):
        raise ValueError(f"a volume (X, Y, Z) or (X, Y, Z, C) is needed, got shape {volume.shape}")
    shape = tuple(int(s) for s in volume.shape[:3])
    oriented, ornt = to_ras(volume, affine, contiguous=False)  # scaling writes the new array (no extra copy for flips)
    spacing = oriented_spacing(affine, ornt)
    scaled, display = scale_intensity(oriented, plan, space)
    x = _channels_first(np.ascontiguousarray(scaled))
    grid = grid_shape_for(x.shape[1:], spacing, plan.spacing)
    x = resample(x, grid, "bspline" if plan.interpolation == "bspline" else "linear")
    if plan.interpolation == "bspline":
        x = np.clip(x, 0.0, 1.0) if (display or plan.window is not None) else x
    grid_spacing = tuple(s * n / g for s, n, g in zip(spacing, oriented.shape[:3], grid))
    box = body_box(x[0], plan, grid_spacing)
    x = x[(slice(None), *(slice(a, b) for a, b in box))]
    geometry = VolumeGeometry(shape, ornt, tuple(int(s) for s in oriented.shape[:3]), grid, box, grid_spacing, display)  # type: ignore[arg-type]
    return np.ascontiguousarray(normalise(x, plan)), geometry


def prepare_labels(labels: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    """A label volume ``(X, Y, Z)`` on the network grid of its image (reoriented, nearest, cropped), uint8."""
    import nibabel.orientations as nio

    oriented = nio.apply_orientation(np.asarray(labels, dtype=np.uint8), geometry.ornt)
    grid = resample(np.ascontiguousarray(oriented)[None].astype(np.float32), geometry.grid_shape, "nearest")[0]
    grid = grid[tuple(slice(a, b) for a, b in geometry.box)]
    return np.rint(grid).astype(np.uint8)


def restore_volume(probs: Any, geometry: VolumeGeometry) -> np.ndarray:
    """Probabilities ``(K, *cropped grid)`` (torch or NumPy) back on the input volume: ``(K, X, Y, Z)``.

    Outside the crop a binary map is 0 and a K-class map is background (channel 0 = 1).
    """
    import torch
    import_monai()
    from monai.transforms import Resize

    p = torch.as_tensor(probs, dtype=torch.float32)
    k = p.shape[0]
    full = torch.zeros((k, *geometry.grid_shape), dtype=torch.float32)
    if k > 1:
        full[0] = 1.0
    full[(slice(None), *(slice(a, b) for a, b in geometry.box))] = p
    if tuple(full.shape[1:]) != tuple(geometry.oriented_shape):
        full = Resize(spatial_size=geometry.oriented_shape, mode="trilinear", anti_aliasing=False)(full)
        full = torch.as_tensor(full)
    out = full.numpy()
    return np.ascontiguousarray(np.moveaxis(from_ras(np.moveaxis(out, 0, -1), geometry.ornt), -1, 0))
