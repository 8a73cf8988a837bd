"""MONAI's networks as registry entries: ``monai_unet`` (``monai.networks.nets.UNet``), 2D or 3D.

A baseline beside covseg's own models (the runtime benchmark trains it with ``covseg train`` and
with a bare PyTorch loop, to measure the trainer's overhead) and a 3D network with residual
units for volumes. MONAI is imported when the model is built.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from covseg.models.base import SegmentationModel
from covseg.registry import MODELS
from covseg.utils.monai_import import import_monai


@MODELS.register("monai_unet")
class MonaiUNet(SegmentationModel):
    """MONAI's residual U-Net (``monai.networks.nets.UNet``) behind covseg's model contract."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[int] = (2, 2, 2, 2),
        num_res_units: int = 3,
        norm: str = "batch",
        dropout: float = 0.0,
        spatial_dims: int = 2,
    ) -> None:
        import_monai()
        from monai.networks.nets import UNet

        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        channels, strides = [int(c) for c in channels], [int(s) for s in strides]
        if len(strides) != len(channels) - 1:
            raise ValueError(f"monai_unet needs len(strides) == len(channels) - 1, got {strides} and {channels}")
        super().__init__(
            in_channels,
            out_channels,
            channels=channels,
            strides=strides,
            num_res_units=int(num_res_units),
            norm=norm,
            dropout=float(dropout),
            spatial_dims=spatial_dims,
        )
        self.spatial_dims = spatial_dims
        self.size_divisor = math.prod(strides)
        self.net = UNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=channels,
            strides=strides,
            num_res_units=int(num_res_units),
            norm=norm,
            dropout=float(dropout),
        )

    def _forward(self, x: torch.Tensor) -> dict[str, Any]:
        return {"logits": self.net(x)}
