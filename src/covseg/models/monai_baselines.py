"""The baselines of the seeds' comparison tables, as MONAI builds them, behind covseg's model contract.

* ``unetplusplus``: U-Net++ (MONAI ``BasicUNetPlusPlus``), 2D or 3D; with ``deep_supervision`` the
  three shallower nested decoders' maps are the ``aux`` outputs (full resolution), which the
  ``aux`` loss term weighs;
* ``attention_unet``: attention U-Net (MONAI ``AttentionUnet``, Oktay et al.), 2D or 3D;
* ``unetr``: UNETR (ViT encoder, 16-voxel patches), 2D or 3D; its position embeddings fix the input
  size to ``img_size``, so smaller inputs are padded up to it and larger ones are refused (predict
  volumes with the ``sliding_window`` inferer, patches of ``img_size``);
* ``swin_unetr``: SwinUNETR, 2D or 3D; inputs padded to multiples of 32.

MONAI is imported when a model is built, never when the registry is read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from covseg.models.base import SegmentationModel
from covseg.registry import MODELS
from covseg.utils.monai_import import import_monai


def _dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return int(spatial_dims)


@MODELS.register("unetplusplus")
class UNetPlusPlus(SegmentationModel):
    """U-Net++ (MONAI ``BasicUNetPlusPlus``): nested dense skip paths; deep supervision as ``aux``."""

    size_divisor = 16

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        deep_supervision: bool = False,
        norm: str = "batch",
        dropout: float = 0.0,
        upsample: str = "deconv",
        spatial_dims: int = 2,
    ) -> None:
        import_monai()
        from monai.networks.nets import BasicUNetPlusPlus

        features = [int(f) for f in features]
        if len(features) != 6:
            raise ValueError(f"unetplusplus needs six features (five encoder levels and the last decoder), got {features}")
        super().__init__(
            in_channels, out_channels, features=features, deep_supervision=bool(deep_supervision), norm=norm,
            dropout=float(dropout), upsample=upsample, spatial_dims=_dims(spatial_dims),
        )
        self.spatial_dims = spatial_dims
        self.deep_supervision = bool(deep_supervision)
        if self.deep_supervision:
            self.train_outputs = ("logits", "aux")
            self.num_aux = 3
        self.net = BasicUNetPlusPlus(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, features=features,
            deep_supervision=self.deep_supervision, norm=norm, dropout=float(dropout), upsample=upsample,
        )

    def _forward(self, x: torch.Tensor) -> dict[str, Any]:
        outs = self.net(x)  # [x_0_1, x_0_2, x_0_3, x_0_4] with deep supervision, else [x_0_4]
        out: dict[str, Any] = {"logits": outs[-1]}
        if self.deep_supervision:
            out["aux"] = list(outs[:-1][::-1])  # deepest nested decoder first
        return out


@MODELS.register("attention_unet")
class AttentionUNet(SegmentationModel):
    """Attention U-Net (MONAI ``AttentionUnet``): attention gates on the skip connections."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[int] = (2, 2, 2, 2),
        dropout: float = 0.0,
        spatial_dims: int = 2,
    ) -> None:
        import_monai()
        from monai.networks.nets import AttentionUnet

        channels, strides = [int(c) for c in channels], [int(s) for s in strides]
        if len(strides) != len(channels) - 1:
            raise ValueError(f"attention_unet needs len(strides) == len(channels) - 1, got {strides} and {channels}")
        super().__init__(in_channels, out_channels, channels=channels, strides=strides, dropout=float(dropout), spatial_dims=_dims(spatial_dims))
        self.spatial_dims = spatial_dims
        self.size_divisor = math.prod(strides)
        self.net = AttentionUnet(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, channels=channels,
            strides=strides, dropout=float(dropout),
        )

    def _forward(self, x: torch.Tensor) -> dict[str, Any]:
        return {"logits": self.net(x)}


