"""Deterministic synthetic chest-CT phantoms with infection masks.

Each slice has a body, two lungs, vessels, and infection lesions of two kinds:
ground-glass opacity (hazy, moderately raised attenuation, larger) and consolidation
(dense, small, often inside a ground-glass patch). Intensities are built in Hounsfield
units, then shown through a lung window to 8-bit, as CT slices of the field are shipped.
The phantom lets the demo and the tests train a real model without downloaded data.
``lesions=(0, 0)`` gives a lesion-free slice (a negative for classification: same anatomy, vessels
and noise, no infection), and ``write_phantom_dataset(negatives=f)`` mixes such slices in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covseg.transforms.intensity import LUNG_WINDOW


@dataclass
class PhantomSlice:
    """One phantom: 8-bit image, binary infection mask, class map (1 GGO, 2 consolidation), lungs."""

    image: np.ndarray
    infection: np.ndarray
    classes: np.ndarray
    lungs: np.ndarray


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, angle: float = 0.0) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u = (dx * c + dy * s) / rx
    v = (-dx * s + dy * c) / ry
    return u * u + v * v <= 1.0


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape), sigma)
    return field / (field.std() + 1e-8)


def _blob(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, radius: float) -> np.ndarray:
    """An irregular lesion: a union of jittered ellipses around a centre."""
    out = np.zeros(yy.shape, dtype=bool)
    for _ in range(rng.integers(2, 5)):
        oy, ox = rng.normal(0, radius * 0.45, size=2)
        ry, rx = radius * rng.uniform(0.5, 1.0, size=2)
        out |= _ellipse(yy, xx, cy + oy, cx + ox, ry, rx, rng.uniform(0, np.pi))
    return out


def make_phantom(seed: int, size: int = 128, lesions: tuple[int, int] = (1, 4)) -> PhantomSlice:
    """Make one phantom slice of ``size``² pixels from ``seed`` (same seed, same slice)."""
    from scipy.ndimage import binary_erosion, gaussian_filter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    s = float(size)
    hu = np.full((size, size), -1000.0, dtype=np.float32)

    body = _ellipse(yy, xx, s * 0.5 + rng.normal(0, s * 0.01), s * 0.5, s * rng.uniform(0.36, 0.42), s * rng.uniform(0.44, 0.48))
    hu[body] = 40.0
    lungs = np.zeros_like(body)
    for side in (-1, 1):
        cx = s * 0.5 + side * s * rng.uniform(0.18, 0.22)
        lungs |= _ellipse(yy, xx, s * rng.uniform(0.47, 0.53), cx, s * rng.uniform(0.26, 0.31), s * rng.uniform(0.13, 0.16), rng.uniform(-0.2, 0.2))
    lungs &= binary_erosion(body, iterations=max(2, size // 32))
    hu[lungs] = -850.0 + 30.0 * _smooth_noise(rng, (size, size), 2.0)[lungs]

    # Vessels: small bright dots and short segments inside the lungs.
    lung_idx = np.argwhere(lungs)
    for _ in range(int(rng.integers(10, 25))):
        cy, cx = lung_idx[rng.integers(len(lung_idx))]
        r = rng.uniform(0.6, 1.6) * s / 128
        vessel = _ellipse(yy, xx, cy, cx, r, r * rng.uniform(1.0, 3.0), rng.uniform(0, np.pi)) & lungs
        hu[vessel] = 30.0

    # Lesions, biased to the lung periphery (as COVID-19 infection is).
    dist = _distance_inside(lungs)
    periphery = lungs & (dist < np.percentile(dist[lungs], 60)) if lungs.any() else lungs
    candidates = np.argwhere(periphery)
    classes = np.zeros((size, size), dtype=np.uint8)
    n_lesions = int(rng.integers(lesions[0], lesions[1] + 1)) if len(candidates) else 0
    for _ in range(n_lesions):
        cy, cx = candidates[rng.integers(len(candidates))]
        ggo = _blob(rng, yy, xx, cy, cx, s * rng.uniform(0.05, 0.11)) & lungs
        classes[ggo & (classes == 0)] = 1
        if rng.random() < 0.6:
            cons = _blob(rng, yy, xx, cy + rng.normal(0, 2), cx + rng.normal(0, 2), s * rng.uniform(0.015, 0.04)) & ggo
            classes[cons] = 2
    ggo_hu = -450.0 + 60.0 * _smooth_noise(rng, (size, size), 1.5)
    hu = np.where(classes == 1, 0.35 * hu + 0.65 * ggo_hu, hu)
    hu = np.where(classes == 2, 20.0 + 15.0 * _smooth_noise(rng, (size, size), 1.0), hu)

    hu = gaussian_filter(hu, 0.7) + rng.normal(0, 25.0, size=hu.shape)
    lo, hi = LUNG_WINDOW
    image = np.clip((hu - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    return PhantomSlice(image=image, infection=(classes > 0).astype(np.uint8), classes=classes, lungs=lungs.astype(np.uint8))


def _distance_inside(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(mask)


def is_negative_case(index: int, fraction: float) -> bool:
    """Whether case ``index`` of a phantom set with a ``fraction`` of negatives is lesion-free.

    The golden-ratio sequence ``frac(i · 0.618…)`` spreads the negatives evenly over the indices
    and does not depend on the set's size.
    """
    return fraction > 0 and (index * 0.6180339887498949) % 1.0 < fraction


def write_phantom_dataset(
    root: str | Path, n: int, size: int = 128, seed: int = 0, edges: bool = True, negatives: float = 0.0
) -> Path:
    """Write ``n`` phantoms in the generic folder layout (``images/ masks/ masks_multiclass/ edges/``).

    Case ``i`` uses seed ``seed * 100003 + i``, so a dataset is reproducible and its cases are
    independent of ``n``. ``negatives`` is the share of lesion-free slices (empty masks); with
    negatives a ``labels.csv`` (``image,label``: 0 lesion-free, 1 infected) is written beside
    the folders, as a classification data set ships its labels.
    """
    from covseg.data.imageio import write_image, write_mask
    from covseg.utils.outputs import write_csv

    if not 0.0 <= negatives <= 1.0:
        raise ValueError(f"negatives must be a share in [0, 1], got {negatives}")
    root = Path(root)
    rows = []
    for i in range(n):
        negative = is_negative_case(i, negatives)
        ph = make_phantom(seed * 100003 + i, size=size, lesions=(0, 0) if negative else (1, 4))
        stem = f"phantom_{i:04d}"
        write_image(root / "images" / f"{stem}.png", ph.image)
        write_mask(root / "masks" / f"{stem}.png", ph.infection)
        write_mask(root / "masks_multiclass" / f"{stem}.png", ph.classes, scale_binary=False)
        if edges:
            write_mask(root / "edges" / f"{stem}.png", _edge_of(ph.infection))
        rows.append([f"images/{stem}.png", int(ph.infection.any())])
    if negatives > 0:
        write_csv(root / "labels.csv", rows, ["image", "label"])
    return root


def _edge_of(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_dilation, binary_erosion

    m = mask.astype(bool)
    return (binary_dilation(m) & ~binary_erosion(m)).astype(np.uint8)
