"""Deterministic 3D chest-CT phantoms in Hounsfield units, with infection label volumes.

The 3D counterpart of :mod:`covseg.data.synthetic`: a body (an elliptic cylinder whose outline
varies along the axial axis), two lungs (ellipsoids inside it, textured parenchyma), vessels
(bright tubes running through the lungs) and lesions of varied size and contrast, biased to the
lung periphery: ground-glass opacity (hazy, larger, contrast drawn per lesion) and consolidation
(dense cores inside some of them). Volumes are written as NIfTI in HU (int16) with a
DICOM-like LPS-stored affine, so orientation, resampling and windowing are all exercised by the
same files a user would have. Tests and benchmarks train and time 3D models on them; no real
COVID volume with infection masks can be downloaded here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class PhantomVolume:
    """One 3D phantom: HU volume ``(X, Y, Z)``, infection mask, class map (1 GGO, 2 consolidation), lungs, affine."""

    image: np.ndarray
    infection: np.ndarray
    classes: np.ndarray
    lungs: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


def phantom_affine(spacing: tuple[float, float, float], shape: tuple[int, int, int]) -> np.ndarray:
    """A scanner-like affine: columns to patient left, rows to posterior, slices superior (as DICOM
    series converted to NIfTI usually are), centred on the origin."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [spacing[0] * shape[0] / 2, spacing[1] * shape[1] / 2, -spacing[2] * shape[2] / 2]
    return affine


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinates in units of the in-plane size (x, y in 0..1 across the slice; z in 0..1 along the stack)."""
    x, y, z = (np.arange(n, dtype=np.float32) + 0.5 for n in shape)
    return x[:, None, None] / shape[0], y[None, :, None] / shape[1], z[None, None, :] / shape[2]


def _ellipsoid(x, y, z, centre, radii, angle: float = 0.0) -> np.ndarray:
    """Voxels inside an ellipsoid (rotated by ``angle`` in the axial plane); all in normalised units."""
    c, s = np.cos(angle), np.sin(angle)
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    u = (dx * c + dy * s) / radii[0]
    v = (-dx * s + dy * c) / radii[1]
    w = dz / radii[2]
    return u * u + v * v + w * w <= 1.0


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / (field.std() + 1e-8)


def _blob(rng: np.random.Generator, x, y, z, centre, radius: float, aspect_z: float) -> np.ndarray:
    """An irregular lesion: a union of jittered ellipsoids around ``centre`` (``radius`` in-plane units)."""
    out = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), dtype=bool)
    for _ in range(int(rng.integers(2, 5))):
        offset = rng.normal(0, radius * 0.4, size=3) * np.array([1.0, 1.0, aspect_z])
        radii = radius * rng.uniform(0.55, 1.0, size=3) * np.array([1.0, 1.0, aspect_z])
        out |= _ellipsoid(x, y, z, np.asarray(centre) + offset, radii, rng.uniform(0, np.pi))
    return out


def make_phantom_volume(
    seed: int,
    shape: tuple[int, int, int] = (64, 64, 32),
    spacing: tuple[float, float, float] = (5.0, 5.0, 8.0),
    lesions: tuple[int, int] = (1, 4),
) -> PhantomVolume:
    """One phantom of ``shape`` voxels at ``spacing`` mm from ``seed`` (same seed, same volume).

    Sizes scale with the shape, so a 64×64×32 phantom and a 512×512×100 one look alike.
    """
    from scipy.ndimage import binary_erosion, distance_transform_edt, gaussian_filter

    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
    x, y, z = _grid(shape)  # type: ignore[arg-type]
    # the axial extent in in-plane units, so that shapes stay round in millimetres
    z_scale = (shape[2] * spacing[2]) / (shape[0] * spacing[0])
    aspect_z = 1.0 / max(z_scale, 1e-6)
    full = (shape[0], shape[1], shape[2])

    # body: an elliptic cylinder whose radii change slowly along z
    zz = z[0, 0, :]
    rx = rng.uniform(0.42, 0.47) + 0.02 * np.sin(2 * np.pi * (zz + rng.uniform()))
    ry = rng.uniform(0.33, 0.39) + 0.02 * np.cos(2 * np.pi * (zz + rng.uniform()))
    body = ((x - 0.5) / rx[None, None, :]) ** 2 + ((y - 0.5) / ry[None, None, :]) ** 2 <= 1.0
    hu = np.where(body, np.float32(40.0), np.float32(-1000.0)).astype(np.float32)

    # lungs: two ellipsoids, tallest in the middle of the stack, kept inside the body wall
    lungs = np.zeros(full, dtype=bool)
    for side in (-1, 1):
        centre = (0.5 + side * rng.uniform(0.18, 0.22), rng.uniform(0.47, 0.53), 0.5)
        radii = (rng.uniform(0.13, 0.16), rng.uniform(0.25, 0.3), rng.uniform(0.55, 0.7))
        lungs |= _ellipsoid(x, y, z, centre, radii, rng.uniform(-0.2, 0.2))
    lungs &= binary_erosion(body, iterations=max(2, shape[0] // 16))
    hu[lungs] = (-850.0 + 30.0 * _smooth_noise(rng, full, 1.5))[lungs]

    # vessels: bright tubes (segments between two lung points), thinner than any lesion
    lung_idx = np.argwhere(lungs)
    norm = np.array(shape, dtype=np.float32)
    for _ in range(int(rng.integers(6, 14))) if len(lung_idx) else ():
        a = (lung_idx[rng.integers(len(lung_idx))] + 0.5) / norm
        b = (lung_idx[rng.integers(len(lung_idx))] + 0.5) / norm
        b = a + (b - a) * rng.uniform(0.2, 0.5)
        r = rng.uniform(0.008, 0.016)
        vessel = _segment_distance(x, y, z, a, b, aspect_z) <= r
        hu[vessel & lungs] = 30.0

    # lesions, in the outer part of the lungs
    dist = distance_transform_edt(lungs)
    periphery = lungs & (dist < np.percentile(dist[lungs], 60)) if lungs.any() else lungs
    candidates = np.argwhere(periphery)
    classes = np.zeros(full, dtype=np.uint8)
    ggo_hu = np.zeros(full, dtype=np.float32)
    n_lesions = int(rng.integers(lesions[0], lesions[1] + 1)) if len(candidates) else 0
    for _ in range(n_lesions):
        centre = (candidates[rng.integers(len(candidates))] + 0.5) / norm
        ggo = _blob(rng, x, y, z, centre, rng.uniform(0.1, 0.17), aspect_z) & lungs
        new = ggo & (classes == 0)
        classes[new] = 1
        ggo_hu[new] = rng.uniform(-550.0, -300.0)  # contrast varies from faint to marked
        if rng.random() < 0.6:
            core = _blob(rng, x, y, z, centre, rng.uniform(0.03, 0.06), aspect_z) & ggo
            classes[core] = 2
    texture = 50.0 * _smooth_noise(rng, full, 1.0)
    hu = np.where(classes == 1, 0.2 * hu + 0.8 * (ggo_hu + texture), hu)
    hu = np.where(classes == 2, 20.0 + 15.0 * _smooth_noise(rng, full, 1.0), hu)
    hu = gaussian_filter(hu, 0.6) + rng.normal(0, 20.0, size=full).astype(np.float32)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return PhantomVolume(
        image=image,
        infection=(classes > 0).astype(np.uint8),
        classes=classes,
        lungs=lungs.astype(np.uint8),
        affine=phantom_affine(spacing, shape),  # type: ignore[arg-type]
    )


def _segment_distance(x, y, z, a: np.ndarray, b: np.ndarray, aspect_z: float) -> np.ndarray:
    """Distance (normalised in-plane units) of every voxel to the segment ``a``–``b``."""
    scale = np.array([1.0, 1.0, 1.0 / aspect_z], dtype=np.float32)
    a, b = a * scale, b * scale
    px, py, pz = x, y, z * scale[2]
    d = b - a
    length2 = float((d * d).sum()) or 1e-12
    t = np.clip(((px - a[0]) * d[0] + (py - a[1]) * d[1] + (pz - a[2]) * d[2]) / length2, 0.0, 1.0)
    return np.sqrt((px - a[0] - t * d[0]) ** 2 + (py - a[1] - t * d[1]) ** 2 + (pz - a[2] - t * d[2]) ** 2)


def write_phantom_volumes(
    root: str | Path,
    n: int,
    shape: tuple[int, int, int] = (64, 64, 32),
    spacing: tuple[float, float, float] = (5.0, 5.0, 8.0),
    seed: int = 0,
    labels: bool = True,
) -> Path:
    """Write ``n`` phantoms in the NIfTI layout: ``images/`` (HU, int16), ``labels/`` (infection 0/1),
    ``labels_multiclass/`` (0 / 1 GGO / 2 consolidation) and ``lungs/``; ``labels=False`` writes
    images only (an unlabelled set). Case ``i`` uses seed ``seed * 100003 + i``."""
    from covseg.data.imageio import write_volume

    root = Path(root)
    for i in range(n):
        ph = make_phantom_volume(seed * 100003 + i, shape, spacing)
        name = f"phantom3d_{i:03d}.nii.gz"
        write_volume(root / "images" / name, ph.image, ph.affine, dtype="int16")
        if labels:
            write_volume(root / "labels" / name, ph.infection, ph.affine, dtype="uint8")
            write_volume(root / "labels_multiclass" / name, ph.classes, ph.affine, dtype="uint8")
            write_volume(root / "lungs" / name, ph.lungs, ph.affine, dtype="uint8")
    return root