@MODELS.register("unetr")
class UNETRModel(SegmentationModel):
    """UNETR (MONAI): a ViT over 16-voxel patches of an ``img_size`` input, a convolutional decoder."""

    size_divisor = 16
    fixed_input_size = True  # position embeddings of an img_size grid

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        img_size: Sequence[int] | int = 96,
        feature_size: int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_heads: int = 12,
        norm: str = "instance",
        dropout: float = 0.0,
        spatial_dims: int = 3,
    ) -> None:
        import_monai()
        from monai.networks.nets import UNETR

        spatial_dims = _dims(spatial_dims)
        size = [int(img_size)] * spatial_dims if isinstance(img_size, int | float) else [int(s) for s in img_size]
        if len(size) != spatial_dims or any(s <= 0 or s % 16 for s in size):
            raise ValueError(f"unetr: img_size needs {spatial_dims} multiples of 16 (its patch size), got {img_size}")
        if int(hidden_size) % int(num_heads):
            raise ValueError(f"unetr: hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        super().__init__(
            in_channels, out_channels, img_size=size, feature_size=int(feature_size), hidden_size=int(hidden_size),
            mlp_dim=int(mlp_dim), num_heads=int(num_heads), norm=norm, dropout=float(dropout), spatial_dims=spatial_dims,
        )
        self.spatial_dims = spatial_dims
        self.img_size = tuple(size)
        self.net = UNETR(
            in_channels=in_channels, out_channels=out_channels, img_size=size, feature_size=int(feature_size),
            hidden_size=int(hidden_size), mlp_dim=int(mlp_dim), num_heads=int(num_heads), norm_name=norm,
            dropout_rate=float(dropout), spatial_dims=spatial_dims,
        )

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Pad up to ``img_size`` (the position embeddings' grid); a larger input is refused."""
        spatial = tuple(x.shape[2:])
        if not torch.jit.is_tracing() and any(int(s) > i for s, i in zip(spatial, self.img_size)):
            raise ValueError(
                f"unetr takes inputs up to its img_size {list(self.img_size)}, got {list(spatial)}; "
                "predict larger images with the sliding_window inferer"
            )
        pads: list[Any] = []
        for size, target in zip(reversed(spatial), reversed(self.img_size)):
            pads += [0, target - size]
        return F.pad(x, tuple(pads), mode="replicate"), spatial

    def _forward(self, x: torch.Tensor) -> dict[str, Any]:
        return {"logits": self.net(x)}


@MODELS.register("swin_unetr")
class SwinUNETRModel(SegmentationModel):
    """SwinUNETR (MONAI): a shifted-window transformer encoder, a convolutional decoder."""

    size_divisor = 32

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        feature_size: int = 24,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        norm: str = "instance",
        dropout: float = 0.0,
        use_v2: bool = False,
        spatial_dims: int = 3,
    ) -> None:
        import_monai()
        from monai.networks.nets import SwinUNETR

        depths, num_heads = [int(d) for d in depths], [int(h) for h in num_heads]
        if int(feature_size) % 12:
            raise ValueError(f"swin_unetr: feature_size must be a multiple of 12, got {feature_size}")
        super().__init__(
            in_channels, out_channels, feature_size=int(feature_size), depths=depths, num_heads=num_heads,
            window_size=int(window_size), norm=norm, dropout=float(dropout), use_v2=bool(use_v2), spatial_dims=_dims(spatial_dims),
        )
        self.spatial_dims = spatial_dims
        self.net = SwinUNETR(
            in_channels=in_channels, out_channels=out_channels, feature_size=int(feature_size), depths=depths,
            num_heads=num_heads, window_size=int(window_size), norm_name=norm, drop_rate=float(dropout),
            use_v2=bool(use_v2), spatial_dims=spatial_dims,
        )

    def _forward(self, x: torch.Tensor) -> dict[str, Any]:
        return {"logits": self.net(x)}
