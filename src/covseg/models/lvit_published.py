"""``lvit_published``: LViT as its authors built it, so their released checkpoints load key for key.

LViT (Li et al., IEEE TMI 2023; github HUANGLIZI/LViT, ``nets/LViT.py``, ``nets/Vit.py``,
``nets/pixlevel.py``) is a U-Net (base width 64) with a ViT branch. The modules and parameters
below carry the authors' names and shapes (``inc``, ``down1..4``, ``downVit..downVit3``,
``upVit..upVit3``, ``reconstruct1..4``, ``up1..4`` with their pixel-level attention ``pixModule``,
``text_module1..4``, ``outc``), including the ones their forward never runs (``pix_module1..4``,
each ViT's ``head``, ``norm`` and unused ``CTBN*``), because their ``state_dict`` holds them. The
covseg re-design of the idea is ``lvit`` (:mod:`covseg.models.lvit`); this one is for their weights.

What the published network fixes, and what covseg adds around it:

- Input 224×224 only (learned position embeddings of 14×14 patches; ``CTBN3`` maps 10 text
  tokens to the 196 patches), 3 channels in [0, 1]. The authors read images with OpenCV (BGR);
  covseg's are RGB, so ``bgr=True`` reverses the channels first (a no-op on grey X-rays).
- Text: exactly 10 token features of 768-d BERT-base (their loader: ``bert-embedding``'s
  uncased BERT-base, [CLS]/[SEP] left out, the first 10 tokens). covseg's text encoder gives
  the [CLS] token first, so the first ``skip_tokens`` are dropped; missing tokens (a caption
  shorter than 10 tokens, which the authors' code cannot run) are zeros. An image without text
  is refused: the published network has no image-only mode.
- The authors end in a sigmoid; ``forward`` returns the logits before it (covseg's contract).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from covseg.errors import CovsegError
from covseg.models.text_layers import TextSegmentationModel
from covseg.registry import MODELS

IMAGE_SIZE = 224
TEXT_TOKENS = 10


class ConvBatchNorm(nn.Module):
    """3×3 convolution, batch norm, ReLU (``conv``, ``norm``, ``activation``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(out_channels)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv(x)))


