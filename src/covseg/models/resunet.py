"""Residual U-Net with deep co-supervision and attention fusion (Hu et al., Pattern Recognition 2022,
"Deep co-supervision and attention fusion strategy for automatic COVID-19 lung infection
segmentation on CT images").

Baseline: a residual encoder (``ResNetEncoder``, strides 2–32) and a decoder of residual
blocks with skip connections. Three modules, each switchable for the paper's ablation:

- ESM (``esm=True``), edge-supervised module: an edge head on the *early* encoder features
  (strides 2 and 4) predicts the infection boundary (``"edge"`` output, supervised by edge
  ground truth), and its edge features are added back into the stride-2 skip connection, so
  low-level features are shaped by boundary supervision.
- ASSM (``assm=True``), auxiliary semantic supervised module: mask heads on the *deep* encoder
  features (strides 16 and 32) give auxiliary infection maps (``"aux"``, supervised by the mask),
  strengthening high-level semantics.
- AFM (``afm=True``), attention fusion module: every decoder level (bottleneck and strides
  16, 8, 4) is projected to a common width, resized to the finest decoder level, and weighted
  by its own sigmoid attention map; the sum is blended into the finest decoder feature through a
  complementary gate ``g``: ``out = x + g·x + (1 − g)·fused`` (as in the authors' released code).
  Without AFM the head reads the finest decoder feature alone.

``encoder="efficientnet-lite0"`` (with ``pretrained=True`` for its ImageNet weights) replaces the
residual encoder; the decoder, skips and modules then take the encoder's channel counts as
``widths`` (the ``widths`` / ``depths`` arguments are ignored).

CPU deviation from the paper: the first stage works at stride 2 (no full-resolution 64-channel
features); the logits are predicted at stride 2 and resized bilinearly to the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from covseg.models.base import SegmentationModel
from covseg.models.encoders import Encoder, ResNetEncoder, build_encoder
from covseg.models.layers import ConvNormAct, ResidualBlock, resize_to
from covseg.registry import MODELS


class EdgeSupervisedModule(nn.Module):
    """ESM: edge features and edge logits from the stride-2 and stride-4 encoder features."""

    def __init__(self, c_stride2: int, c_stride4: int, edge_channels: int, norm: str) -> None:
        super().__init__()
        self.fuse = ConvNormAct(c_stride2 + c_stride4, edge_channels, 3, norm=norm)
        self.refine = ConvNormAct(edge_channels, edge_channels, 3, norm=norm)
        self.edge_head = nn.Conv2d(edge_channels, 1, 1)
        self.back_to_skip = ConvNormAct(edge_channels, c_stride2, 1, norm=norm, act="none")

    def forward(self, f2: torch.Tensor, f4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (edge-enhanced stride-2 skip, edge logits at stride 2)."""
        e = self.refine(self.fuse(torch.cat([f2, resize_to(f4, f2)], dim=1)))
        return f2 + self.back_to_skip(e), self.edge_head(e)


