"""ResNet-50 encoder (He et al. 2016; torchvision's layout, stride on the 3×3 conv), the backbone of
Inf-Net's ResNet variant (``InfNet_ResNet.py``).

Submodule names follow torchvision and the Inf-Net file (``conv1``, ``bn1``, ``layer1``…,
``conv1``–``conv3``/``bn1``–``bn3``, ``downsample``) so their state dicts load key for key.
Features: the stem after ReLU (stride 2, 64 channels) and ``layer1``–``layer4`` (strides 4–32;
256, 512, 1024, 2048 channels). No ImageNet weights ship with covseg (``pretrained=True`` is refused).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from covseg.errors import CovsegError
from covseg.models.encoders import Encoder
from covseg.models.res2net import IMAGENET_MEAN, IMAGENET_STD
from covseg.registry import ENCODERS


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride) → 1×1 (×4 channels) with batch norm, residual."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class ResNet50Encoder(Encoder):
    """ResNet-50 feature extractor; five features at strides 2, 4, 8, 16, 32."""

    def __init__(self, in_channels: int = 3, layers: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._inplanes = 64
        self.layer1 = self._make_layer(64, layers[0], 1)
        self.layer2 = self._make_layer(128, layers[1], 2)
        self.layer3 = self._make_layer(256, layers[2], 2)
        self.layer4 = self._make_layer(512, layers[3], 2)
        self.out_channels = (64, 256, 512, 1024, 2048)
        self.stage_names = ("relu", "layer1", "layer2", "layer3", "layer4")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if in_channels == 3:
            self.input_mean, self.input_std = IMAGENET_MEAN, IMAGENET_STD

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self._inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(self._inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))
        layers = [Bottleneck(self._inplanes, planes, stride, downsample)]
        self._inplanes = out
        layers += [Bottleneck(out, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x0 = self.relu(self.bn1(self.conv1(x)))
        x1 = self.layer1(self.maxpool(x0))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        return [x0, x1, x2, x3, self.layer4(x3)]


@ENCODERS.register("resnet50")
def _resnet50(in_channels: int, pretrained: bool = False, **kwargs: Any) -> ResNet50Encoder:
    """ResNet-50 (torchvision layout); Inf-Net's ResNet backbone. Random init here."""
    if pretrained:
        raise CovsegError("no ResNet-50 ImageNet weights ship with covseg; import a trained model's weights instead")
    return ResNet50Encoder(in_channels, **kwargs)
