"""``c2fvl``: coarse-to-fine segmentation by vision-language alignment (after C2FVL, Shan et al., ICASSP 2023).

C2FVL (built on the LViT code base) aligns text and image features at every decoder level:
each skip is multiplied channel-wise by the text vector, weighed by a vision-language alignment
block (VLAB, a PLAM variant), and every level's aligned map is decoded to a side output that is
supervised with the mask (coarse levels guide the fine ones).

This implementation makes the coarse-to-fine path explicit and keeps the alignment idea:

1. **Coarse stage: global image-text alignment.** The two deepest encoder maps are fused into a
   pixel embedding on the stride-16 grid; a transformer block lets the pixels attend to the text
   tokens; the coarse mask is the scaled cosine similarity of every pixel embedding with the
   projected sentence vector (one text-conditioned class embedding per output channel). During
   training a global alignment loss (``align_loss``, InfoNCE over the batch: the coarse-mask-
   pooled image embedding must pick out its own caption; identical captions count as positives)
   ties image and text embeddings together, and the coarse logits are a deep-supervision output.
2. **Fine stage.** A U-Net decoder whose skips are text-modulated (FiLM by the sentence vector,
   C2FVL's channel-wise text product) and gated by the coarse probability, which is also fed to
   every decoder block; the decoder's stride-2 output is refined **at full resolution** together
   with the input image (residual refinement of the upsampled decoder logits).

``forward(x, text_tokens, text_mask)`` as for ``lvit``. ``forward_train`` adds ``"aux"`` (coarse
logits at stride 16, decoder logits at stride 2) and ``"align_loss"`` (a scalar the text trainer
weighs with ``extra.text.align_weight``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from covseg.models.layers import ConvNormAct, DoubleConv, resize_to
from covseg.models.text_layers import (
    ConvPosition,
    FiLM,
    TextContext,
    VisionTextBlock,
    grid_to_tokens,
    tokens_to_grid,
)
from covseg.models.text_unet import EncoderTextModel
from covseg.registry import MODELS


class C2FVL(EncoderTextModel):
    """Coarse-to-fine text-guided segmentation: text-pixel alignment map → gated decoder → full-res refinement."""

    train_outputs = ("logits", "aux", "align_loss")
    num_aux = 2

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        text_dim: int = 384,
        encoder: str = "resnet",
        pretrained: bool = False,
        encoder_kwargs: dict[str, Any] | None = None,
        decoder_widths: Sequence[int] = (128, 64, 32, 16),
        align_dim: int = 128,
        heads: int = 4,
        fine_width: int = 8,
        temperature: float = 0.07,
        norm: str = "batch",
    ) -> None:
        enc, decoder_widths = self._setup(
            in_channels, out_channels, text_dim, encoder, pretrained, encoder_kwargs, decoder_widths, norm,
            align_dim=int(align_dim), heads=int(heads), fine_width=int(fine_width), temperature=float(temperature),
        )  # fmt: skip
        self.text = TextContext(text_dim, align_dim)
        # coarse stage
        self.visual = nn.Sequential(
            ConvNormAct(enc[3] + enc[4], align_dim, 1, norm=norm), nn.Conv2d(align_dim, align_dim, 1)
        )
        self.position = ConvPosition(align_dim)
        self.fuse = VisionTextBlock(align_dim, heads)
        self.pixel_proj = nn.Linear(align_dim, align_dim)
        self.class_proj = nn.Linear(align_dim, out_channels * align_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.logit_bias = nn.Parameter(torch.full((out_channels,), -2.0))
        self.align_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        # fine stage
        self.film = nn.ModuleList(FiLM(enc[i], align_dim) for i in range(4))
        prev = [enc[4], *decoder_widths[:3]]
        skips = [enc[3], enc[2], enc[1], enc[0]]
        self.ups = nn.ModuleList(
            DoubleConv(p + s + 1, d, norm) for p, s, d in zip(prev, skips, decoder_widths)
        )
        self.decoder_head = nn.Conv2d(decoder_widths[-1], out_channels, 1)
        self.squeeze = nn.Conv2d(decoder_widths[-1], 4, 1)
        self.fine = nn.Sequential(
            ConvNormAct(in_channels + 4 + out_channels, fine_width, 3, norm=norm),
            nn.Conv2d(fine_width, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.fine[1].weight)
        nn.init.zeros_(self.fine[1].bias)

    def _foreground(self, logits: torch.Tensor) -> torch.Tensor:
        """Foreground probability ``(B, 1, h, w)`` of coarse logits (sigmoid, or 1 − background)."""
        if self.out_channels == 1:
            return torch.sigmoid(logits)
        return 1.0 - torch.softmax(logits, dim=1)[:, :1]

    def _forward(self, x: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor) -> dict[str, Any]:
        f = self.encoder(x)
        text, key_mask, sentence = self.text(text_tokens, text_mask)
        b = x.shape[0]
        # ---- coarse: pixel embeddings on the stride-16 grid, aligned with the text
        grid = self.position(self.visual(torch.cat([f[3], resize_to(f[4], f[3])], dim=1)))
        tokens = self.fuse(grid_to_tokens(grid), text, key_mask)  # (B, N, A)
        pixels = F.normalize(self.pixel_proj(tokens), dim=-1)
        classes = F.normalize(
            self.class_proj(sentence).reshape(b, self.out_channels, -1), dim=-1
        )  # (B, K, A)
        sim = pixels @ classes.transpose(1, 2)  # (B, N, K) cosine
        coarse = sim * self.logit_scale.exp().clamp(max=100.0) + self.logit_bias
        coarse = tokens_to_grid(coarse, f[3])  # (B, K, h16, w16)
        fg = self._foreground(coarse)
        # ---- fine: text-modulated skips gated by the coarse mask, then full-resolution refinement
        y = f[4]
        for level, block in zip((3, 2, 1, 0), self.ups):
            skip = self.film[level](f[level], sentence)
            p = resize_to(fg, skip)
            skip = skip * (1.0 + p)
            y = block(torch.cat([resize_to(y, skip), skip, p], dim=1))
        decoder_logits = self.decoder_head(y)
        up_logits = resize_to(decoder_logits, x)
        fine_in = torch.cat([x, resize_to(self.squeeze(y), x), up_logits], dim=1)
        logits = up_logits + self.fine(fine_in)
        return {
            "logits": logits,
            "aux": [coarse, decoder_logits],
            "_tokens": tokens,
            "_fg": fg,
            "_sentence": sentence,
        }

    def forward_train(self, x: torch.Tensor, text_tokens=None, text_mask=None) -> dict[str, Any]:  # type: ignore[override]
        out = super().forward_train(x, text_tokens, text_mask)
        out["align_loss"] = self.alignment_loss(
            out.pop("_tokens"), out.pop("_fg"), out.pop("_sentence"), text_mask
        )
        return out

    def alignment_loss(
        self, tokens: torch.Tensor, fg: torch.Tensor, sentence: torch.Tensor, text_mask
    ) -> torch.Tensor:
        """Global image-text InfoNCE: coarse-mask-pooled image embedding ↔ sentence embedding.

        Captions with (near) identical sentence vectors are all positives of each other, which
        matters for template captions; cases without text take no part.
        """
        b = tokens.shape[0]
        if b < 2:
            return tokens.sum() * 0.0
        weights = torch.softmax(
            fg.flatten(2).squeeze(1) * 10.0, dim=-1
        )  # (B, N), foreground-weighted pooling
        image = F.normalize((weights[..., None] * self.pixel_proj(tokens)).sum(1), dim=-1)
        classes = self.class_proj(sentence).reshape(b, self.out_channels, -1)
        text = F.normalize(classes[:, 0] if self.out_channels == 1 else classes[:, 1:].mean(1), dim=-1)
        logits = image @ text.t() * self.align_scale.exp().clamp(max=100.0)
        with torch.no_grad():
            s = F.normalize(sentence, dim=-1)
            same = ((s @ s.t()) > 0.999).float()
            has_text = (
                (text_mask.sum(1) > 0).float()
                if text_mask is not None
                else torch.ones(b, device=tokens.device)
            )
            valid = has_text[:, None] * has_text[None, :]
            targets = same * valid
            rows = targets.sum(1) > 0
        if not bool(rows.any()):
            return tokens.sum() * 0.0
        logits = logits.masked_fill(valid == 0, -1e4)
        log_prob = logits.log_softmax(dim=1)
        loss = -(targets * log_prob).sum(1) / targets.sum(1).clamp_min(1.0)
        return loss[rows].mean()


MODELS.register(
    "c2fvl",
    help="Coarse-to-fine text-guided segmentation (text-pixel alignment map, gated decoder, full-res refinement)",
)(C2FVL)