class AuxiliarySemanticHead(nn.Module):
    """ASSM head: a 3×3 conv-norm-ReLU and a 1×1 classifier on a deep encoder feature."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        super().__init__()
        hidden = max(16, in_channels // 4)
        self.body = ConvNormAct(in_channels, hidden, 3, norm=norm)
        self.classifier = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


class AttentionFusionModule(nn.Module):
    """AFM: attention-weighted fusion of multi-scale decoder features into the finest one."""

    def __init__(
        self, level_channels: Sequence[int], finest_channels: int, fusion_channels: int, norm: str
    ) -> None:
        super().__init__()
        self.project = nn.ModuleList(ConvNormAct(c, fusion_channels, 1, norm=norm) for c in level_channels)
        self.attend = nn.ModuleList(nn.Conv2d(fusion_channels, fusion_channels, 1) for _ in level_channels)
        self.project_finest = ConvNormAct(finest_channels, fusion_channels, 1, norm=norm)
        self.gate = nn.Conv2d(fusion_channels, fusion_channels, 1)

    def forward(self, levels: Sequence[torch.Tensor], finest: torch.Tensor) -> torch.Tensor:
        x = self.project_finest(finest)
        fused = torch.zeros_like(x)
        for level, project, attend in zip(levels, self.project, self.attend):
            p = resize_to(project(level), x)
            fused = fused + torch.sigmoid(attend(p)) * p
        g = torch.sigmoid(self.gate(x))
        return x + g * x + (1.0 - g) * fused


class ResUNet(SegmentationModel):
    """Residual U-Net with switchable ESM / ASSM / AFM co-supervision modules."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64, 128, 256),
        depths: Sequence[int] = (1, 1, 1, 1, 1),
        norm: str = "batch",
        esm: bool = True,
        assm: bool = True,
        afm: bool = True,
        edge_channels: int = 16,
        fusion_channels: int = 16,
        heads: dict[str, Any] | None = None,
        encoder: str | None = None,
        pretrained: bool = False,
    ) -> None:
        widths, depths = [int(w) for w in widths], [int(d) for d in depths]
        if pretrained and encoder is None:
            raise ValueError("pretrained=True needs encoder= (the residual encoder has no weights)")
        super().__init__(
            in_channels,
            out_channels,
            widths=widths,
            depths=depths,
            norm=norm,
            esm=esm,
            assm=assm,
            afm=afm,
            edge_channels=edge_channels,
            fusion_channels=fusion_channels,
            encoder=encoder,
            pretrained=pretrained,
        )
        if encoder is None:
            self.encoder: Encoder = ResNetEncoder(in_channels, widths, depths, norm)
        else:
            self.encoder = build_encoder(encoder, in_channels, pretrained=pretrained)
            widths = list(self.encoder.out_channels)
        # decoder: stride 16, 8, 4, 2; each fuses the upsampled previous level with the skip
        self.ups = nn.ModuleList(
            ResidualBlock(widths[i + 1] + widths[i], widths[i], norm=norm) for i in (3, 2, 1, 0)
        )
        self.esm = EdgeSupervisedModule(widths[0], widths[1], edge_channels, norm) if esm else None
        self.assm = (
            nn.ModuleList(AuxiliarySemanticHead(widths[i], out_channels, norm) for i in (3, 4))
            if assm
            else None
        )
        if afm:
            # bottleneck, stride 16, 8, 4 levels fused into the stride-2 decoder output
            self.afm: AttentionFusionModule | None = AttentionFusionModule(
                [widths[4], widths[3], widths[2], widths[1]], widths[0], fusion_channels, norm
            )
            head_in = fusion_channels
        else:
            self.afm = None
            head_in = widths[0]
        self.head = nn.Conv2d(head_in, out_channels, 1)
        self.train_outputs = ("logits",) + (("aux",) if assm else ()) + (("edge",) if esm else ())
        self.num_aux = 2 if assm else 0
        self.attach_heads(heads, widths[4])

    def _forward(self, x: torch.Tensor) -> dict[str, Any]:
        f = self.encoder(x)
        out: dict[str, Any] = {}
        skips = list(f[:4])
        if self.esm is not None:
            skips[0], out["edge"] = self.esm(f[0], f[1])
        if self.assm is not None:
            out["aux"] = [head(f[i]) for head, i in zip(self.assm, (3, 4))]
        y = f[4]
        levels = [y]
        for up, skip in zip(self.ups, reversed(skips)):
            y = up(torch.cat([resize_to(y, skip), skip], dim=1))
            levels.append(y)
        if self.afm is not None:
            y = self.afm(levels[:-1], levels[-1])
        out["logits"] = resize_to(self.head(y), x)
        out["bottleneck"] = f[4]
        return out


MODELS.register("resunet")(ResUNet)
