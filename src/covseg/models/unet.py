"""U-Net baselines: binary ``unet`` and the multi-class ``unet_multiclass`` (GGO / consolidation).

``unet`` is the classic encoder–decoder with skip connections (Ronneberger et al. 2015):
double 3×3 conv stages, max-pool down, bilinear up + concatenation. With ``encoder=`` it
swaps the built-in encoder for one from ``covseg.models.encoders`` (features at strides
2–32) and decodes up to stride 2, then resizes the logits bilinearly to the input (cheaper on
CPU than a full-resolution decoder stage).

``unet_multiclass`` is the second stage of the Semi-Inf-Net + multi-class U-Net pipeline of
Inf-Net (Fan et al. 2020): it labels background / ground-glass opacity / consolidation and,
with ``prior_channel=True``, takes the infection probability map of a binary model as an extra
input channel (concatenate it after the image channels; ``MultiClassUNet.with_prior`` does it).
``published=True`` is the U-Net the authors released (:mod:`covseg.models.infnet_unet`), whose
state dicts ``covseg weights import --format infnet-multiclass`` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from covseg.models.base import SegmentationModel
from covseg.models.encoders import Encoder, build_encoder
from covseg.models.infnet_unet import InfNetUNet, prior_to_picture
from covseg.models.layers import DoubleConv, conv_type, max_pool, resize_to
from covseg.registry import MODELS


class UNet(SegmentationModel):
    """U-Net (built-in encoder of ``depth`` poolings, or a registered ``encoder``); 2D or 3D (``spatial_dims``)."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_width: int = 16,
        depth: int = 4,
        norm: str = "batch",
        encoder: str | None = None,
        pretrained: bool = False,
        encoder_kwargs: dict[str, Any] | None = None,
        decoder_widths: Sequence[int] | None = None,
        spatial_dims: int = 2,
        heads: dict[str, Any] | None = None,
    ) -> None:
        encoder_kwargs = dict(encoder_kwargs or {})
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if spatial_dims == 3 and encoder is not None:
            raise ValueError("a registered encoder is 2D; spatial_dims=3 uses the built-in encoder (encoder=None)")
        args: dict[str, Any] = dict(
            base_width=base_width,
            depth=depth,
            norm=norm,
            encoder=encoder,
            pretrained=pretrained,
            encoder_kwargs=encoder_kwargs,
            decoder_widths=None if decoder_widths is None else [int(w) for w in decoder_widths],
        )
        if spatial_dims != 2:  # 2D runs keep the init args they always had
            args["spatial_dims"] = spatial_dims
        super().__init__(in_channels, out_channels, **args)
        self.spatial_dims = spatial_dims
        self._build(
            in_channels,
            out_channels,
            base_width,
            depth,
            norm,
            encoder,
            pretrained,
            encoder_kwargs,
            decoder_widths,
        )
        self.attach_heads(heads, self._bottleneck_width)

    def _build(
        self,
        net_in: int,
        out_channels: int,
        base_width: int,
        depth: int,
        norm: str,
        encoder: str | None,
        pretrained: bool,
        encoder_kwargs: dict[str, Any],
        decoder_widths: Sequence[int] | None,
    ) -> None:
        self.encoder: Encoder | None = None
        if encoder is None:
            if pretrained:
                raise ValueError("pretrained=True needs encoder= (the built-in U-Net encoder has no weights)")
            if depth < 1:
                raise ValueError(f"depth must be ≥ 1, got {depth}")
            widths = [base_width * 2**i for i in range(depth + 1)]
            dims = self.spatial_dims
            self.size_divisor = 2**depth
            self.inc = DoubleConv(net_in, widths[0], norm, dims)
            self.downs = nn.ModuleList(DoubleConv(widths[i], widths[i + 1], norm, dims) for i in range(depth))
            self.ups = nn.ModuleList(
                DoubleConv(widths[i + 1] + widths[i], widths[i], norm, dims) for i in range(depth)
            )
            head_in = widths[0]
            self._bottleneck_width = widths[-1]
        else:
            self.encoder = build_encoder(encoder, net_in, pretrained=pretrained, **encoder_kwargs)
            enc = list(self.encoder.out_channels)
            dec = list(decoder_widths) if decoder_widths is not None else [128, 64, 32, 16]
            if len(dec) != 4:
                raise ValueError(f"decoder_widths needs 4 entries (strides 16, 8, 4, 2), got {dec}")
            self.size_divisor = 32
            # decoder stage i fuses the previous output with the skip at stride 2**(4 - i)
            prev = [enc[4], *dec[:3]]
            skips = [enc[3], enc[2], enc[1], enc[0]]
            self.ups = nn.ModuleList(DoubleConv(p + s, d, norm) for p, s, d in zip(prev, skips, dec))
            head_in = dec[-1]
            self._bottleneck_width = enc[4]
        self.head = conv_type(self.spatial_dims)(head_in, out_channels, 1)

    def _forward(self, x: torch.Tensor) -> dict[str, Any]:
        if self.encoder is None:
            skips = [self.inc(x)]
            for down in self.downs:
                skips.append(down(max_pool(skips[-1], 2)))
            y = bottleneck = skips.pop()
            for up in reversed(self.ups):
                skip = skips.pop()
                y = up(torch.cat([resize_to(y, skip), skip], dim=1))
            return {"logits": self.head(y), "bottleneck": bottleneck}
        features = self.encoder(x)
        y = features[4]
        for up, skip in zip(self.ups, reversed(features[:4])):
            y = up(torch.cat([resize_to(y, skip), skip], dim=1))
        return {"logits": resize_to(self.head(y), x), "bottleneck": features[4]}


