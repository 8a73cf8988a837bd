"""Preprocessing shared by training and inference, so a run folder can replay it exactly."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from covseg.errors import DataError
from covseg.transforms.intensity import DISPLAY_MAX, HU, SPACE_WORDS, UNIT, to_unit


@dataclass
class Preprocessing:
    """How an image becomes a network input: channels, size, intensity scaling.

    ``scale`` divides raw values first (255 for 8-bit images); then ``(x - mean) / std``
    per channel. ``size`` is ``(H, W)`` of the network input; ``None`` keeps the image size.
    ``window`` (CT only, HU) clips and rescales volumes to 0..1 before ``mean``/``std``.
    """

    channels: int = 1
    size: tuple[int, int] | None = (352, 352)
    scale: float = 255.0
    mean: list[float] = field(default_factory=lambda: [0.5])
    std: list[float] = field(default_factory=lambda: [0.25])
    window: tuple[float, float] | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size) if self.size else None
        d["window"] = list(self.window) if self.window else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        d = dict(d)
        if d.get("size") is not None:
            d["size"] = tuple(d["size"])
        if d.get("window") is not None:
            d["window"] = tuple(d["window"])
        return cls(**d)

    def normalise(self, image: np.ndarray, space: str | None = None, window: tuple[float, float] | None = None) -> np.ndarray:
        """Raw image (H, W) or (H, W, C) → float32 (C, H, W), intensity-normalised, original size.

        ``space`` (:func:`covseg.data.intensity.intensity_space`) says what the image holds. A run
        without ``window`` was trained on 0..255 display images: HU inputs are windowed to display
        values first (``window``, else the lung window) and 0..1 inputs scaled up, then divided by
        ``scale`` as display images are. A run with ``window`` reads HU and refuses anything else.
        ``space`` None keeps the stored values (training data of one kind, the old behaviour).
        """
        x = np.asarray(image, dtype=np.float32)
        if self.window is not None:
            if space not in (None, HU):
                raise DataError(
                    f"image holds {SPACE_WORDS[space]}, but this model reads CT in HU (its window is "
                    f"{self.window[0]:g},{self.window[1]:g}); give the scan in HU"
                )
            lo, hi = self.window
            x = (np.clip(x, lo, hi) - lo) / (hi - lo)
        elif space in (HU, UNIT):
            x = to_unit(x, space, window) * np.float32(DISPLAY_MAX / self.scale)
        else:
            x = x / self.scale
        if x.ndim == 2:
            x = x[None]
        else:
            x = np.moveaxis(x, -1, 0)
        if x.shape[0] != self.channels:
            if self.channels == 1:
                x = x[:3].mean(axis=0, keepdims=True)
            elif x.shape[0] == 1:
                x = np.repeat(x, self.channels, axis=0)
            else:
                x = x[: self.channels]
        mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)
        return ((x - mean) / std).astype(np.float32)


def resize_tensor(x, size, mode: str = "bilinear"):
    """Resize a ``(B, C, *spatial)`` tensor (2D or 3D); ``nearest`` for label maps, antialiased bilinear for 2D images."""
    import torch.nn.functional as F

    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest-exact")
    if x.ndim == 5:
        return F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=mode == "bilinear")
