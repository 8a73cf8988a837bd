"""``jcs``: joint classification and segmentation with explainable attention (after Wu et al., TIP 2021).

JCS answers "is there infection?" and "where?" from one network: a shared encoder feeds a
classification branch and a segmentation decoder, trained jointly (weighted ``cls`` and ``seg``
loss terms), with explanations from both branches (Grad-CAM of the classifier, the decoder's
attention maps). This is a compact CPU-sized version of that design, not the paper's network:

- encoder: any registered encoder (``resnet`` from scratch, or ImageNet ``efficientnet-lite0``),
  features at strides 2–32; the stride-32 feature is the ``bottleneck`` both branches share;
- classification branch: the registered ``classification`` head (global average pooling and a
  linear layer, so Grad-CAM on it is the class activation map), on by default with 2 classes;
- segmentation branch: a U-Net decoder whose skip connections pass through additive attention
  gates (Oktay et al. 2018): at each level the coarser decoder feature decides, per pixel, how
  much of the encoder skip gets through, ``α = σ(ψ(ReLU(θ(skip) + φ(gate))))``. The four gate
  maps (strides 16, 8, 4, 2) are the ``"attention"`` output; with ``deep_supervision`` the
  stride-16 and stride-8 decoder features also give ``"aux"`` logits (off by default: on 96²
  phantoms with half the slices lesion-free, the full-resolution output then stopped learning
  within 40 epochs, pos. Dice 0.0 against 0.80 without).

The parts of JCS as published are options (all off by default, so the design above stays the
default variant; the shipped ``jcs_paper`` config turns them all on; see :mod:`covseg.models.jcs_parts`):

- ``efm``: the Enhanced Feature Module on the stride-32 features (dilated grouped convolutions, SE);
- ``aff``: the decoder of Attentive Feature Fusion stages (SE-weighted lateral + top-down fusion) in
  place of the attention-gated U-Net decoder; it has no spatial gates, so no ``"attention"`` output;
- ``deep_supervision`` with ``aff``: the paper's five scales, the main logits (stride 2) and four
  ``"aux"`` logits at strides 32, 16, 8 and 4 (the gated decoder keeps its two, strides 16 and 8);
- ``dual_backbone``: a second, classification backbone (``classification_encoder``) whose five stage
  features are fused into the segmentation encoder's; the classification head then reads the
  classification backbone's stride-32 feature, as the paper's classifier does.

``forward(x)`` is the segmentation logits alone (inference, ONNX); ``forward_train`` adds
``class_logits``, ``attention`` (gated decoder) and ``aux``; ``forward_heads`` gives logits and class logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from covseg.models.base import SegmentationModel
from covseg.models.encoders import Encoder, build_encoder
from covseg.models.jcs_parts import AFFDecoder, EnhancedFeatureModule, StageFusion
from covseg.models.layers import ConvNormAct, DoubleConv, resize_to
from covseg.registry import MODELS

DEFAULT_HEADS: dict[str, dict[str, Any]] = {"classification": {"classes": 2}}


class AttentionGate(nn.Module):
    """Additive attention gate: the skip feature weighted per pixel by a map the coarser gate feature decides."""

    def __init__(self, skip_channels: int, gate_channels: int, channels: int, norm: str = "batch") -> None:
        super().__init__()
        self.theta = ConvNormAct(skip_channels, channels, 1, norm=norm, act="none")
        self.phi = ConvNormAct(gate_channels, channels, 1, norm=norm, act="none")
        self.psi = nn.Conv2d(channels, 1, 1)

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate = resize_to(self.phi(gate), skip)
        alpha = torch.sigmoid(self.psi(F.relu(self.theta(skip) + gate)))
        return skip * alpha, alpha


class JCSNet(SegmentationModel):
    """Shared encoder, classification head on its bottleneck, attention-gated U-Net decoder (or JCS's parts)."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        encoder: str = "resnet",
        pretrained: bool = False,
        encoder_kwargs: dict[str, Any] | None = None,
        decoder_widths: Sequence[int] = (128, 64, 32, 16),
        attention_channels: int = 16,
        deep_supervision: bool = False,
        norm: str = "batch",
        heads: dict[str, Any] | None = None,
        efm: bool = False,
        aff: bool = False,
        dual_backbone: bool = False,
        classification_encoder: str = "resnet",
        classification_pretrained: bool = False,
        classification_encoder_kwargs: dict[str, Any] | None = None,
    ) -> None:
        encoder_kwargs = dict(encoder_kwargs or {})
        dec = [int(w) for w in decoder_widths]
        if len(dec) != 4:
            raise ValueError(f"decoder_widths needs 4 entries (strides 16, 8, 4, 2), got {dec}")
        if aff and any(w % 2 for w in dec):
            raise ValueError(f"aff needs even decoder_widths (lateral and top-down halves), got {dec}")
        paper_args: dict[str, Any] = {"efm": bool(efm), "aff": bool(aff), "dual_backbone": bool(dual_backbone)}
        if dual_backbone:
            paper_args.update(
                classification_encoder=classification_encoder,
                classification_pretrained=bool(classification_pretrained),
                classification_encoder_kwargs=dict(classification_encoder_kwargs or {}),
            )
        super().__init__(
            in_channels,
            out_channels,
            encoder=encoder,
            pretrained=pretrained,
            encoder_kwargs=encoder_kwargs,
            decoder_widths=dec,
            attention_channels=int(attention_channels),
            deep_supervision=bool(deep_supervision),
            norm=norm,
            **paper_args,
        )
        self.aff = bool(aff)
        self.encoder: Encoder = build_encoder(encoder, in_channels, pretrained=pretrained, **encoder_kwargs)
        enc = list(self.encoder.out_channels)
        self.classification_encoder: Encoder | None = None
        self.stage_fusion: StageFusion | None = None
        bottleneck_channels = enc[4]
        if dual_backbone:
            self.classification_encoder = build_encoder(
                classification_encoder, in_channels, pretrained=classification_pretrained,
                **dict(classification_encoder_kwargs or {}),
            )
            cls_enc = list(self.classification_encoder.out_channels)
            self.stage_fusion = StageFusion(enc, cls_enc, norm)
            bottleneck_channels = cls_enc[4]
        self.efm = EnhancedFeatureModule(enc[4], norm=norm) if efm else None
        if aff:
            self.decoder = AFFDecoder(enc, [dec[0], *dec], norm)
            self.head = nn.Conv2d(dec[-1], out_channels, 1)
            aux_widths = [dec[0], *dec[:3]]  # strides 32, 16, 8, 4; the main logits are the fifth scale
        else:
            skips = [enc[3], enc[2], enc[1], enc[0]]  # strides 16, 8, 4, 2
            previous = [enc[4], *dec[:3]]
            self.gates = nn.ModuleList(
                AttentionGate(s, p, int(attention_channels), norm) for s, p in zip(skips, previous)
            )
            self.ups = nn.ModuleList(DoubleConv(p + s, d, norm) for p, s, d in zip(previous, skips, dec))
            self.head = nn.Conv2d(dec[-1], out_channels, 1)
            aux_widths = dec[:2]
        self.aux_heads = (
            nn.ModuleList(nn.Conv2d(d, out_channels, 1) for d in aux_widths) if deep_supervision else None
        )
        self.num_aux = len(aux_widths) if deep_supervision else 0
        self.train_outputs = (
            "logits", *(() if aff else ("attention",)), *(("aux",) if deep_supervision else ()),
        )
        self.attach_heads(DEFAULT_HEADS if heads is None else heads, bottleneck_channels)

    @property
    def cam_layer(self) -> str:
        """Grad-CAM at the encoder's stride-8 stage: the bottleneck (stride 32) is 3 × 3 cells on a 96² phantom
        and 8 × 8 on a 256² slice, too coarse to point at a lesion (see the README's JCS section)."""
        prefix, encoder = "encoder", self.encoder
        if self.classification_encoder is not None:  # the heads read the classification backbone
            prefix, encoder = "classification_encoder", self.classification_encoder
        names = getattr(encoder, "stage_names", ())
        return f"{prefix}.{names[2]}" if len(names) == 5 else "head_input"

    @property
    def input_normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """The pretrained backbone's input statistics (either backbone; a from-scratch one takes any)."""
        own = super().input_normalization
        if own is not None or self.classification_encoder is None or not self.init_args.get("classification_pretrained"):
            return own
        enc = self.classification_encoder
        mean, std = getattr(enc, "input_mean", None), getattr(enc, "input_std", None)
        return None if mean is None or std is None else (mean, std)

    def _forward(self, x: torch.Tensor) -> dict[str, Any]:
        features = list(self.encoder(x))
        bottleneck = features[4]
        if self.classification_encoder is not None and self.stage_fusion is not None:
            cls_features = self.classification_encoder(x)
            bottleneck = cls_features[4]
            features = self.stage_fusion(features, cls_features)
        if self.efm is not None:
            features[4] = self.efm(features[4])
        if self.aff:
            decoded = self.decoder(features)
            out: dict[str, Any] = {"logits": resize_to(self.head(decoded[-1]), x), "bottleneck": bottleneck}
            if self.aux_heads is not None:
                out["aux"] = [head(d) for head, d in zip(self.aux_heads, decoded[:4])]
            return out
        y = features[4]
        attention, decoded = [], []
        for gate, up, skip in zip(self.gates, self.ups, reversed(features[:4])):
            gated, alpha = gate(skip, y)
            y = up(torch.cat([resize_to(y, skip), gated], dim=1))
            attention.append(alpha)
            decoded.append(y)
        out = {"logits": resize_to(self.head(y), x), "attention": attention, "bottleneck": bottleneck}
        if self.aux_heads is not None:
            out["aux"] = [head(d) for head, d in zip(self.aux_heads, decoded[:2])]
        return out


MODELS.register("jcs")(JCSNet)
