"""Overlays of ground truth and prediction on an image, as RGB uint8 arrays.

Colours are fixed so every report reads the same: ground truth green, prediction red, their
overlap yellow. Regions are tinted (``alpha``) and both outlines drawn opaque, so a thin miss is
still visible. Label maps with several classes are shown as foreground (label > 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

GT_COLOUR = (40, 200, 40)
PRED_COLOUR = (230, 40, 40)
OVERLAP_COLOUR = (250, 220, 30)
BACKGROUND_GREY = 96


def to_display_rgb(image: Any | None, shape: tuple[int, int] | None = None) -> np.ndarray:
    """An 8-bit RGB version of a grey or colour image (robust 0.5–99.5 % stretch unless already 8-bit).

    ``image=None`` gives a uniform grey canvas of ``shape``.
    """
    if image is None:
        if shape is None:
            raise ValueError("give an image or a shape")
        return np.full((*shape, 3), BACKGROUND_GREY, dtype=np.uint8)
    arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"expected a 2D grey or RGB image, got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not (arr.min(initial=0) >= 0 and arr.max(initial=0) <= 255 and np.all(arr == np.round(arr))):
        finite = arr[np.isfinite(arr)]
        lo, hi = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1.0
        arr = (np.clip(np.nan_to_num(arr, nan=lo), lo, hi) - lo) / (hi - lo) * 255.0
    out = np.clip(np.round(arr), 0, 255).astype(np.uint8)
    return np.repeat(out[..., None], 3, axis=-1) if out.ndim == 2 else out


def outline(mask: np.ndarray) -> np.ndarray:
    """Boolean map of the mask pixels that touch background (8-neighbourhood), image border included."""
    from scipy.ndimage import binary_erosion

    mask = np.asarray(mask, dtype=bool)
    return mask & ~binary_erosion(mask, structure=np.ones((3, 3), dtype=bool), border_value=0)


def _as_mask(mask: Any | None, shape: tuple[int, int]) -> np.ndarray:
    if mask is None:
        return np.zeros(shape, dtype=bool)
    arr = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    arr = np.squeeze(arr) if arr.ndim > 2 else arr
    if arr.shape != shape:
        raise ValueError(f"mask shape {arr.shape} differs from image shape {shape}")
    return arr > 0


def overlay(
    image: Any | None,
    gt: Any | None = None,
    pred: Any | None = None,
    *,
    alpha: float = 0.35,
    outlines: bool = True,
) -> np.ndarray:
    """RGB uint8 overlay: gt green, prediction red, overlap yellow, on ``image`` (or grey when None).

    Either mask may be None (e.g. a prediction overlay without ground truth). Masks are 2D label
    maps or boolean arrays of the image's shape; any label > 0 counts as foreground.
    """
    if image is None:
        ref = gt if gt is not None else pred
        if ref is None:
            raise ValueError("overlay needs an image or at least one mask")
        shape = tuple(np.squeeze(np.asarray(ref)).shape)
        canvas = to_display_rgb(None, shape)  # type: ignore[arg-type]
    else:
        canvas = to_display_rgb(image)
        shape = canvas.shape[:2]
    g = _as_mask(gt, shape)  # type: ignore[arg-type]
    p = _as_mask(pred, shape)  # type: ignore[arg-type]
    out = canvas.astype(np.float64)
    for region, colour in ((g & ~p, GT_COLOUR), (p & ~g, PRED_COLOUR), (g & p, OVERLAP_COLOUR)):
        out[region] = (1 - alpha) * out[region] + alpha * np.asarray(colour, dtype=np.float64)
    if outlines:
        g_line, p_line = outline(g), outline(p)
        out[g_line] = GT_COLOUR
        out[p_line] = PRED_COLOUR
        out[g_line & p_line] = OVERLAP_COLOUR
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def thumbnail(rgb: np.ndarray, max_side: int = 320) -> np.ndarray:
    """Downscale an RGB array so its longer side is at most ``max_side`` (never upscales)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
