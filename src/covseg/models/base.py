"""The contract every segmentation model keeps.

``forward(x)`` returns logits at the input's resolution, one tensor, for inference and
ONNX export: ``(B, 1, H, W)`` for binary models (sigmoid) or ``(B, K, H, W)`` for K-class
models (softmax, class 0 = background). Inputs of any size are accepted: the model pads
to its ``size_divisor`` and crops back.

``forward_train(x)`` returns a dict for the losses: ``"logits"`` (as ``forward``), and where
the model has them ``"aux"`` (list of deep-supervision logits, any resolution) and
``"edge"`` (edge logits, ``(B, 1, h, w)``).

``init_args`` holds the keyword arguments the model was built with, so a checkpoint can
rebuild it by name alone.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationModel(nn.Module):
    """Base class: padding to ``size_divisor``, the train/eval output contract, init arguments."""

    size_divisor: int = 32

    def __init__(self, in_channels: int, out_channels: int, **init_args: Any) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.init_args: dict[str, Any] = {"in_channels": in_channels, "out_channels": out_channels, **init_args}

    def _forward(self, x: torch.Tensor) -> dict[str, Any]:
        """Subclasses compute outputs on padded input; returns at least ``{"logits": ...}``."""
        raise NotImplementedError

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        h, w = x.shape[-2], x.shape[-1]
        d = self.size_divisor
        ph, pw = (-h) % d, (-w) % d
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate" if x.shape[-1] > 1 else "constant")
        return x, (h, w)

    def forward_train(self, x: torch.Tensor) -> dict[str, Any]:
        """All outputs (main logits, deep-supervision and edge logits) for the losses."""
        xp, (h, w) = self._pad(x)
        out = self._forward(xp)
        full = out["logits"]
        if full.shape[-2:] != xp.shape[-2:]:
            full = F.interpolate(full, size=xp.shape[-2:], mode="bilinear", align_corners=False)
        out["logits"] = full[..., :h, :w]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_train(x)["logits"]
