"""Small building blocks shared by the 2D models: conv-norm-act, residual blocks, resizing.

Everything here is export-friendly (no data-dependent Python branching on tensor values), so
models built from these blocks trace and export to ONNX with dynamic height and width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "instance", "group", "none")
ACTIVATIONS = ("relu", "relu6", "none")


def make_norm(kind: str, channels: int) -> nn.Module:
    """A 2D normalisation layer by name: ``batch``, ``instance`` (affine), ``group`` or ``none``."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")


def make_act(kind: str) -> nn.Module:
    """An activation by name: ``relu``, ``relu6`` or ``none``."""
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "relu6":
        return nn.ReLU6(inplace=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {kind!r}; choose one of {', '.join(ACTIVATIONS)}")


class ConvNormAct(nn.Sequential):
    """Conv2d → norm → activation; 'same' padding for odd kernels (dilation included)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        norm: str = "batch",
        act: str = "relu",
    ) -> None:
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        padding = ((kh - 1) // 2 * dilation, (kw - 1) // 2 * dilation)
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                (kh, kw),
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=norm == "none",
            ),
            make_norm(norm, out_channels),
            make_act(act),
        )


class ResidualBlock(nn.Module):
    """ResNet basic block (two 3×3 convs) with a 1×1 projection when shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, out_channels, 3, stride=stride, norm=norm)
        self.conv2 = ConvNormAct(out_channels, out_channels, 3, norm=norm, act="none")
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = ConvNormAct(
                in_channels, out_channels, 1, stride=stride, norm=norm, act="none"
            )
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class DoubleConv(nn.Sequential):
    """Two 3×3 conv-norm-ReLU layers: the U-Net stage."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch") -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, 3, norm=norm),
            ConvNormAct(out_channels, out_channels, 3, norm=norm),
        )


def resize_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to ``ref``'s height and width (sizes taken from ``ref`` so export stays dynamic)."""
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def upsample2(x: torch.Tensor) -> torch.Tensor:
    """Bilinear ×2 upsampling."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
