"""``lvit``: a text-guided U-Net in the manner of LViT (Li et al., IEEE TMI 2023).

LViT pairs a CNN U-Net with a ViT branch. Every encoder level is patch-embedded to one token
grid (patch sizes 16, 8, 4, 2 on levels at strides 1..8 of a 224² input, so always 14×14),
the running token state is concatenated with each new level's tokens, and in LViT the text
embedding (BERT token features, reduced by 1-D convolutions) is added to the first level's
patch embeddings. An "up" ViT branch runs back over the levels; each level's tokens are
reconstructed to a feature map (upsample + 1×1 conv-BN-ReLU) and added to the CNN skip, and the
decoder weighs each skip with a pixel-level attention module (PLAM: an MLP over the
channel-mean and channel-max responses of every pixel).

This implementation keeps that structure and changes what a CPU budget and variable inputs
ask for:

- The CNN encoder is a registered covseg encoder (``efficientnet-lite0`` with ImageNet weights,
  or ``resnet``), features at strides 2..32; the ViT grid is the stride-16 grid (patch sizes 8,
  4, 2, 1 on the stride-2..16 levels), so any input size divisible by 32 works, with a
  convolutional position encoding instead of a fixed-size learned one.
- Text enters by **cross-attention** in every ViT block, in the down (encoder) and the up
  (decoder) branch, instead of LViT's addition at level 1 through a fixed 10-token → 196-patch
  convolution (which ties the model to one caption length and one image size). A learned null
  token makes missing text well defined.
- PLAM's third evidence map is a text map (pixel feature · sentence vector), so the decoder's
  pixel-level attention is text-conditioned too (:class:`~covseg.models.text_layers.TextPixelAttention`).
- LViT's semi-supervised exponential pseudo-label iteration is not part of the model.

``forward(x, text_tokens, text_mask)``: ``x`` ``(B, C, H, W)``; ``text_tokens`` ``(B, L, text_dim)``
and ``text_mask`` ``(B, L)`` from :mod:`covseg.text.encoder` (None → image-only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from covseg.models.layers import ConvNormAct, DoubleConv, resize_to
from covseg.models.text_layers import (
    ConvPosition,
    TextContext,
    TextPixelAttention,
    VisionTextBlock,
    grid_to_tokens,
    tokens_to_grid,
)
from covseg.models.text_unet import EncoderTextModel
from covseg.registry import MODELS


class LViT(EncoderTextModel):
    """Text-guided U-Net (LViT-style): ViT branch with text cross-attention + text-aware PLAM skips."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        text_dim: int = 384,
        encoder: str = "resnet",
        pretrained: bool = False,
        encoder_kwargs: dict[str, Any] | None = None,
        decoder_widths: Sequence[int] = (128, 64, 32, 16),
        vit_dim: int = 128,
        vit_heads: int = 4,
        mlp_ratio: float = 2.0,
        norm: str = "batch",
    ) -> None:
        enc, decoder_widths = self._setup(
            in_channels, out_channels, text_dim, encoder, pretrained, encoder_kwargs, decoder_widths, norm,
            vit_dim=int(vit_dim), vit_heads=int(vit_heads), mlp_ratio=float(mlp_ratio),
        )  # fmt: skip
        self.text = TextContext(text_dim, vit_dim)
        # ViT branch on the stride-16 grid; level i (stride 2**(i+1)) uses patches of 2**(3-i)
        self.embed = nn.ModuleList(
            nn.Conv2d(enc[i], vit_dim, 2 ** (3 - i), stride=2 ** (3 - i)) for i in range(4)
        )
        self.position = ConvPosition(vit_dim)
        self.merge = nn.ModuleList(nn.Linear(2 * vit_dim, vit_dim) for _ in range(3))
        self.down_blocks = nn.ModuleList(VisionTextBlock(vit_dim, vit_heads, mlp_ratio) for _ in range(4))
        self.up_merge = nn.ModuleList(nn.Linear(vit_dim, vit_dim) for _ in range(3))
        self.up_blocks = nn.ModuleList(VisionTextBlock(vit_dim, vit_heads, mlp_ratio) for _ in range(4))
        self.reconstruct = nn.ModuleList(ConvNormAct(vit_dim, enc[i], 1, norm=norm) for i in range(4))
        self.plam = nn.ModuleList(TextPixelAttention(enc[i], vit_dim) for i in range(4))
        prev = [enc[4], *decoder_widths[:3]]
        skips = [enc[3], enc[2], enc[1], enc[0]]
        self.ups = nn.ModuleList(DoubleConv(p + s, d, norm) for p, s, d in zip(prev, skips, decoder_widths))
        self.head = nn.Conv2d(decoder_widths[-1], out_channels, 1)

    def _forward(self, x: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor) -> dict[str, Any]:
        f = self.encoder(x)
        text, key_mask, sentence = self.text(text_tokens, text_mask)
        grid_ref = f[3]
        # down ViT branch: LViT concatenates the running tokens with each new level's embedding
        states = []
        tokens = None
        for i in range(4):
            emb = self.embed[i](f[i])
            if tokens is None:
                tokens = grid_to_tokens(self.position(emb))
            else:
                tokens = self.merge[i - 1](torch.cat([tokens, grid_to_tokens(emb)], dim=-1))
            tokens = self.down_blocks[i](tokens, text, key_mask)
            states.append(tokens)
        # up ViT branch, deepest level first; each level's tokens go back to its CNN skip
        up = states[3]
        refined: list[torch.Tensor] = [up] * 4
        for i in (3, 2, 1, 0):
            if i < 3:
                up = states[i] + self.up_merge[i](up)
            up = self.up_blocks[i](up, text, key_mask)
            refined[i] = up
        skips = []
        for i in range(4):
            recon = self.reconstruct[i](tokens_to_grid(refined[i], grid_ref))
            skips.append(self.plam[i](f[i] + resize_to(recon, f[i]), sentence))
        y = f[4]
        for block, skip in zip(self.ups, reversed(skips)):
            y = block(torch.cat([resize_to(y, skip), skip], dim=1))
        return {"logits": resize_to(self.head(y), x)}


MODELS.register(
    "lvit", help="Text-guided U-Net (LViT-style ViT branch with text cross-attention, text-aware PLAM)"
)(LViT)
