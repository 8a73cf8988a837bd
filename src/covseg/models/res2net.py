"""Res2Net-v1b encoders (Gao et al., TPAMI 2021), the backbone of the published Inf-Net.

``res2net50_v1b_26w_4s`` (layers 3-4-6-3) and ``res2net101_v1b_26w_4s`` (3-4-23-3): a deep stem
(three 3×3 convs, 32-32-64 channels, the first with stride 2) then bottleneck blocks whose 3×3
conv is split into ``scale`` groups of ``width`` channels, each group seeing the previous
group's output (hierarchical residual connections); the first block of a stage convolves every
group with the stage stride and average-pools the last group; shortcuts downsample by average
pooling before a 1×1 conv ("v1b").

Submodule names follow the released Res2Net/Inf-Net files (``conv1``, ``bn1``, ``layer1``…,
``convs``, ``bns``, ``conv3``, ``bn3``, ``downsample``) so their state dicts load key for key
(the ImageNet classifier ``fc.*`` is not part of the encoder). Features: the stem after ReLU
(stride 2, 64 channels) and ``layer1``–``layer4`` (strides 4–32; 256, 512, 1024, 2048 channels).

No ImageNet weights ship with covseg (``pretrained=True`` is refused); ``weights=PATH`` loads a
local ``res2net50_v1b_26w_4s-3cf99910.pth``-style file (``weights_only=True``) at the start of a
training, and ``infnet`` leaves the path out of its init args (the run's checkpoint holds the weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from covseg.errors import CovsegError
from covseg.models.encoders import Encoder, adapt_input_conv
from covseg.registry import ENCODERS

#: ImageNet mean / std the published Res2Net weights expect (images in [0, 1], RGB)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RES2NET_LAYERS = {"res2net50_v1b_26w_4s": (3, 4, 6, 3), "res2net101_v1b_26w_4s": (3, 4, 23, 3)}


class Bottle2neck(nn.Module):
    """Res2Net bottleneck: 1×1 → ``scale`` hierarchical 3×3 groups → 1×1 (×4 channels), residual."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        base_width: int = 26,
        scale: int = 4,
        first: bool = False,
    ) -> None:
        super().__init__()
        width = planes * base_width // 64
        self.width, self.scale, self.first = width, scale, first
        self.nums = 1 if scale == 1 else scale - 1
        self.conv1 = nn.Conv2d(inplanes, width * scale, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, stride, 1, bias=False) for _ in range(self.nums))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(self.nums))
        if first:
            self.pool = nn.AvgPool2d(3, stride=stride, padding=1)
        self.conv3 = nn.Conv2d(width * scale, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        groups = torch.split(out, self.width, 1)
        pieces: list[torch.Tensor] = []
        sp = groups[0]
        for i in range(self.nums):
            sp = groups[i] if i == 0 or self.first else sp + groups[i]
            sp = self.relu(self.bns[i](self.convs[i](sp)))
            pieces.append(sp)
        if self.scale != 1:
            pieces.append(self.pool(groups[self.nums]) if self.first else groups[self.nums])
        out = self.bn3(self.conv3(torch.cat(pieces, 1)))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class Res2NetEncoder(Encoder):
    """Res2Net-v1b feature extractor; five features at strides 2, 4, 8, 16, 32."""

    def __init__(
        self,
        in_channels: int = 3,
        layers: tuple[int, ...] = (3, 4, 6, 3),
        base_width: int = 26,
        scale: int = 4,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, 2, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, 1, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, 1, 1, bias=False),
        )
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._inplanes = 64
        self.layer1 = self._make_layer(64, layers[0], 1, base_width, scale)
        self.layer2 = self._make_layer(128, layers[1], 2, base_width, scale)
        self.layer3 = self._make_layer(256, layers[2], 2, base_width, scale)
        self.layer4 = self._make_layer(512, layers[3], 2, base_width, scale)
        self.out_channels = (64, 256, 512, 1024, 2048)
        self.stage_names = ("relu", "layer1", "layer2", "layer3", "layer4")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if weights is not None:
            self.load_imagenet(weights)
        if in_channels == 3:
            self.input_mean, self.input_std = IMAGENET_MEAN, IMAGENET_STD

    def _make_layer(self, planes: int, blocks: int, stride: int, base_width: int, scale: int) -> nn.Sequential:
        out = planes * Bottle2neck.expansion
        downsample = None
        if stride != 1 or self._inplanes != out:
            downsample = nn.Sequential(
                nn.AvgPool2d(stride, stride=stride, ceil_mode=True, count_include_pad=False),
                nn.Conv2d(self._inplanes, out, 1, bias=False),
                nn.BatchNorm2d(out),
            )
        layers = [Bottle2neck(self._inplanes, planes, stride, downsample, base_width, scale, first=True)]
        self._inplanes = out
        layers += [Bottle2neck(out, planes, base_width=base_width, scale=scale) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def load_imagenet(self, path: str | Path) -> None:
        """Load a local Res2Net ImageNet file (its ``fc.*`` dropped; an RGB stem adapted to the input channels)."""
        path = Path(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CovsegError("Res2Net weights file not found", path) from None
        except Exception as exc:
            raise CovsegError(f"unreadable Res2Net weights ({type(exc).__name__}; plain tensors only)", path) from None
        if not isinstance(state, dict):
            raise CovsegError("not a Res2Net state dict", path)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        stem = "conv1.0.weight"
        if stem in state and state[stem].shape[1] != self.conv1[0].in_channels:
            state[stem] = adapt_input_conv(state[stem], self.conv1[0].in_channels)
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CovsegError(f"weights do not fit this Res2Net ({str(exc).splitlines()[1].strip()[:160]})", path) from None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x0 = self.relu(self.bn1(self.conv1(x)))
        x1 = self.layer1(self.maxpool(x0))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        return [x0, x1, x2, x3, self.layer4(x3)]


def _register(name: str, layers: tuple[int, ...]) -> None:
    def build(in_channels: int, pretrained: bool = False, weights: str | None = None, **kwargs: Any) -> Res2NetEncoder:
        if pretrained:  # a run must rebuild without the file: weights= loads once, the checkpoint keeps them
            raise CovsegError(
                f"no {name} ImageNet weights ship with covseg; give a local file as encoder_kwargs.weights "
                "(with pretrained: false)"
            )
        return Res2NetEncoder(in_channels, layers=layers, weights=weights, **kwargs)

    build.__doc__ = f"Res2Net-v1b ({'-'.join(map(str, layers))} blocks, 26w×4s); the published Inf-Net backbone."
    ENCODERS.register(name, build)


for _name, _layers in RES2NET_LAYERS.items():
    _register(_name, _layers)
