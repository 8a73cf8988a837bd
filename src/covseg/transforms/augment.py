"""Batched training augmentation in torch: flips, rotation, scaling, elastic warp, intensity.

Everything is drawn from an explicit ``torch.Generator`` so an epoch's augmentation is a
function of (seed, epoch) alone; that makes CPU runs repeatable and resumed runs identical
to uninterrupted ones. Geometry is applied to the image with bilinear sampling and to
label maps (mask, edge, class map) with nearest sampling, in one grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, field_validator
from pydantic.dataclasses import dataclass


@dataclass(config=ConfigDict(extra="forbid"))
class AugmentConfig:
    """Probabilities and ranges of each augmentation (0 disables); validated when read from a config."""

    hflip: float = 0.5
    vflip: float = 0.0
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    elastic: float = 0.0
    elastic_grid: int = 6
    brightness: float = 0.1
    contrast: float = 0.15
    gamma: float = 0.0
    noise_std: float = 0.0
    p_spatial: float = 0.8
    #: 3D patches: flip probability per axis, and rotation ranges (degrees) about each axis (RAS order;
    #: the last is the in-plane rotation of axial slices)
    flip3d: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rotate3d_deg: tuple[float, float, float] = (5.0, 5.0, 15.0)

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        """A zero or negative factor divides the sampling grid by zero (NaN images trained on silently)."""
        if not (0 < v[0] <= v[1] < math.inf):
            raise ValueError(f"scale {list(v)} must be a range 0 < low <= high, e.g. [0.85, 1.15]")
        return v

    @field_validator("hflip", "vflip", "p_spatial")
    @classmethod
    def _probability(cls, v: float) -> float:
        if not 0 <= v <= 1:
            raise ValueError(f"{v} is a probability: it must lie in [0, 1]")
        return v

    @field_validator("rotate_deg", "brightness", "contrast", "gamma", "noise_std", "elastic")
    @classmethod
    def _finite_non_negative(cls, v: float) -> float:
        if not 0 <= v < math.inf:
            raise ValueError(f"{v} must be a finite number >= 0")
        return v


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def draw_augmentation(shape: tuple[int, ...], cfg: AugmentConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Every random number ``augment_batch`` uses for a batch of ``shape`` (B, C, H, W), drawn from
    ``gen`` in a fixed order; one row per sample, so a batch can be split and augmented in parts
    (data-loader workers, one shard per process) with the same result as the whole."""
    b = shape[0]
    draws = {
        "angle": _uniform(gen, b, -cfg.rotate_deg, cfg.rotate_deg),
        "scale": _uniform(gen, b, cfg.scale[0], cfg.scale[1]),
        "apply": torch.rand(b, generator=gen),
        "hflip": torch.rand(b, generator=gen),
        "vflip": torch.rand(b, generator=gen),
    }
    if cfg.elastic > 0:
        draws["elastic"] = torch.randn(b, 2, cfg.elastic_grid, cfg.elastic_grid, generator=gen)
    if cfg.contrast > 0:
        draws["contrast"] = _uniform(gen, b, 1 - cfg.contrast, 1 + cfg.contrast)
    if cfg.brightness > 0:
        draws["brightness"] = _uniform(gen, b, -cfg.brightness, cfg.brightness)
    if cfg.gamma > 0:
        draws["gamma"] = _uniform(gen, b, -cfg.gamma, cfg.gamma)
    if cfg.noise_std > 0:
        draws["noise"] = torch.randn(tuple(shape), generator=gen)
    return draws


def apply_augmentation(
    image: torch.Tensor, labels: dict[str, torch.Tensor], cfg: AugmentConfig, draws: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Augment ``image`` (B, C, H, W) and every label map ((B, 1, H, W) or (B, H, W)) with drawn numbers."""
    b, _, h, w = image.shape
    theta = torch.zeros(b, 2, 3)
    apply = (draws["apply"] < cfg.p_spatial).float()
    angle = draws["angle"] * math.pi / 180.0 * apply
    scale = 1.0 + (draws["scale"] - 1.0) * apply
    sx = torch.where(draws["hflip"] < cfg.hflip, -1.0, 1.0)
    sy = torch.where(draws["vflip"] < cfg.vflip, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta[:, 0, 0], theta[:, 0, 1] = cos * sx, -sin * sy * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * sx * w / h, cos * sy
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    if cfg.elastic > 0:
        disp = F.interpolate(draws["elastic"] * cfg.elastic, size=(h, w), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
        grid = grid + disp * apply.view(b, 1, 1, 1)
    out_image = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out_labels = {}
    for key, lab in labels.items():
        squeeze = lab.ndim == 3
        x = lab[:, None] if squeeze else lab
        y = F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        y = y[:, 0] if squeeze else y
        out_labels[key] = y.to(lab.dtype)
    return _intensity(out_image, cfg, draws), out_labels


def augment_batch(
    image: torch.Tensor,
    labels: dict[str, torch.Tensor],
    cfg: AugmentConfig,
    gen: torch.Generator,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Augment ``image`` (B, C, H, W) and every label map in ``labels`` ((B, 1, H, W) or (B, H, W)) alike."""
    return apply_augmentation(image, labels, cfg, draw_augmentation(tuple(image.shape), cfg, gen))


def _intensity(x: torch.Tensor, cfg: AugmentConfig, draws: dict[str, torch.Tensor]) -> torch.Tensor:
    b = x.shape[0]
    view = (b, 1, 1, 1)
    if cfg.contrast > 0:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * draws["contrast"].view(view) + mean
    if cfg.brightness > 0:
        x = x + draws["brightness"].view(view) * x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
    if cfg.gamma > 0:
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        unit = (x - lo) / (hi - lo).clamp_min(1e-6)
        x = unit.pow(torch.exp(draws["gamma"]).view(view)) * (hi - lo) + lo
    if cfg.noise_std > 0:
        x = x + draws["noise"] * cfg.noise_std
    return x