def two_convs(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(ConvBatchNorm(in_channels, out_channels), ConvBatchNorm(out_channels, out_channels))


class DownBlock(nn.Module):
    """2×2 max-pool, then two conv blocks (``nConvs``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.maxpool = nn.MaxPool2d(2)
        self.nConvs = two_convs(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nConvs(self.maxpool(x))


class PixLevelModule(nn.Module):
    """LViT's pixel-level attention: an MLP over each pixel's (mean, max, mean + max) channel
    responses weighs the feature map. ``conv_sig`` is built but never run, as in their code."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_avg = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.relu_avg = nn.ReLU()
        self.conv_max = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.relu_max = nn.ReLU()
        self.bottleneck = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 1))
        self.conv_sig = nn.Sequential(nn.Conv2d(channels, channels, kernel_size=1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.relu_avg(self.conv_avg(x)).mean(dim=1, keepdim=True)
        peak = self.relu_max(self.conv_max(x)).amax(dim=1, keepdim=True)
        evidence = torch.cat([mean, peak, mean + peak], dim=1)
        weight = self.bottleneck(evidence.transpose(1, 3)).transpose(1, 3)
        return weight * x


class UpblockAttention(nn.Module):
    """Nearest ×2 upsampling, the skip weighed by ``pixModule``, concatenated, two conv blocks."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2)
        self.pixModule = PixLevelModule(in_channels // 2)
        self.nConvs = two_convs(in_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.nConvs(torch.cat([self.pixModule(skip), self.up(x)], dim=1))


class Reconstruct(nn.Module):
    """Tokens ``(B, N, C)`` → a √N×√N map, nearest upsampling by ``scale``, 1×1 conv, BN, ReLU."""

    def __init__(self, channels: int, scale: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.norm = nn.BatchNorm2d(channels)
        self.activation = nn.ReLU()
        self.upsample = nn.Upsample(scale_factor=scale)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, c = tokens.shape
        side = math.isqrt(n)
        grid = tokens.transpose(1, 2).reshape(b, c, side, side)
        return self.activation(self.norm(self.conv(self.upsample(grid))))


class Embeddings(nn.Module):
    """Patch embedding (a strided conv keeping the width) plus learned position embeddings."""

    def __init__(self, patch_size: int, img_size: int, channels: int) -> None:
        super().__init__()
        self.patch_embeddings = nn.Conv2d(channels, channels, kernel_size=patch_size, stride=patch_size)
        self.position_embeddings = nn.Parameter(torch.zeros(1, (img_size // patch_size) ** 2, channels))
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.patch_embeddings(x).flatten(2).transpose(1, 2) + self.position_embeddings)


class MLP(nn.Module):
    """``fc1`` → GELU → ``fc2`` → GELU (LViT applies GELU after both layers)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act_layer = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.act_layer(self.fc1(x)))
        return self.dropout(self.act_layer(self.fc2(x)))


class Attention(nn.Module):
    """Multi-head self-attention with one ``qkv`` projection and ``proj``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b, n, c)))


class Block(nn.Module):
    """Pre-norm transformer block (``norm1``, ``attn``, ``norm2``, ``mlp``; MLP ratio 4)."""

    def __init__(self, dim: int, heads: int = 8) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, dim * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ConvTransBN(nn.Module):
    """1-D convolution (kernel 3) over a token sequence's channel axis, BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm1d(out_channels)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv(x)))


class VisionTransformer(nn.Module):
    """One level of LViT's ViT branch (one block). Down: embed the level's map (the first level
    adds the text tokens, mapped 10 → 196 by ``CTBN3``), attend, halve the width (``CTBN``) and
    concatenate the previous level's tokens. Up: attend, add the deeper level's tokens (``CTBN2``)."""

    def __init__(self, img_size: int, channels: int, patch_size: int) -> None:
        super().__init__()
        self.dim = channels
        self.embeddings = Embeddings(patch_size, img_size, channels)
        self.norm = nn.LayerNorm(channels)
        self.Encoder_blocks = nn.Sequential(Block(channels))
        self.head = nn.Linear(channels, 1)
        self.CTBN = ConvTransBN(channels, channels // 2)
        self.CTBN2 = ConvTransBN(channels * 2, channels)
        self.CTBN3 = ConvTransBN(TEXT_TOKENS, (IMAGE_SIZE // 16) ** 2)

    def down(self, x: torch.Tensor, previous: torch.Tensor | None, text: torch.Tensor) -> torch.Tensor:
        tokens = self.embeddings(x)
        if previous is None:
            return self.Encoder_blocks(tokens + self.CTBN3(text))
        tokens = self.CTBN(self.Encoder_blocks(tokens).transpose(1, 2)).transpose(1, 2)
        return torch.cat([tokens, previous], dim=2)

    def up(self, tokens: torch.Tensor, deeper: torch.Tensor | None) -> torch.Tensor:
        tokens = self.Encoder_blocks(tokens)
        if deeper is None:
            return tokens
        return tokens + self.CTBN2(deeper.transpose(1, 2)).transpose(1, 2)


def add_lvit_trunk(model: nn.Module, in_channels: int, out_channels: int, up_block: type[nn.Module]) -> int:
    """LViT's image trunk under the authors' names, registered in their order (C2FVL reuses it with its
    own up blocks): ``inc``, the ViT branches ``downVit*`` / ``upVit*``, ``down1..4``, ``up1..4``, ``outc``.
    Returns the base width."""
    c = 64
    model.inc = ConvBatchNorm(in_channels, c)
    levels = [(IMAGE_SIZE >> i, c << i, 16 >> i) for i in range(4)]  # (grid size, width, patch size)
    for name in ("downVit", "upVit"):
        for i, (size, width, patch) in enumerate(levels):
            setattr(model, name + (str(i) if i else ""), VisionTransformer(size, width, patch))
    for i in range(1, 5):
        setattr(model, f"down{i}", DownBlock(c << (i - 1), c << min(i, 3)))
        setattr(model, f"up{i}", up_block(c << i, c << max(i - 2, 0)))
    model.outc = nn.Conv2d(c, out_channels, kernel_size=1)
    return c


class LViTPublished(TextSegmentationModel):
    """LViT (Li et al., TMI 2023) with the authors' module names: their checkpoints load as saved."""

    size_divisor = 32
    fixed_input_size = True  # position embeddings of a 224² grid

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        text_dim: int = 768,
        skip_tokens: int = 1,
        bgr: bool = True,
    ) -> None:
        super().__init__(
            in_channels, out_channels, text_dim=int(text_dim), skip_tokens=int(skip_tokens), bgr=bool(bgr)
        )
        c = add_lvit_trunk(self, in_channels, out_channels, UpblockAttention)
        for i in range(4):
            setattr(self, f"reconstruct{i + 1}", Reconstruct(c << i, 16 >> i))
            setattr(self, f"pix_module{i + 1}", PixLevelModule(c << i))
        widths = [c, 2 * c, 4 * c, 8 * c, int(text_dim)]
        for i in range(1, 5):
            setattr(self, f"text_module{i}", nn.Conv1d(widths[i], widths[i - 1], kernel_size=3, padding=1))

    def text_input_tokens(self, text_tokens: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """The 10 token features LViT reads: after the first ``skip_tokens``, padding zeroed, zeros appended."""
        if text_tokens.shape[-1] != self.text_dim:
            raise CovsegError(
                f"LViT (published) reads {self.text_dim}-d token features (BERT-base), got {text_tokens.shape[-1]}-d: "
                "the run's text encoder must be a local BERT-base folder"
            )
        if not torch.jit.is_tracing() and bool((text_mask.sum(dim=1) == 0).any()):
            raise CovsegError("LViT (published) reads a caption with every image; an image came without text")
        skip = int(self.init_args["skip_tokens"])
        tokens = (text_tokens * text_mask[..., None])[:, skip : skip + TEXT_TOKENS]
        missing = TEXT_TOKENS - tokens.shape[1]
        if missing:
            tokens = torch.cat([tokens, tokens.new_zeros(tokens.shape[0], missing, tokens.shape[2])], dim=1)
        return tokens

    def _forward(self, x: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor) -> dict[str, Any]:
        if tuple(x.shape[-2:]) != (IMAGE_SIZE, IMAGE_SIZE):
            raise CovsegError(
                f"LViT (published) takes {IMAGE_SIZE}×{IMAGE_SIZE} inputs, got {list(x.shape[-2:])}"
            )
        if self.init_args["bgr"]:
            x = x.flip(1)
        text = [self.text_input_tokens(text_tokens, text_mask)]  # text[k]: the width of level 4 - k
        for conv in (self.text_module4, self.text_module3, self.text_module2, self.text_module1):
            text.append(conv(text[-1].transpose(1, 2)).transpose(1, 2))
        text = text[:0:-1]  # text[i]: level i + 1 (64, 128, 256, 512 wide)
        down = [self.inc(x)]
        for block in (self.down1, self.down2, self.down3, self.down4):
            down.append(block(down[-1]))
        vits_down = (self.downVit, self.downVit1, self.downVit2, self.downVit3)
        tokens: list[torch.Tensor] = []
        for i, vit in enumerate(vits_down):
            tokens.append(vit.down(down[i], tokens[-1] if tokens else None, text[i]))
        vits_up = (self.upVit, self.upVit1, self.upVit2, self.upVit3)
        refined: list[torch.Tensor | None] = [None] * 4
        for i in (3, 2, 1, 0):
            refined[i] = vits_up[i].up(tokens[i], refined[i + 1] if i < 3 else None)
        recon = (self.reconstruct1, self.reconstruct2, self.reconstruct3, self.reconstruct4)
        skips = [recon[i](refined[i]) + down[i] for i in range(4)]
        y = down[4]
        for block, skip in zip((self.up4, self.up3, self.up2, self.up1), reversed(skips)):
            y = block(y, skip)
        return {"logits": self.outc(y)}


MODELS.register(
    "lvit_published",
    help="LViT as published (HUANGLIZI/LViT: 224², 10 BERT-base tokens): loads the authors' checkpoints",
)(LViTPublished)
