"""Inf-Net (Fan et al., IEEE TMI 2020, "Inf-Net: Automatic COVID-19 Lung Infection Segmentation
from CT Images"), rebuilt light enough for CPU inference.

Structure (as in the paper and its released code):

1. Encoder features ``f1`` (stride 4, low level) and ``f2, f3, f4`` (strides 8, 16, 32, high level).
2. RFB-style receptive-field blocks shrink ``f2, f3, f4`` to ``channel`` channels: a 1×1
   branch plus branches 1×1 → 1×k → k×1 → 3×3 dilated k (k = 3, 5, 7), concatenated, fused by
   a 3×3 conv and added to a 1×1 shortcut.
3. The parallel partial decoder (PPD) aggregates the three RFB outputs with multiplicative
   cross-level fusion into a coarse **global map** ``S_g`` (stride 8).
4. The edge-attention branch turns ``f1`` into edge features (fed to every reverse-attention
   stage) and **edge logits** (supervised by edge ground truth).
5. Three reverse-attention (RA) stages, deep to shallow (``f4``, ``f3``, ``f2``): each erases the
   already-found region, ``(1 − σ(previous map)) · f``, concatenates the resized edge features,
   predicts a residual and adds it to the previous map.

``forward_train`` returns ``logits`` = the finest RA output (stride 8, resized to the input;
Inf-Net's ``lateral_map_2``), ``aux`` = ``[S_g, RA(f4), RA(f3)]`` (strides 8, 32, 16) and
``edge`` (stride 4). With a loss on ``logits`` and one per ``aux`` entry every side output is
supervised exactly once, as in Inf-Net's training loss (four structure losses + edge BCE).

Encoder: the paper uses Res2Net-50 (~25 M parameters; 4.2 G multiply-adds at 224² as published,
≈ 10 G at 352² before the Inf-Net heads), several times this module's whole budget on two CPU
cores. The default here is a small
residual encoder trained from scratch (``resnet``: widths 16–256, one residual block per stage
after a stride-2 stem; dense 3×3 convs, which oneDNN ran about three times more efficiently per
FLOP than depthwise ones on the target machine), and ``encoder="efficientnet-lite0", pretrained=True`` gives an
ImageNet-pretrained variant (normalise inputs with mean 127/255, std 128/255, see
``covseg.models.encoders``). Other CPU cuts against the paper: the RA stages use
``ra_channels`` = 64 (RA-4 had 256; it keeps its three 5×5 convs, cheap at stride 32), the edge
branch ``edge_channels`` = 32 (was 64), RFB/PPD keep ``channel`` = 32, and ``rfb_branches`` can
drop the widest RFB branches. The default costs 1.6 G multiply-adds (convolutions) per 352² slice.

``published=True`` builds the heads exactly as the authors' ``InfNet_Res2Net.py`` wires them, so
their released state dicts (Inf-Net, Semi-Inf-Net) load through ``covseg weights import`` and give
the same output: edge branch without activations, every side classifier a conv + batch norm
(1×1 for RA-4, 3×3 for RA-3/RA-2 and the edge), and the PPD's ×2 / ×4 upsampling bilinear with
``align_corners=True`` in ×2 steps. With ``encoder="res2net50_v1b_26w_4s"``, ``channel=32``,
``ra_channels=[256, 64, 64]``, ``edge_channels=64`` and ``in_channels=3`` it is the published Inf-Net.

Deviations kept on purpose (``published=False``, the default): the original ``BasicConv2d`` never applies its ReLU, which leaves
the edge branch a purely linear stack; here the edge branch convs have ReLU. RFB and PPD keep
the original placement (norm without activation inside, nonlinearity from the residual ReLU and
the multiplicative fusion). Binary segmentation only (reverse attention needs one foreground
map): ``out_channels`` must be 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from covseg.models.base import SegmentationModel
from covseg.models.encoders import Encoder, build_encoder
from covseg.models.layers import ConvNormAct, resize_to
from covseg.registry import MODELS


class ReceptiveFieldBlock(nn.Module):
    """RFB-style block: 1×1 branch + (1×1, 1×k, k×1, 3×3 dilation k) branches for k = 3, 5, 7."""

    def __init__(self, in_channels: int, channels: int, branches: int = 4, norm: str = "batch") -> None:
        super().__init__()
        if not 1 <= branches <= 4:
            raise ValueError(f"rfb_branches must be 1–4, got {branches}")

        def conv(cin: int, k: int | tuple[int, int], dilation: int = 1) -> ConvNormAct:
            return ConvNormAct(cin, channels, k, dilation=dilation, norm=norm, act="none")

        paths: list[nn.Module] = [conv(in_channels, 1)]
        for k in (3, 5, 7)[: branches - 1]:
            paths.append(
                nn.Sequential(
                    conv(in_channels, 1), conv(channels, (1, k)), conv(channels, (k, 1)), conv(channels, 3, k)
                )
            )
        self.branches = nn.ModuleList(paths)
        self.fuse = conv(branches * channels, 3)
        self.shortcut = conv(in_channels, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))
        return self.act(y + self.shortcut(x))


def _up_aligned(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinear resize with ``align_corners=True`` (the published PPD's ``nn.Upsample``)."""
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=True)


