"""Decoding 2D mask files: one label map and what the file stored (binary, class indices, grey, colour).

:func:`analyse_mask` is used both by the loader (:func:`covseg.data.imageio.read_mask`) and by
``covseg data check``, so a mask is never read one way and checked another.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covseg.data.image_files import _format_2d, _open_pil
from covseg.errors import DataError

# Grey values below this count as class indices (0, 1, 2, ...) rather than intensities.
MAX_CLASS_INDEX = 31


@dataclass
class MaskInfo:
    """A decoded 2D mask: the label map and what the file stored.

    ``kind`` is ``binary`` (two values, one of them 0), ``labels`` (palette indices or small
    integers 0..31: a multi-class map), ``ambiguous`` (grey levels such as anti-aliased or
    JPEG-compressed edges: binarised at half range, which ``data check`` reports) or
    ``colour`` (several RGB colours: read as foreground wherever a colour is present).
    """

    labels: np.ndarray
    kind: str
    stored_values: tuple[int | float, ...]
    mode: str

    @property
    def is_empty(self) -> bool:
        return not bool(self.labels.any())


def analyse_mask(path: str | Path) -> MaskInfo:
    """Decode a 2D mask file into a uint8 label map and classify how it was stored."""
    path = Path(path)
    fmt = _format_2d(path)
    if fmt is not None:
        arr = np.asarray(fmt.stored(path))
        if arr.ndim == 3:
            return _from_colour(arr[..., :3] if arr.shape[-1] >= 3 else arr[..., :1], "array", path)
        return _from_grey(arr, "array", path)
    im = _open_pil(path)
    if im.mode == "P":
        idx = np.asarray(im, dtype=np.uint8)
        values = tuple(int(v) for v in np.unique(idx))
        kind = "binary" if len(values) < 2 or (len(values) == 2 and values[0] == 0) else "labels"
        return MaskInfo(idx.copy(), kind, values, "P")
    if im.mode == "1":
        arr = np.asarray(im, dtype=np.uint8)
        return MaskInfo(arr, "binary", tuple(int(v) for v in np.unique(arr)), "1")
    if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "PA"):
        rgba = np.asarray(im.convert("RGBA"))
        rgb, alpha = rgba[..., :3], rgba[..., 3]
        if not rgb.any() and alpha.min() != alpha.max():
            return _from_grey(alpha, im.mode + ":alpha", path)  # foreground painted in alpha only
        return _from_colour(rgb, im.mode, path)
    if im.mode == "LA":
        im = im.convert("L")
    return _from_grey(np.asarray(im), im.mode, path)


def _from_colour(rgb: np.ndarray, mode: str, path: Path) -> MaskInfo:
    if rgb.shape[-1] == 1 or (
        np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
    ):
        return _from_grey(rgb[..., 0], mode, path)
    rgb = rgb.astype(np.uint32) if rgb.dtype.itemsize <= 4 else rgb
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]  # 0xRRGGBB for 8-bit colour
    colours = np.unique(packed)
    labels = (packed > 0).astype(np.uint8)
    values = tuple(int(c) for c in colours[:64])
    kind = "binary" if colours.size <= 2 and (colours[0] == 0 or colours.size == 1) else "colour"
    return MaskInfo(labels, kind, values, mode)


def _distinct(arr: np.ndarray) -> np.ndarray:
    """Sorted distinct values; a histogram for 8/16-bit data (linear time, masks are large)."""
    if arr.dtype in (np.uint8, np.uint16):
        return np.flatnonzero(np.bincount(arr.ravel(), minlength=1)).astype(arr.dtype)
    return np.unique(arr)


def _from_grey(arr: np.ndarray, mode: str, path: Path) -> MaskInfo:
    arr = np.asarray(arr)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise DataError("mask contains NaN or infinite values", path)
    values = _distinct(arr)
    stored = tuple(v.item() for v in values[:64])
    if values.size == 1:
        return MaskInfo((arr > 0).astype(np.uint8), "binary", stored, mode)
    if values.size == 2 and values[0] == 0:
        return MaskInfo((arr > 0).astype(np.uint8), "binary", stored, mode)
    integral = bool(np.all(values == np.round(values)))
    if integral and values.min() >= 0 and values.max() <= MAX_CLASS_INDEX:
        return MaskInfo(arr.astype(np.uint8), "labels", stored, mode)
    if arr.dtype == np.uint8:
        labels = (arr >= 128).astype(np.uint8)
    elif arr.dtype.kind in "ui":
        labels = (arr >= (np.iinfo(arr.dtype).max + 1) // 2).astype(np.uint8)
    else:
        labels = (arr >= 0.5 * float(values.max())).astype(np.uint8)
    return MaskInfo(labels, "ambiguous", stored, mode)
