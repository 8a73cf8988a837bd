"""``clip-resnet``: CLIP's ModifiedResNet image tower (RN50, RN101, ...) as a five-level covseg encoder.

CRIS builds on CLIP's ResNets. Their ResNet differs from torchvision's: a stem of three 3×3
convolutions with an average pool instead of a max pool, and anti-aliased strided blocks (an
average pool after the 3×3 convolution, and before the 1×1 convolution of the shortcut, instead
of strided convolutions). This module rebuilds it with the parameter names of ``openai/CLIP``
``clip/model.py`` (``conv1..3``, ``bn1..3``, ``layer1..4.N.{conv,bn}1..3``, ``downsample.0/1``),
so their ``visual.*`` tensors load as they are; the attention pool (the global embedding) is not
needed for dense features and is not built. Features: the stem before its pool (stride 2) and
``layer1..4`` (strides 4..32), ``width``, ``4·width``, ..., ``32·width`` channels (64 / 256 /
512 / 1024 / 2048 for RN50).

``weights`` is a CLIP checkpoint: a plain state dict file (``.pt``/``.pth``/``.bin``/``.safetensors``,
read with ``weights_only=True``) or a folder written by ``covseg weights import --format clip``
(its ``visual.safetensors``); the block counts and width are then read from it. The tower is
frozen by default (batch norm in eval mode), as CLIP's is in CLIPSeg; ``freeze: false`` trains it.
Its weights are part of the run's checkpoints, but the file is read again when the run's model is
rebuilt, so keep it where the run expects it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from covseg.errors import CovsegError
from covseg.models.clip_encoder import CLIP_MEAN, CLIP_STD
from covseg.models.encoders import Encoder
from covseg.registry import ENCODERS
from covseg.utils.paths import expand
from covseg.utils.state_dicts import state_dict_problem

VISUAL_FILE = "visual.safetensors"


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout)


class Bottleneck(nn.Module):
    """CLIP's bottleneck: 1×1, 3×3, avg-pool (stride > 1), 1×1; shortcut avg-pool + 1×1 + BN."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(inplanes, planes, 1)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3, self.bn3 = _conv_bn(planes, planes * self.expansion, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != planes * self.expansion:
            # their Sequential names the pool "-1", so the conv and BN keep the keys downsample.0 / .1
            self.downsample = nn.Sequential(*_conv_bn(inplanes, planes * self.expansion, 1))
            self.shortcut_pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(self.shortcut_pool(x))
        return self.relu(out + identity)


def resnet_sizes(
    visual: dict[str, torch.Tensor], source: str | Path | None = None
) -> tuple[tuple[int, ...], int]:
    """Block counts per stage and stem width of ModifiedResNet ``visual.*`` tensors (prefix dropped)."""
    layers = tuple(len({k.split(".")[1] for k in visual if k.startswith(f"layer{b}.")}) for b in (1, 2, 3, 4))
    if 0 in layers or "layer1.0.conv1.weight" not in visual:
        what = (
            "a ViT (use the clip-vision encoder on a folder from covseg weights import --format clip)"
            if "proj" in visual
            else "no layer1..4 tensors"
        )
        raise CovsegError(f"not a CLIP ResNet image tower: {what}", source)
    return layers, int(visual["layer1.0.conv1.weight"].shape[0])


def read_visual(weights: str | Path) -> dict[str, torch.Tensor]:
    """The ``visual.*`` tensors (prefix dropped) of a CLIP checkpoint file or an imported folder."""
    from covseg.models.clip_weights import read_clip_state_dict, visual_state

    path = expand(str(weights))
    if path.is_dir():
        if not (path / VISUAL_FILE).is_file():
            raise CovsegError(
                f"no {VISUAL_FILE} in the folder (write one with covseg weights import --format clip)", path
            )
        from safetensors.torch import load_file

        return load_file(str(path / VISUAL_FILE), device="cpu")
    state = visual_state(read_clip_state_dict(path))
    if not state:
        raise CovsegError("not a CLIP checkpoint: no visual.* tensors", path)
    return state


