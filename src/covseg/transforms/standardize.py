"""Intensity standardisation of CT slices onto a reference (Nyúl & Udupa, 1999/2000).

Slices from another scanner or CT window (COVID-SemiSeg's ``coronacases`` volumes) share the anatomy
but not the grey levels of the labelled slices; a model trained on the labelled ones misreads them.
Nyúl–Udupa histogram standardisation learns reference landmarks (grey values at fixed percentiles
inside the body) from the labelled images and maps each new image, or each volume as a whole, with
the piecewise-linear function that sends its own landmarks onto the reference ones.

* ``histogram``: the deciles with the 1st and 99th percentiles as cutoffs (torchio's
  ``HistogramStandardization`` landmarks and mapping: linear between landmarks, the end segments
  extended beyond them).
* ``percentile``: the 1st and 99th percentiles only, one linear scaling.

Learning follows the paper: each reference image's landmarks are scaled linearly so that its
cutoffs land on a standard scale, then averaged. The standard scale here is the reference images'
mean cutoffs, so the mapped values stay in the reference's own grey scale (0..255 for 8-bit
slices) instead of an arbitrary 0..100; mapped values are clipped to the reference's value range.
Landmarks are computed inside :func:`body_mask` (outside air and black padding would otherwise set
the low landmarks). NumPy and SciPy only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

HISTOGRAM_PERCENTILES = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)
PERCENTILE_PERCENTILES = (1.0, 99.0)
METHODS = {"histogram": HISTOGRAM_PERCENTILES, "percentile": PERCENTILE_PERCENTILES}
_SLICE_SUFFIX = re.compile(r"^(?P<volume>.+)_(?P<index>\d+)$")


def volume_key(stem: str) -> str:
    """The volume a slice file belongs to: ``Data-1_coronacases_org_001_57`` → ``Data-1_coronacases_org_001``.

    A stem without a trailing ``_<number>`` is its own volume (one slice, one mapping)."""
    match = _SLICE_SUFFIX.match(stem)
    return match.group("volume") if match else stem


def grey(image: np.ndarray) -> np.ndarray:
    """One grey channel of an ``(H, W)`` or ``(H, W, C)`` image (channel mean), float32."""
    x = np.asarray(image, dtype=np.float32)
    return x if x.ndim == 2 else x[..., :3].mean(axis=-1)


def body_mask(image: np.ndarray, dark_fraction: float = 0.02) -> np.ndarray:
    """Pixels inside the body: all but the near-black regions that touch the image border.

    Near-black means at most ``dark_fraction`` of the image's grey range above its minimum (outside
    air, black padding). Dark lungs inside the body are kept: only regions connected to the border
    are dropped. An image that would lose every pixel keeps them all."""
    from scipy import ndimage

    g = grey(image)
    lo, hi = float(g.min()), float(g.max())
    dark = g <= lo + dark_fraction * (hi - lo)
    labels, n = ndimage.label(dark)
    if n == 0:
        return np.ones(g.shape, dtype=bool)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.isin(labels, border[border > 0])
    return ~outside if (~outside).any() else np.ones(g.shape, dtype=bool)


class GreyLevels:
    """The grey values of one group of images (a volume's slices) inside their body masks, pooled.

    Integer grey levels (8- or 16-bit images) are kept as counts, so a 200-slice volume costs a
    histogram, not its pixels; other values are kept as they are. ``percentiles`` equals
    ``np.percentile`` of the pooled values (linear interpolation) either way."""

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None
        self.values: list[np.ndarray] = []

    def add(self, image: np.ndarray, mask: np.ndarray | None = None) -> None:
        g = grey(image)
        v = g[body_mask(g) if mask is None else np.asarray(mask, dtype=bool)]
        if not self.values and v.size and v.min() >= 0 and v.max() < 65536 and np.array_equal(v, np.round(v)):
            counts = np.bincount(v.astype(np.int64), minlength=256)
            if self.counts is None:
                self.counts = counts
            else:
                size = max(len(self.counts), len(counts))
                self.counts = np.pad(self.counts, (0, size - len(self.counts))) + np.pad(counts, (0, size - len(counts)))
            return
        if self.counts is not None:  # a non-integer image joins integer ones: fall back to values
            self.values.append(np.repeat(np.arange(len(self.counts), dtype=np.float32), self.counts))
            self.counts = None
        self.values.append(v.astype(np.float32))

    def percentiles(self, q: Iterable[float]) -> np.ndarray:
        q = np.asarray(list(q), dtype=np.float64)
        if self.counts is not None:
            cdf = np.cumsum(self.counts)
            position = q / 100.0 * (cdf[-1] - 1)
            below, above = np.floor(position), np.ceil(position)
            v_below = np.searchsorted(cdf, below, side="right").astype(np.float64)
            v_above = np.searchsorted(cdf, above, side="right").astype(np.float64)
            return v_below + (position - below) * (v_above - v_below)
        if not self.values:
            raise ValueError("no grey values: add images first")
        return np.percentile(np.concatenate(self.values), q)


@dataclass(frozen=True)
class IntensityReference:
    """Reference landmarks (grey values at ``percentiles``) and the value range mapped images are clipped to."""

    method: str
    percentiles: tuple[float, ...]
    landmarks: tuple[float, ...]
    low: float
    high: float

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "percentiles": list(self.percentiles),
            "landmarks": [round(v, 4) for v in self.landmarks],
            "range": [self.low, self.high],
        }


def learn_reference(images: Iterable[np.ndarray], method: str = "histogram") -> IntensityReference:
    """Nyúl–Udupa training on reference images (each its own group): average landmarks on the mean cutoff scale."""
    if method not in METHODS:
        raise ValueError(f"unknown standardisation {method!r}; use one of {sorted(METHODS)}")
    q = METHODS[method]
    rows, low, high = [], np.inf, -np.inf
    for image in images:
        levels = GreyLevels()
        levels.add(image)
        rows.append(levels.percentiles(q))
        g = grey(image)
        low, high = min(low, float(g.min())), max(high, float(g.max()))
    if not rows:
        raise ValueError("no reference images")
    table = np.vstack(rows)
    table = table[table[:, -1] > table[:, 0]]  # a flat image has no scale
    if not len(table):
        raise ValueError("every reference image is flat inside its body")
    s1, s2 = table[:, 0].mean(), table[:, -1].mean()
    scaled = s1 + (table - table[:, :1]) * ((s2 - s1) / (table[:, -1:] - table[:, :1]))
    return IntensityReference(method, tuple(q), tuple(float(v) for v in scaled.mean(axis=0)), low, high)


def map_landmarks(x: np.ndarray, source: np.ndarray, target: np.ndarray, epsilon: float = 1e-5) -> np.ndarray:
    """Piecewise-linear map sending ``source`` landmarks onto ``target`` (both ascending), applied to ``x``.

    Linear between landmarks; below the second and above the second-last landmark the end segments go
    on. A segment whose source landmarks coincide (within ``epsilon``) is flat, as in torchio."""
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    width = np.diff(source)
    slope = np.where(width >= epsilon, np.diff(target) / np.where(width >= epsilon, width, 1.0), 0.0)
    intercept = target[:-1] - slope * source[:-1]
    segment = np.searchsorted(source[1:-1], x, side="right")
    return (slope[segment] * x + intercept[segment]).astype(np.float32)


def source_landmarks(images: Iterable[np.ndarray], reference: IntensityReference) -> np.ndarray:
    """The landmarks of a group of images (one volume's slices, or one slice), pooled inside their bodies."""
    levels = GreyLevels()
    for image in images:
        levels.add(image)
    return levels.percentiles(reference.percentiles)


def apply_reference(image: np.ndarray, source: np.ndarray, reference: IntensityReference) -> np.ndarray:
    """``image`` mapped from its group's ``source`` landmarks onto the reference, every channel alike, clipped
    to the reference's value range (float32, same shape)."""
    mapped = map_landmarks(np.asarray(image, dtype=np.float32), source, np.asarray(reference.landmarks))
    return np.clip(mapped, reference.low, reference.high)


def standardize(images: list[np.ndarray], reference: IntensityReference) -> list[np.ndarray]:
    """Map a group of images onto the reference with one shared mapping (the group's pooled landmarks)."""
    source = source_landmarks(images, reference)
    return [apply_reference(image, source, reference) for image in images]
