"""Small building blocks shared by the models: conv-norm-act, residual blocks, resizing.

Blocks take ``spatial_dims`` (2 or 3, MONAI's convention) where a 3D version is natural.

Everything here is export-friendly (no data-dependent Python branching on tensor values), so
models built from these blocks trace and export to ONNX with dynamic height and width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "instance", "group", "none")
ACTIVATIONS = ("relu", "relu6", "none")


def _check_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return spatial_dims


def conv_type(spatial_dims: int = 2) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return nn.Conv3d if _check_dims(spatial_dims) == 3 else nn.Conv2d


def max_pool(x: torch.Tensor, k: int = 2) -> torch.Tensor:
    """Max pooling over every spatial axis of a 2D or 3D batch."""
    return F.max_pool3d(x, k) if x.ndim == 5 else F.max_pool2d(x, k)


def make_norm(kind: str, channels: int, spatial_dims: int = 2) -> nn.Module:
    """A normalisation layer by name: ``batch``, ``instance`` (affine), ``group`` or ``none``."""
    three = _check_dims(spatial_dims) == 3
    if kind == "batch":
        return nn.BatchNorm3d(channels) if three else nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True) if three else nn.InstanceNorm2d(channels, affine=True)
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
    """Conv → norm → activation; 'same' padding for odd kernels (dilation included)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...] = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        norm: str = "batch",
        act: str = "relu",
        spatial_dims: int = 2,
    ) -> None:
        kernel = (kernel_size,) * spatial_dims if isinstance(kernel_size, int) else tuple(kernel_size)
        padding = tuple((k - 1) // 2 * dilation for k in kernel)
        super().__init__(
            conv_type(spatial_dims)(
                in_channels,
                out_channels,
                kernel,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=norm == "none",
            ),
            make_norm(norm, out_channels, spatial_dims),
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
    """Two 3×3 (×3) conv-norm-ReLU layers: the U-Net stage."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch", spatial_dims: int = 2) -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, 3, norm=norm, spatial_dims=spatial_dims),
            ConvNormAct(out_channels, out_channels, 3, norm=norm, spatial_dims=spatial_dims),
        )


def resize_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Resize ``x`` to ``ref``'s spatial size, bilinear (2D) or trilinear (3D); sizes come from ``ref``
    so export stays dynamic."""
    if x.ndim == 5:
        return F.interpolate(x, size=ref.shape[-3:], mode="trilinear", align_corners=False)
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def upsample2(x: torch.Tensor) -> torch.Tensor:
    """Bilinear ×2 upsampling."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