MODELS.register("unet")(UNet)


class MultiClassUNet(UNet):
    """Multi-class U-Net (background / GGO / consolidation), optionally fed a binary infection prior."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 3,
        prior_channel: bool = False,
        base_width: int = 16,
        depth: int = 4,
        norm: str = "batch",
        encoder: str | None = None,
        pretrained: bool = False,
        encoder_kwargs: dict[str, Any] | None = None,
        decoder_widths: Sequence[int] | None = None,
        spatial_dims: int = 2,
        heads: dict[str, Any] | None = None,
        published: bool = False,
    ) -> None:
        if out_channels < 2:
            raise ValueError(
                f"unet_multiclass needs out_channels ≥ 2 (softmax, class 0 = background), got {out_channels}"
            )
        if published:
            self._build_published(in_channels, out_channels, prior_channel, heads)
            return
        super().__init__(
            in_channels + int(prior_channel),
            out_channels,
            base_width=base_width,
            depth=depth,
            norm=norm,
            encoder=encoder,
            pretrained=pretrained,
            encoder_kwargs=encoder_kwargs,
            decoder_widths=decoder_widths,
            spatial_dims=spatial_dims,
            heads=heads,
        )
        self.in_channels = in_channels
        self.prior_channel = bool(prior_channel)
        self.init_args = {
            **self.init_args,
            "in_channels": in_channels,
            "prior_channel": self.prior_channel,
        }

    published = False

    def _build_published(self, in_channels: int, out_channels: int, prior_channel: bool, heads: dict[str, Any] | None) -> None:
        """Semi-Inf-Net's released U-Net (:mod:`covseg.models.infnet_unet`); the prior enters as the authors' 3 channels."""
        SegmentationModel.__init__(self, in_channels, out_channels, prior_channel=bool(prior_channel), published=True)
        self.published, self.prior_channel, self.spatial_dims = True, bool(prior_channel), 2
        self.encoder = None
        self.size_divisor = 16
        self.net = InfNetUNet(in_channels + 3 * int(prior_channel), out_channels)
        self.attach_heads(heads, InfNetUNet.bottleneck_channels)

    def _forward(self, x: torch.Tensor) -> dict[str, Any]:
        if not self.published:
            return super()._forward(x)
        if self.prior_channel:
            x = prior_to_picture(x, self.in_channels)
        logits, bottleneck = self.net.features(x)
        return {"logits": logits, "bottleneck": bottleneck}

    @property
    def input_channels(self) -> int:
        return self.in_channels + int(self.prior_channel)

    @staticmethod
    def with_prior(image: torch.Tensor, infection_probability: torch.Tensor) -> torch.Tensor:
        """The input ``forward`` expects with ``prior_channel=True``: image channels, then the prior map."""
        if infection_probability.shape[-2:] != image.shape[-2:]:
            infection_probability = F.interpolate(
                infection_probability, size=image.shape[-2:], mode="bilinear", align_corners=False
            )
        return torch.cat([image, infection_probability.to(image.dtype)], dim=1)


MODELS.register("unet_multiclass")(MultiClassUNet)
