"""The multi-class U-Net of Semi-Inf-Net as released (``InfNet_UNet.py``, the Pytorch-UNet layout).

Widths 64-128-256-512-512 (bilinear variant: the deepest stage is halved), every 3×3 conv with a
bias and batch norm, max-pool down, up by bilinear ×2 with ``align_corners=True``, the upsampled
map padded to the skip's size and concatenated after it, and each decoder stage's first conv
halving the channels (``mid = in // 2``). Submodule names follow the released file (``inc``,
``down1``…, ``up1``…, ``outc``; ``double_conv``, ``maxpool_conv``, ``conv``) so its state dicts
load key for key under ``net.`` of ``unet_multiclass(published=True)``.

The authors feed the image (3 channels, ImageNet-normalised) and the Semi-Inf-Net infection map
as a 3-channel picture normalised the same way: 6 input channels. covseg's cascade gives the map
as one probability channel, so :class:`PriorToPicture` repeats it into those three normalised
channels, which is what the authors' loader computes from the saved map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DoubleConv(nn.Module):
    """(3×3 conv with bias → BN → ReLU) × 2."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        super().__init__()
        mid = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, 3, padding=1),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    """Max-pool ×2 then a double conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Bilinear ×2 (``align_corners=True``), pad to the skip, concatenate ``[skip, up]``, double conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class InfNetUNet(nn.Module):
    """The released multi-class U-Net body: ``forward(x)`` → logits, ``features(x)`` → (logits, bottleneck)."""

    bottleneck_channels = 512

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.inc = DoubleConv(in_channels, 64)
        self.down1, self.down2 = Down(64, 128), Down(128, 256)
        self.down3, self.down4 = Down(256, 512), Down(512, 512)
        self.up1, self.up2 = Up(1024, 256), Up(512, 128)
        self.up3, self.up4 = Up(256, 64), Up(128, 64)
        self.outc = nn.Module()
        self.outc.conv = nn.Conv2d(64, out_channels, 1)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        y = self.up4(self.up3(self.up2(self.up1(x5, x4), x3), x2), x1)
        return self.outc.conv(y), x5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[0]


def prior_to_picture(x: torch.Tensor, image_channels: int) -> torch.Tensor:
    """``[image, p]`` → ``[image, (p − mean_c) / std_c for c = R, G, B]``: the authors' 6-channel input."""
    image, prior = x[:, :image_channels], x[:, image_channels:]
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return torch.cat([image, (prior - mean) / std], dim=1)
