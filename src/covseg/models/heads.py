"""Heads on a segmentation model's deepest encoder feature (segmentation_models_pytorch's ``aux_params``).

A head is a registry entry (:data:`covseg.registry.HEADS`) built with the bottleneck's channel
count; its ``output`` names the entry it adds to ``forward_train``. Any model that returns a
``"bottleneck"`` feature from ``_forward`` takes heads through its ``heads`` init argument, e.g.
``heads={"classification": {"classes": 2}}`` (see :meth:`SegmentationModel.attach_heads`).
``forward(x)`` never runs them, so inference and ONNX export still see one segmentation tensor.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from covseg.registry import HEADS

POOLINGS = ("avg", "max")


@HEADS.register("classification")
class ClassificationHead(nn.Module):
    """Image-level class logits: global pooling, dropout, one linear layer (as smp's ``ClassificationHead``).

    ``classes`` counts every class, the negative one included (2 for infection yes/no; class 0
    is the negative class, as background is in segmentation), so the logits are softmaxed.
    Average pooling keeps the head a linear map of the feature map, which makes its Grad-CAM
    the class activation map of Zhou et al. (2016). 2D and 3D features alike.
    """

    output = "class_logits"

    def __init__(self, in_channels: int, classes: int = 2, pooling: str = "avg", dropout: float = 0.0) -> None:
        super().__init__()
        if int(classes) < 2:
            raise ValueError(f"classification head: classes counts the negative class too, so it must be ≥ 2, got {classes}")
        if pooling not in POOLINGS:
            raise ValueError(f"classification head: pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"classification head: dropout must lie in [0, 1), got {dropout}")
        self.classes = int(classes)
        self.pooling = pooling
        self.dropout = nn.Dropout(float(dropout))
        self.linear = nn.Linear(int(in_channels), self.classes)
        self.init_args: dict[str, Any] = {"classes": self.classes, "pooling": pooling, "dropout": float(dropout)}

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        flat = feature.flatten(2)
        pooled = flat.mean(dim=2) if self.pooling == "avg" else flat.amax(dim=2)
        return self.linear(self.dropout(pooled))
