"""``cris``: CLIP-driven referring image segmentation (CRIS, Wang et al., CVPR 2022) on covseg's encoders.

CRIS segments what a sentence refers to in three steps, all kept here:

1. **Text-modulated neck.** The deepest image features are multiplied by the sentence vector
   (CRIS's ``F5 · F_s``) and fused top-down with the stride-16 and stride-8 features into one
   stride-16 map, with two coordinate channels appended (CRIS's CoordConv).
2. **Vision-language decoder.** Transformer layers over the pixel tokens: self-attention among
   pixels, cross-attention from every pixel to the **word** features, an MLP (CRIS's decoder),
   with a convolutional position encoding so any input size works.
3. **Text-to-pixel contrast.** A projector upsamples the decoded pixels to stride 4; the sentence
   vector is turned into a kernel (and bias) and every pixel's score is its dot product with
   it. CRIS trains these scores with a binary cross-entropy whose positives are the referred
   (foreground) pixels and negatives the rest: the *text-to-pixel contrastive loss*, which
   pulls the sentence embedding towards foreground pixels and pushes it from background ones.

``forward_train`` returns ``logits`` (the scores upsampled to the input) and ``t2p`` (the stride-4
scores); the shipped config trains ``logits`` with Dice and ``t2p`` with that contrastive BCE
(``loss.terms``). CRIS's encoders are CLIP's: ``encoder: clip-resnet`` (RN50/RN101) or
``clip-vision`` (ViT) with CLIP's text tower as ``extra.text.encoder``, from a folder that
``covseg weights import --format clip`` makes of a CLIP state dict (config ``cris_clip_qata``).
Changes from the paper, for a CPU and for covseg's offline encoders: ``cris_qata``'s image
encoder is a registered CNN (``efficientnet-lite0`` with ImageNet weights, or ``resnet``) and its
text encoder the offline MiniLM (no CLIP weights ship with covseg), the text kernel is 1×1 after a
3×3 convolution of the pixel features (CRIS generates a 3×3 kernel), and the projector fuses the
stride-4 encoder features on its way up. A learned null token and null sentence make a missing
text well defined, as in the other text models.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from covseg.models.encoders import build_encoder
from covseg.models.layers import ConvNormAct, resize_to
from covseg.models.text_layers import (
    ConvPosition,
    TextContext,
    TextSegmentationModel,
    VisionTextBlock,
    grid_to_tokens,
    tokens_to_grid,
)
from covseg.registry import MODELS


def coordinates(like: torch.Tensor) -> torch.Tensor:
    """Two channels of x and y in [-1, 1] at ``like``'s grid (CRIS's coordinate features)."""
    b, _, h, w = like.shape
    ys = torch.linspace(-1.0, 1.0, h, device=like.device, dtype=like.dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=like.device, dtype=like.dtype)
    grid_y = ys[:, None].expand(h, w)
    grid_x = xs[None, :].expand(h, w)
    return torch.stack([grid_x, grid_y])[None].expand(b, -1, -1, -1)


class CRIS(TextSegmentationModel):
    """Text-modulated neck → pixel-word transformer decoder → text-to-pixel contrastive scores."""

    size_divisor = 32
    train_outputs = ("logits", "t2p")

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        text_dim: int = 384,
        encoder: str = "resnet",
        pretrained: bool = False,
        encoder_kwargs: dict[str, Any] | None = None,
        dim: int = 128,
        heads: int = 4,
        layers: int = 3,
        mlp_ratio: float = 2.0,
        proj_dim: int = 64,
        norm: str = "batch",
    ) -> None:
        if out_channels != 1:
            raise ValueError("cris scores one referred region per text (out_channels=1)")
        encoder_kwargs = dict(encoder_kwargs or {})
        super().__init__(
            in_channels, out_channels, text_dim=int(text_dim), encoder=encoder, pretrained=bool(pretrained),
            encoder_kwargs=encoder_kwargs, dim=int(dim), heads=int(heads), layers=int(layers),
            mlp_ratio=float(mlp_ratio), proj_dim=int(proj_dim), norm=norm,
        )  # fmt: skip
        if layers < 1:
            raise ValueError(f"cris needs at least one decoder layer, got layers={layers}")
        self.encoder = build_encoder(encoder, in_channels, pretrained=pretrained, **encoder_kwargs)
        enc = list(self.encoder.out_channels)
        self.text = TextContext(text_dim, dim)
        # neck: text-modulated top level, fused top-down to stride 16, plus coordinates
        self.top = ConvNormAct(enc[4], dim, 1, norm=norm)
        self.mid = ConvNormAct(enc[3] + dim, dim, 3, norm=norm)
        self.low = ConvNormAct(enc[2] + dim, dim, 3, norm=norm)
        self.coord = ConvNormAct(dim + 2, dim, 1, norm=norm)
        # vision-language decoder
        self.position = ConvPosition(dim)
        self.decoder = nn.ModuleList(VisionTextBlock(dim, heads, mlp_ratio) for _ in range(layers))
        self.decoder_norm = nn.LayerNorm(dim)
        # projector to stride 4 and the sentence → kernel map
        self.up1 = ConvNormAct(dim, dim // 2, 3, norm=norm)
        self.up2 = ConvNormAct(dim // 2 + enc[1], proj_dim, 3, norm=norm)
        self.pixel = nn.Conv2d(proj_dim, proj_dim, 3, padding=1)
        self.kernel = nn.Linear(dim, proj_dim + 1)
        self.scale = 1.0 / math.sqrt(proj_dim)

    def _forward(self, x: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor) -> dict[str, Any]:
        f = self.encoder(x)
        words, key_mask, sentence = self.text(text_tokens, text_mask)
        v5 = self.top(f[4]) * sentence[:, :, None, None]
        v4 = self.mid(torch.cat([f[3], resize_to(v5, f[3])], dim=1))
        v3 = self.low(torch.cat([F.avg_pool2d(f[2], 2), v4], dim=1))  # stride 8 → 16 (input padded to 32)
        grid = self.position(self.coord(torch.cat([v3, coordinates(v3)], dim=1)))
        tokens = grid_to_tokens(grid)
        for block in self.decoder:
            tokens = block(tokens, words, key_mask)
        grid = tokens_to_grid(self.decoder_norm(tokens), f[3])
        p = self.up1(F.interpolate(grid, scale_factor=2.0, mode="bilinear", align_corners=False))
        p = self.up2(torch.cat([resize_to(p, f[1]), f[1]], dim=1))
        p = self.pixel(p)
        kernel = self.kernel(sentence)
        weight, bias = kernel[:, :-1], kernel[:, -1]
        t2p = (p * weight[:, :, None, None]).sum(dim=1, keepdim=True) * self.scale + bias[:, None, None, None]
        return {"logits": resize_to(t2p, x), "t2p": t2p}

    def forward_train(self, x: torch.Tensor, text_tokens=None, text_mask=None) -> dict[str, Any]:  # type: ignore[override]
        text_tokens, text_mask = self._default_text(x, text_tokens, text_mask)
        xp, (h, w) = self._pad(x)
        out = dict(self._forward(xp, text_tokens, text_mask))
        out["logits"] = self._to_input_frame(out["logits"], xp, h, w)
        if xp.shape[-2:] != x.shape[-2:]:  # the stride-4 scores must cover the input's field of view only
            out["t2p"] = self._to_input_frame(out["t2p"], xp, h, w)
        return out


MODELS.register(
    "cris",
    help="CRIS-style referring segmentation: text-modulated neck, pixel-word decoder, text-to-pixel contrast",
)(CRIS)