class CLIPResNetEncoder(Encoder):
    """CLIP's ModifiedResNet (authors' parameter names) → features at strides 2, 4, 8, 16, 32."""

    stage_names = ("relu3", "layer1", "layer2", "layer3", "layer4")

    def __init__(
        self,
        in_channels: int = 3,
        weights: str | None = None,
        layers: Sequence[int] = (3, 4, 6, 3),
        width: int = 64,
        freeze: bool = True,
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"clip-resnet takes 1- or 3-channel images, got in_channels={in_channels}")
        visual = read_visual(weights) if weights else None
        if visual is not None:
            layers, width = resnet_sizes(visual, weights)
        self.layers, self.width, self.freeze = tuple(int(n) for n in layers), int(width), bool(freeze)
        w = self.width
        self.conv1, self.bn1 = _conv_bn(3, w // 2, 3, stride=2)
        self.conv2, self.bn2 = _conv_bn(w // 2, w // 2, 3)
        self.conv3, self.bn3 = _conv_bn(w // 2, w, 3)
        self.relu1, self.relu2, self.relu3 = (
            nn.ReLU(inplace=True),
            nn.ReLU(inplace=True),
            nn.ReLU(inplace=True),
        )
        self.avgpool = nn.AvgPool2d(2)
        inplanes = w
        for i, (blocks, stride) in enumerate(zip(self.layers, (1, 2, 2, 2), strict=True)):
            planes = w * 2**i
            stage = [Bottleneck(inplanes, planes, stride)] + [
                Bottleneck(planes * 4, planes) for _ in range(blocks - 1)
            ]
            inplanes = planes * 4
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.in_channels = in_channels
        self.out_channels = (w, w * 4, w * 8, w * 16, w * 32)
        if in_channels == 3:
            self.input_mean, self.input_std = CLIP_MEAN, CLIP_STD
        else:
            self.input_mean, self.input_std = (sum(CLIP_MEAN) / 3,), (sum(CLIP_STD) / 3,)
        if visual is not None:
            self.load_visual(visual, weights)
        if self.freeze:
            self.requires_grad_(False)

    def load_visual(self, visual: dict[str, torch.Tensor], source: str | Path | None = None) -> None:
        """Load CLIP ``visual.*`` tensors (prefix dropped); the attention pool is skipped, anything else must match."""
        own = self.state_dict()
        state = {k: v for k, v in visual.items() if not k.startswith("attnpool.")}
        problem = state_dict_problem(own, state)
        if problem:
            raise CovsegError(f"CLIP ResNet tensors do not match: {problem}", source)
        self.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)

    def train(self, mode: bool = True) -> CLIPResNetEncoder:
        super().train(mode and not self.freeze)  # frozen: batch norm keeps CLIP's statistics
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        stem = self.relu1(self.bn1(self.conv1(x)))
        stem = self.relu2(self.bn2(self.conv2(stem)))
        stem = self.relu3(self.bn3(self.conv3(stem)))
        f1 = self.layer1(self.avgpool(stem))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [stem, f1, f2, f3, self.layer4(f3)]


@ENCODERS.register("clip-resnet")
def _clip_resnet(
    in_channels: int,
    pretrained: bool = False,
    weights: str | None = None,
    layers: Sequence[int] = (3, 4, 6, 3),
    width: int = 64,
    freeze: bool = True,
) -> CLIPResNetEncoder:
    """CLIP's ModifiedResNet (RN50/RN101...): ``weights`` a CLIP state dict file or imported folder; random init without."""
    if pretrained and not weights:
        raise CovsegError(
            "the clip-resnet encoder has no built-in weights: give encoder_kwargs.weights (a CLIP RN50/RN101 state dict or imported folder)"
        )
    return CLIPResNetEncoder(in_channels, weights, layers, width, freeze)
