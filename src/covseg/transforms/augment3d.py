"""Augmentation of 3D patches: flips, rotation and scaling (MONAI ``Affine``), intensity.

As in 2D (:mod:`covseg.transforms.augment`) every random number is drawn first from an explicit
``torch.Generator``, one row per sample, so a batch can be split between workers or processes with
the result of the whole, and an epoch's augmentation is a function of (seed, epoch). The spatial
part runs through MONAI's deterministic ``Affine`` (bilinear for images, nearest for label maps,
in one grid per sample); intensity changes follow the 2D ones (contrast, brightness, gamma, noise).
"""

from __future__ import annotations

import math

import torch

from covseg.transforms.augment import AugmentConfig
from covseg.utils.monai_import import import_monai


def _uniform(gen: torch.Generator, shape: tuple[int, ...], lo, hi) -> torch.Tensor:
    lo, hi = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
    return lo + (hi - lo) * torch.rand(shape, generator=gen)


def draw_augmentation_3d(shape: tuple[int, ...], cfg: AugmentConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Every random number :func:`apply_augmentation_3d` uses for a batch of ``shape`` (B, C, X, Y, Z)."""
    b = shape[0]
    rot = torch.tensor(cfg.rotate3d_deg, dtype=torch.float32) * math.pi / 180.0
    draws = {
        "flips": torch.rand(b, 3, generator=gen) < torch.tensor(cfg.flip3d, dtype=torch.float32),
        "apply": torch.rand(b, generator=gen),
        "angles": _uniform(gen, (b, 3), -rot, rot),
        "scale": _uniform(gen, (b,), cfg.scale[0], cfg.scale[1]),
    }
    if cfg.contrast > 0:
        draws["contrast"] = _uniform(gen, (b,), 1 - cfg.contrast, 1 + cfg.contrast)
    if cfg.brightness > 0:
        draws["brightness"] = _uniform(gen, (b,), -cfg.brightness, cfg.brightness)
    if cfg.gamma > 0:
        draws["gamma"] = _uniform(gen, (b,), -cfg.gamma, cfg.gamma)
    if cfg.noise_std > 0:
        draws["noise"] = torch.randn(tuple(shape), generator=gen)
    return draws


def apply_augmentation_3d(
    image: torch.Tensor, labels: dict[str, torch.Tensor], cfg: AugmentConfig, draws: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Augment ``image`` (B, C, X, Y, Z) and label maps ((B, 1, X, Y, Z) or (B, X, Y, Z)) with drawn numbers."""
    import_monai()
    from monai.transforms import Affine

    out_image = image.clone()
    out_labels = {k: v.clone() for k, v in labels.items()}
    spatial = tuple(image.shape[2:])
    for i in range(image.shape[0]):
        dims = [d for d in range(3) if bool(draws["flips"][i, d])]
        img = torch.flip(image[i], dims=[d + 1 for d in dims]) if dims else image[i]
        labs = {}
        for key, lab in labels.items():
            x = lab[i] if lab.ndim == 5 else lab[i][None]
            labs[key] = torch.flip(x, dims=[d + 1 for d in dims]) if dims else x
        if float(draws["apply"][i]) < cfg.p_spatial:
            angles = tuple(float(a) for a in draws["angles"][i])
            scale = float(draws["scale"][i])
            if any(angles) or scale != 1.0:
                geometric = Affine(rotate_params=angles, scale_params=(scale,) * 3, spatial_size=spatial, image_only=True)
                img = torch.as_tensor(geometric(img, mode="bilinear", padding_mode="border")).as_subclass(torch.Tensor)
                for key, x in labs.items():
                    warped = geometric(x.float(), mode="nearest", padding_mode="zeros")
                    labs[key] = torch.as_tensor(warped).as_subclass(torch.Tensor).to(x.dtype)
        out_image[i] = img
        for key, x in labs.items():
            out_labels[key][i] = x if labels[key].ndim == 5 else x[0]
    return _intensity(out_image, cfg, draws), out_labels


def _intensity(x: torch.Tensor, cfg: AugmentConfig, draws: dict[str, torch.Tensor]) -> torch.Tensor:
    b = x.shape[0]
    view = (b,) + (1,) * (x.ndim - 1)
    dims = tuple(range(1, x.ndim))
    if cfg.contrast > 0:
        mean = x.mean(dim=dims, keepdim=True)
        x = (x - mean) * draws["contrast"].view(view) + mean
    if cfg.brightness > 0:
        x = x + draws["brightness"].view(view) * x.std(dim=dims, keepdim=True).clamp_min(1e-3)
    if cfg.gamma > 0:
        lo = x.amin(dim=dims, keepdim=True)
        hi = x.amax(dim=dims, keepdim=True)
        unit = (x - lo) / (hi - lo).clamp_min(1e-6)
        x = unit.pow(torch.exp(draws["gamma"]).view(view)) * (hi - lo) + lo
    if cfg.noise_std > 0:
        x = x + draws["noise"] * cfg.noise_std
    return x