class ParallelPartialDecoder(nn.Module):
    """PPD: dense multiplicative aggregation of the three high-level features into a global map.

    ``published``: upsample as the released code does (×2 steps, ``align_corners=True``).
    """

    def __init__(self, channels: int, out_channels: int, norm: str = "batch", published: bool = False) -> None:
        super().__init__()
        c = channels
        self.published = published

        def conv(cin: int, cout: int) -> ConvNormAct:
            return ConvNormAct(cin, cout, 3, norm=norm, act="none")

        self.up_deep_to_mid = conv(c, c)
        self.up_deep_to_low = conv(c, c)
        self.up_mid_to_low = conv(c, c)
        self.up_deep_for_concat = conv(c, c)
        self.up_mid_concat = conv(2 * c, 2 * c)
        self.concat_mid = conv(2 * c, 2 * c)
        self.concat_low = conv(3 * c, 3 * c)
        self.refine = conv(3 * c, 3 * c)
        self.classifier = nn.Conv2d(3 * c, out_channels, 1)

    def forward(self, deep: torch.Tensor, mid: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        """``deep``/``mid``/``low``: RFB outputs at strides 32/16/8; returns logits at stride 8."""
        if self.published:
            return self._forward_published(deep, mid, low)
        mid_1 = self.up_deep_to_mid(resize_to(deep, mid)) * mid
        low_1 = self.up_deep_to_low(resize_to(deep, low)) * self.up_mid_to_low(resize_to(mid, low)) * low
        mid_2 = self.concat_mid(torch.cat([mid_1, self.up_deep_for_concat(resize_to(deep, mid))], dim=1))
        low_2 = self.concat_low(torch.cat([low_1, self.up_mid_concat(resize_to(mid_2, low))], dim=1))
        return self.classifier(self.refine(low_2))

    def _forward_published(self, deep: torch.Tensor, mid: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        deep_mid = _up_aligned(deep, mid)
        deep_low = _up_aligned(deep_mid, low)
        mid_1 = self.up_deep_to_mid(deep_mid) * mid
        low_1 = self.up_deep_to_low(deep_low) * self.up_mid_to_low(_up_aligned(mid, low)) * low
        mid_2 = self.concat_mid(torch.cat([mid_1, self.up_deep_for_concat(deep_mid)], dim=1))
        low_2 = self.concat_low(torch.cat([low_1, self.up_mid_concat(_up_aligned(mid_2, low))], dim=1))
        return self.classifier(self.refine(low_2))


class EdgeAttention(nn.Module):
    """Edge branch: low-level features → edge features (for the RA stages) and edge logits.

    ``published``: no activations and a conv + norm edge head, as released.
    """

    def __init__(self, in_channels: int, channels: int, norm: str = "batch", published: bool = False) -> None:
        super().__init__()
        act = "none" if published else "relu"
        self.body = nn.Sequential(
            ConvNormAct(in_channels, channels, 1, norm=norm, act=act),
            ConvNormAct(channels, channels, 3, norm=norm, act=act),
            ConvNormAct(channels, channels, 3, norm=norm, act=act),
        )
        self.edge_head: nn.Module = (
            ConvNormAct(channels, 1, 3, norm=norm, act="none") if published else nn.Conv2d(channels, 1, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return features, self.edge_head(features)


class ReverseAttention(nn.Module):
    """RA stage: erase the found region from ``feature``, add edge guidance, predict a residual map."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        edge_channels: int,
        convs: int,
        kernel: int,
        norm: str = "batch",
        classifier_kernel: int | None = None,
    ) -> None:
        super().__init__()
        self.reduce = ConvNormAct(in_channels, channels, 1, norm=norm, act="none")
        layers: list[nn.Module] = [ConvNormAct(channels + edge_channels, channels, kernel, norm=norm)]
        layers += [ConvNormAct(channels, channels, kernel, norm=norm) for _ in range(convs - 1)]
        self.body = nn.Sequential(*layers)
        self.classifier: nn.Module = (
            nn.Conv2d(channels, 1, 3, padding=1)
            if classifier_kernel is None
            else ConvNormAct(channels, 1, classifier_kernel, norm=norm, act="none")
        )

    def forward(
        self, feature: torch.Tensor, previous: torch.Tensor, edge_features: torch.Tensor
    ) -> torch.Tensor:
        prior = resize_to(previous, feature)
        reverse = 1.0 - torch.sigmoid(prior)
        x = torch.cat([self.reduce(reverse * feature), resize_to(edge_features, feature)], dim=1)
        return self.classifier(self.body(x)) + prior


class InfNet(SegmentationModel):
    """Inf-Net: RFB + parallel partial decoder, edge attention, three reverse-attention stages."""

    train_outputs = ("logits", "aux", "edge")
    num_aux = 3

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        encoder: str = "resnet",
        pretrained: bool = False,
        encoder_kwargs: dict[str, Any] | None = None,
        channel: int = 32,
        rfb_branches: int = 4,
        ra_channels: int | Sequence[int] = 64,
        edge_channels: int = 32,
        norm: str = "batch",
        heads: dict[str, Any] | None = None,
        published: bool = False,
    ) -> None:
        if out_channels != 1:
            raise ValueError(
                f"infnet is binary (reverse attention needs one foreground map): out_channels=1, got {out_channels}"
            )
        encoder_kwargs = dict(encoder_kwargs or {})
        super().__init__(
            in_channels,
            out_channels,
            encoder=encoder,
            pretrained=pretrained,
            # a start-from weights file is not needed to rebuild a trained model (its checkpoint holds them)
            encoder_kwargs={k: v for k, v in encoder_kwargs.items() if k != "weights"},
            channel=channel,
            rfb_branches=rfb_branches,
            ra_channels=ra_channels if isinstance(ra_channels, int) else [int(c) for c in ra_channels],
            edge_channels=edge_channels,
            norm=norm,
            published=published,
        )
        widths = (ra_channels,) * 3 if isinstance(ra_channels, int) else tuple(int(c) for c in ra_channels)
        if len(widths) != 3:
            raise ValueError(f"ra_channels must be one number or three (RA-4, RA-3, RA-2), got {list(widths)}")
        ra4_ch, ra3_ch, ra2_ch = widths
        self.encoder: Encoder = build_encoder(encoder, in_channels, pretrained=pretrained, **encoder_kwargs)
        _, c1, c2, c3, c4 = self.encoder.out_channels
        self.rfb2 = ReceptiveFieldBlock(c2, channel, rfb_branches, norm)
        self.rfb3 = ReceptiveFieldBlock(c3, channel, rfb_branches, norm)
        self.rfb4 = ReceptiveFieldBlock(c4, channel, rfb_branches, norm)
        self.ppd = ParallelPartialDecoder(channel, 1, norm, published)
        self.edge = EdgeAttention(c1, edge_channels, norm, published)
        k4, k3 = (1, 3) if published else (None, None)
        self.ra4 = ReverseAttention(c4, ra4_ch, edge_channels, convs=3, kernel=5, norm=norm, classifier_kernel=k4)
        self.ra3 = ReverseAttention(c3, ra3_ch, edge_channels, convs=2, kernel=3, norm=norm, classifier_kernel=k3)
        self.ra2 = ReverseAttention(c2, ra2_ch, edge_channels, convs=2, kernel=3, norm=norm, classifier_kernel=k3)
        self.attach_heads(heads, c4)

    def _forward(self, x: torch.Tensor) -> dict[str, Any]:
        _, f1, f2, f3, f4 = self.encoder(x)
        edge_features, edge_logits = self.edge(f1)
        global_map = self.ppd(self.rfb4(f4), self.rfb3(f3), self.rfb2(f2))
        ra4 = self.ra4(f4, global_map, edge_features)
        ra3 = self.ra3(f3, ra4, edge_features)
        ra2 = self.ra2(f2, ra3, edge_features)
        return {"logits": resize_to(ra2, x), "aux": [global_map, ra4, ra3], "edge": edge_logits, "bottleneck": f4}


MODELS.register("infnet")(InfNet)
