"""Blocks shared by the text-guided models (``lvit``, ``c2fvl``).

Text reaches a model as two tensors, so the models trace and export like the image-only ones:
``text_tokens`` ``(B, L, D)`` (token features of the text encoder, zero-padded) and
``text_mask`` ``(B, L)`` (1 for real tokens). :class:`TextContext` projects them to the model
width and prepends a learned *null* token that every image attends to: a missing text (mask
all zero) is then just "the null token alone", never an empty softmax, and a model trained with
some text dropped learns a real image-only mode.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from covseg.models.base import SegmentationModel

NEG_INF = -1e4  # additive attention mask value (finite: stays exact in float16 and in ONNX)


class TextSegmentationModel(SegmentationModel):
    """A segmentation model conditioned on text features.

    ``forward(x, text_tokens=None, text_mask=None)`` returns logits at the input size;
    ``forward_train(x, text_tokens, text_mask)`` the loss dict. With no text given the model
    runs image-only (null token). ``text_input`` tells trainers and predictors what to feed:
    ``"features"`` (token features of a shared text encoder of width ``text_dim``) or
    ``"ids"`` (the model's own tokenizer; see ``clipseg``).
    """

    text_input: str = "features"

    @property
    def text_dim(self) -> int:
        return int(self.init_args["text_dim"])

    def _default_text(self, x: torch.Tensor, text_tokens, text_mask) -> tuple[torch.Tensor, torch.Tensor]:
        if text_tokens is None:
            text_tokens = x.new_zeros(x.shape[0], 1, self.text_dim)
            text_mask = x.new_zeros(x.shape[0], 1)
        elif text_mask is None:
            text_mask = text_tokens.new_ones(text_tokens.shape[:2])
        return text_tokens.to(x.dtype), text_mask.to(x.dtype)

    def _forward(self, x: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor) -> dict[str, Any]:  # type: ignore[override]
        raise NotImplementedError

    def forward_train(self, x: torch.Tensor, text_tokens=None, text_mask=None) -> dict[str, Any]:  # type: ignore[override]
        text_tokens, text_mask = self._default_text(x, text_tokens, text_mask)
        xp, (h, w) = self._pad(x)
        out = dict(self._forward(xp, text_tokens, text_mask))
        out["logits"] = self._to_input_frame(out["logits"], xp, h, w)
        if xp.shape[-2:] != x.shape[-2:] and "aux" in out:
            out["aux"] = [self._to_input_frame(a, xp, h, w) for a in out["aux"]]
        return out

    def forward(self, x: torch.Tensor, text_tokens=None, text_mask=None) -> torch.Tensor:  # type: ignore[override]
        text_tokens, text_mask = self._default_text(x, text_tokens, text_mask)
        xp, (h, w) = self._pad(x)
        return self._to_input_frame(self._forward(xp, text_tokens, text_mask)["logits"], xp, h, w)


class TextContext(nn.Module):
    """Token features → model-width tokens (null token first) + key mask + sentence vector.

    The sentence vector is the mask-mean of the *input* features (sentence-transformers'
    pooling), projected by its own MLP; with no text it is the learned null vector.
    """

    def __init__(self, text_dim: int, dim: int) -> None:
        super().__init__()
        self.tokens = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, dim))
        self.sentence = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.null_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.null_sentence = nn.Parameter(torch.randn(1, dim) * 0.02)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = tokens.shape[0]
        seq = torch.cat([self.null_token.expand(b, -1, -1), self.tokens(tokens)], dim=1)
        key_mask = torch.cat([mask.new_ones(b, 1), mask], dim=1)
        count = mask.sum(1, keepdim=True)
        mean = (tokens * mask[..., None]).sum(1) / count.clamp_min(1.0)
        has_text = (count > 0).to(tokens.dtype)
        sentence = has_text * self.sentence(mean) + (1.0 - has_text) * self.null_sentence
        return seq, key_mask, sentence


class CrossAttention(nn.Module):
    """Multi-head attention of queries ``(B, N, C)`` over keys/values ``(B, L, C)`` with a key mask."""

    def __init__(self, dim: int, heads: int = 4, kv_dim: int | None = None) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        kv_dim = kv_dim or dim
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        h, d = self.heads, c // self.heads
        q = self.q(x).reshape(b, n, h, d).transpose(1, 2)
        k, v = self.kv(context).reshape(b, context.shape[1], 2, h, d).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d))
        if key_mask is not None:
            attn = attn + (1.0 - key_mask)[:, None, None, :] * NEG_INF
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class VisionTextBlock(nn.Module):
    """Pre-norm transformer block on image tokens: self-attention, cross-attention to text, MLP."""

    def __init__(self, dim: int, heads: int = 4, mlp_ratio: float = 2.0, self_attention: bool = True) -> None:
        super().__init__()
        self.self_attention = self_attention
        if self_attention:
            self.norm1 = nn.LayerNorm(dim)
            self.attn = CrossAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.cross = CrossAttention(dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        if self.self_attention:
            y = self.norm1(x)
            x = x + self.attn(y, y)
        x = x + self.cross(self.norm2(x), text, text_mask)
        return x + self.mlp(self.norm3(x))


class ConvPosition(nn.Module):
    """Conditional position encoding (a depthwise 3×3 conv on the token grid): any grid size works."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return grid + self.conv(grid)


def grid_to_tokens(grid: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, H·W, C)``."""
    return grid.flatten(2).transpose(1, 2)


def tokens_to_grid(tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B, H·W, C)`` → ``(B, C, H, W)`` with ``H, W`` taken from ``like`` (export-friendly)."""
    b, _, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, like.shape[-2], like.shape[-1])


class TextPixelAttention(nn.Module):
    """Pixel-level attention (LViT's PLAM) with a text map added to its evidence.

    PLAM weighs every pixel of a skip feature by an MLP over its channel-mean and channel-max
    responses. Here the third input is the agreement of the pixel's feature with the sentence
    vector (a scaled dot product), so the gate says "this pixel matters *for this text*".
    The gate is ``2·sigmoid(·)`` (1 at initialisation), multiplied onto the feature.
    """

    def __init__(self, channels: int, text_dim: int, key_dim: int = 32) -> None:
        super().__init__()
        self.conv_avg = nn.Conv2d(channels, channels, 1, bias=False)
        self.conv_max = nn.Conv2d(channels, channels, 1, bias=False)
        self.query = nn.Conv2d(channels, key_dim, 1)
        self.key = nn.Linear(text_dim, key_dim)
        self.key_dim = key_dim
        self.bottleneck = nn.Sequential(nn.Conv2d(3, 6, 1), nn.ReLU(inplace=True), nn.Conv2d(6, 1, 1))
        nn.init.zeros_(self.bottleneck[2].weight)
        nn.init.zeros_(self.bottleneck[2].bias)

    def forward(self, x: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        avg = F.relu(self.conv_avg(x)).mean(dim=1, keepdim=True)
        mx = F.relu(self.conv_max(x)).amax(dim=1, keepdim=True)
        k = self.key(sentence)[:, :, None, None]
        txt = (self.query(x) * k).sum(dim=1, keepdim=True) * (1.0 / math.sqrt(self.key_dim))
        gate = 2.0 * torch.sigmoid(self.bottleneck(torch.cat([avg, mx, txt], dim=1)))
        return x * gate


class FiLM(nn.Module):
    """Feature-wise modulation of a map by the sentence vector: ``x · (1 + γ(s)) + β(s)``."""

    def __init__(self, channels: int, text_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(text_dim, 2 * channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.linear(sentence)[:, :, None, None].chunk(2, dim=1)
        return x * (1.0 + gamma) + beta
