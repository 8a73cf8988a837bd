"""The contract every segmentation model keeps.

``forward(x)`` returns logits at the input's resolution, one tensor, for inference and
ONNX export: ``(B, 1, H, W)`` for binary models (sigmoid) or ``(B, K, H, W)`` for K-class
models (softmax, class 0 = background). Inputs of any size are accepted: the model pads
to its ``size_divisor`` and crops back.

``forward_train(x)`` returns a dict for the losses: ``"logits"`` (as ``forward``), and where
the model has them ``"aux"`` (list of deep-supervision logits) and ``"edge"`` (edge logits,
``(B, 1, h, w)``). Aux and edge maps come at the model's native (lower) resolution when the
input needed no padding; when it did, they are resized to the padded size and cropped like the
logits, so every output covers exactly the input's field of view and a loss can simply resize
it to the target.

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
    #: keys ``forward_train`` returns, and how many ``"aux"`` maps (trainers use this to know
    #: whether edge ground truth is needed)
    train_outputs: tuple[str, ...] = ("logits",)
    num_aux: int = 0

    def __init__(self, in_channels: int, out_channels: int, **init_args: Any) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.init_args: dict[str, Any] = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            **init_args,
        }

    @property
    def input_channels(self) -> int:
        """Channels of the tensor ``forward`` takes (may exceed ``in_channels``, e.g. a prior map)."""
        return self.in_channels

    @property
    def input_normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """``(mean, std)`` per input channel for [0, 1] images that pretrained weights expect, else ``None``.

        Models with a pretrained ``encoder`` get the encoder's statistics; others need none.
        """
        enc = getattr(self, "encoder", None)
        if enc is None or not self.init_args.get("pretrained"):
            return None
        mean, std = getattr(enc, "input_mean", None), getattr(enc, "input_std", None)
        return None if mean is None or std is None else (mean, std)

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _forward(self, x: torch.Tensor) -> dict[str, Any]:
        """Subclasses compute outputs on padded input; returns at least ``{"logits": ...}``."""
        raise NotImplementedError

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        # Always pad (a zero-width pad is a no-op): branching on the size would bake the example
        # input's case into a traced / exported graph.
        spatial = tuple(x.shape[2:])
        d = self.size_divisor
        pads: list[int] = []
        for size in reversed(spatial):
            pads += [0, (d - size % d) % d]
        return F.pad(x, tuple(pads), mode="replicate"), spatial

    @staticmethod
    def _to_input_frame(y: torch.Tensor, padded: torch.Tensor, *size: int) -> torch.Tensor:
        """Resize ``y`` to the padded input's size (if it differs) and crop to the unpadded size."""
        if y.shape[2:] != padded.shape[2:]:
            mode = "trilinear" if y.ndim == 5 else "bilinear"
            y = F.interpolate(y, size=padded.shape[2:], mode=mode, align_corners=False)
        return y[(Ellipsis, *(slice(0, s) for s in size))]

    def forward_train(self, x: torch.Tensor) -> dict[str, Any]:
        """All outputs (main logits, deep-supervision and edge logits) for the losses."""
        xp, size = self._pad(x)
        out = dict(self._forward(xp))
        out["logits"] = self._to_input_frame(out["logits"], xp, *size)
        if xp.shape[2:] != x.shape[2:]:
            if "aux" in out:
                out["aux"] = [self._to_input_frame(a, xp, *size) for a in out["aux"]]
            if "edge" in out:
                out["edge"] = self._to_input_frame(out["edge"], xp, *size)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp, size = self._pad(x)
        return self._to_input_frame(self._forward(xp)["logits"], xp, *size)
