"""VGG-16 encoder as in Inf-Net's VGG variant (``backbone/VGGNet.py``, ``B2_VGG``): 3×3 convs with
bias and ReLU, average pooling between stages.

Submodule names follow the released file (``conv1`` … ``conv5_1``, inside them ``conv1_1``,
``conv4_1_1`` …) so its state dicts load key for key (the file's second branch ``conv4_2`` /
``conv5_2``, unused by Inf-Net, is not built). Unlike the other encoders the five features lie at
strides **1, 2, 4, 8, 16** (64, 128, 256, 512, 512 channels): Inf-Net's VGG variant reads them one
level finer than its ResNet variants, and covseg's ``infnet`` resizes between levels by size, so it
runs either way. No ImageNet weights ship with covseg (``pretrained=True`` is refused).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from covseg.errors import CovsegError
from covseg.models.encoders import Encoder
from covseg.models.res2net import IMAGENET_MEAN, IMAGENET_STD
from covseg.registry import ENCODERS

#: (stage, pooled first, conv names, channels)
VGG_STAGES = (
    ("conv1", False, ("conv1_1", "conv1_2"), 64),
    ("conv2", True, ("conv2_1", "conv2_2"), 128),
    ("conv3", True, ("conv3_1", "conv3_2", "conv3_3"), 256),
    ("conv4_1", True, ("conv4_1_1", "conv4_2_1", "conv4_3_1"), 512),
    ("conv5_1", True, ("conv5_1_1", "conv5_2_1", "conv5_3_1"), 512),
)


class VGG16Encoder(Encoder):
    """Inf-Net's VGG-16 (``B2_VGG``, first branch); features at strides 1, 2, 4, 8, 16."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        channels = in_channels
        for stage, pooled, convs, width in VGG_STAGES:
            seq = nn.Sequential()
            if pooled:
                seq.add_module("pool", nn.AvgPool2d(2, stride=2))
            for name in convs:
                seq.add_module(name, nn.Conv2d(channels, width, 3, 1, 1))
                seq.add_module("relu" + name.removeprefix("conv"), nn.ReLU(inplace=True))
                channels = width
            setattr(self, stage, seq)
        self.out_channels = tuple(width for *_, width in VGG_STAGES)
        self.stage_names = tuple(stage for stage, *_ in VGG_STAGES)
        if in_channels == 3:
            self.input_mean, self.input_std = IMAGENET_MEAN, IMAGENET_STD

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stage_names:
            x = getattr(self, stage)(x)
            features.append(x)
        return features


@ENCODERS.register("vgg16")
def _vgg16(in_channels: int, pretrained: bool = False, **kwargs: Any) -> VGG16Encoder:
    """VGG-16 as Inf-Net's VGG variant builds it (strides 1–16). Random init here."""
    if pretrained:
        raise CovsegError("no VGG-16 ImageNet weights ship with covseg; import a trained model's weights instead")
    return VGG16Encoder(in_channels, **kwargs)
