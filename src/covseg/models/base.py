"""The contract every segmentation model keeps.

``forward(x)`` returns logits at the input's resolution, one tensor, for inference and
ONNX export: ``(B, 1, H, W)`` for binary models (sigmoid) or ``(B, K, H, W)`` for K-class
models (softmax, class 0 = background). Inputs of any size are accepted: the model pads
to its ``size_divisor`` and crops back.

``forward_train(x)`` returns a dict for the losses: ``"logits"`` (as ``forward``), and where
the model has them ``"aux"`` (list of deep-supervision logits), ``"edge"`` (edge logits,
``(B, 1, h, w)``) and ``"attention"`` (list of attention maps). These maps come at the model's
native (lower) resolution when the input needed no padding; when it did, they are resized to
the padded size and cropped like the logits, so every output covers exactly the input's field
of view and a loss can simply resize it to the target.

Heads (:mod:`covseg.models.heads`, the ``heads`` init argument) read the ``"bottleneck"``
feature a model's ``_forward`` returns and add their own named output (``"class_logits"``) to
``forward_train`` and :meth:`SegmentationModel.forward_heads`; ``forward`` never runs them.

``init_args`` holds the keyword arguments the model was built with, so a checkpoint can
rebuild it by name alone.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from covseg.registry import HEADS

#: list outputs that are maps (cropped to the input's frame like the logits)
MAP_LIST_OUTPUTS = ("aux", "attention")


class SegmentationModel(nn.Module):
    """Base class: padding to ``size_divisor``, the train/eval output contract, init arguments."""

    size_divisor: int = 32
    #: True when the model takes one input size only (fixed position embeddings): no multi-scale training
    fixed_input_size: bool = False
    #: keys ``forward_train`` returns, and how many ``"aux"`` maps (trainers use this to know
    #: whether edge ground truth is needed)
    train_outputs: tuple[str, ...] = ("logits",)
    num_aux: int = 0
    #: channels of the ``"bottleneck"`` feature ``_forward`` returns (None: the model takes no heads)
    bottleneck_channels: int | None = None

    def __init__(self, in_channels: int, out_channels: int, **init_args: Any) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.init_args: dict[str, Any] = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            **init_args,
        }
        self.heads = nn.ModuleDict()

    def attach_heads(self, heads: dict[str, Any] | None, bottleneck_channels: int) -> None:
        """Build the registered heads named in ``heads`` (name → parameters) on the bottleneck feature.

        Subclasses call this at the end of ``__init__``; ``_forward`` must then return
        ``"bottleneck"``. ``head_input`` is an identity the feature passes through, so Grad-CAM
        has one layer name (``"head_input"``) for every model.
        """
        self.bottleneck_channels = int(bottleneck_channels)
        if heads is None:
            return
        if not isinstance(heads, dict):
            raise ValueError(f"heads must map head names to their parameters, got {heads!r}")
        self.head_input = nn.Identity()
        for name, params in heads.items():
            try:
                self.heads[name] = HEADS.build(name, in_channels=self.bottleneck_channels, **dict(params or {}))
            except TypeError as exc:
                raise ValueError(f"head {name!r}: {exc}") from None
        self.init_args["heads"] = {name: dict(head.init_args) for name, head in self.heads.items()}
        self.train_outputs = (*self.train_outputs, *(head.output for head in self.heads.values()))

    @property
    def cam_layer(self) -> str:
        """The layer Grad-CAM explains the classification head at by default: the feature the heads read."""
        return "head_input"

    @property
    def head_outputs(self) -> tuple[str, ...]:
        """Names of the heads' outputs (``"class_logits"`` for a classification head)."""
        return tuple(head.output for head in self.heads.values())

    def _run_heads(self, out: dict[str, Any]) -> dict[str, Any]:
        """The heads' outputs from ``_forward``'s bottleneck (removed from ``out``)."""
        bottleneck = out.pop("bottleneck", None)
        if not len(self.heads):
            return {}
        if bottleneck is None:
            raise RuntimeError(f"{type(self).__name__} has heads but its _forward gives no 'bottleneck'")
        feature = self.head_input(bottleneck)
        return {head.output: head(feature) for head in self.heads.values()}

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
        out.update(self._run_heads(out))
        out["logits"] = self._to_input_frame(out["logits"], xp, *size)
        if xp.shape[2:] != x.shape[2:]:
            for key in MAP_LIST_OUTPUTS:
                if key in out:
                    out[key] = [self._to_input_frame(a, xp, *size) for a in out[key]]
            if "edge" in out:
                out["edge"] = self._to_input_frame(out["edge"], xp, *size)
        return out

    def forward_heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Segmentation logits (as ``forward``) and every head's output: what prediction needs of a joint model."""
        xp, size = self._pad(x)
        out = dict(self._forward(xp))
        heads = self._run_heads(out)
        return {"logits": self._to_input_frame(out["logits"], xp, *size), **heads}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp, size = self._pad(x)
        return self._to_input_frame(self._forward(xp)["logits"], xp, *size)
