"""``c2fvl_published``: C2FVL as its authors built it, so their checkpoints load key for key.

C2FVL (Shan et al., ICASSP 2023; github HUANGLIZI/C2FVL, ``nets/C2FVL.py``, ``nets/VLAB.py``,
``nets/Vit.py``) is LViT's U-Net and ViT branch without text tokens: its "text" is 8 numbers per
image (their ``read_attr``: bilateral, number of lesions, six lung zones), and each of the four
skips (ViT tokens reconstructed and added, as in LViT) is multiplied channel-wise by those numbers
tiled over the channels (channel ``c`` by attribute ``c mod 8``; their ``Process_text`` never runs
its convolution). The decoder's skips pass a vision-language alignment block (``vlab``, VLAB)
and every level's aligned skip gives a side output (``outc4``, ``outc3``, ``outc2``, ``outc``).

The modules and parameters below carry the authors' names and shapes, including the ones their
forward never runs (``upVit..upVit3``, ``vlab1..4``, ``text_module1..4``, ``reconstruct_text1..4``,
``process_text*.conv/norm``, each ViT's ``head``, ``norm``, ``CTBN3``), because their
``state_dict`` holds them. The ViT levels, reconstruction and convolution blocks are LViT's own
(:mod:`covseg.models.lvit_published`). Input: 224×224, 3 channels in [0, 1], BGR in their loader
(``bgr=True`` reverses covseg's RGB). ``forward(x, attributes)`` returns the logits before their
sigmoid; ``attributes`` is ``(B, 8)`` (``(B, 1, 8)``, their loader's shape, is accepted too).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from covseg.errors import CovsegError
from covseg.models.base import SegmentationModel
from covseg.models.lvit_published import (
    IMAGE_SIZE,
    Reconstruct,
    add_lvit_trunk,
    two_convs,
)
from covseg.registry import MODELS

NUM_ATTRIBUTES = 8


class VLAlignBlock(nn.Module):
    """C2FVL's vision-language alignment block: per-pixel channel mean and max of two 1×1 conv +
    linear branches, summed, passed through a 1 → 4 → 1 MLP, weigh the map (``conv_sig`` unused)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_avg = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.relu_avg = nn.ReLU()
        self.linear_avg = nn.Linear(channels, channels)
        self.conv_max = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.relu_max = nn.ReLU()
        self.linear_max = nn.Linear(channels, channels)
        self.bottleneck = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1))
        self.conv_sig = nn.Sequential(nn.Conv2d(channels, channels, kernel_size=1), nn.Sigmoid())

    @staticmethod
    def _channel_linear(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return linear(x.transpose(1, 3)).transpose(1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.relu_avg(self._channel_linear(self.linear_avg, self.conv_avg(x))).mean(
            dim=1, keepdim=True
        )
        peak = self.relu_max(self._channel_linear(self.linear_max, self.conv_max(x))).amax(
            dim=1, keepdim=True
        )
        weight = self.bottleneck((mean + peak).transpose(1, 3)).transpose(1, 3)
        return weight * x


class UpblockAlign(nn.Module):
    """Nearest ×2 upsampling, the skip aligned by ``vlab``, concatenated, two conv blocks; also
    returns the aligned skip (the level's side output reads it)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2)
        self.vlab = VLAlignBlock(in_channels // 2)
        self.nConvs = two_convs(in_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        aligned = self.vlab(skip)
        return self.nConvs(torch.cat([aligned, self.up(x)], dim=1)), aligned


class ConvNormUnused(nn.Module):
    """A convolution and batch norm the authors build but never run (``Process_text``, ``Reconstruct_text``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.norm = nn.BatchNorm2d(out_channels)


def tile_attributes(attributes: torch.Tensor, channels: int) -> torch.Tensor:
    """``(B, 8)`` → ``(B, channels, 1, 1)``, channel ``c`` holding attribute ``c mod 8`` (their ``repeat``)."""
    return attributes.repeat(1, channels // attributes.shape[1])[:, :, None, None]


class C2FVLPublished(SegmentationModel):
    """C2FVL (Shan et al., ICASSP 2023) with the authors' module names: their checkpoints load as saved."""

    text_input = "attributes"
    size_divisor = 32

    def __init__(self, in_channels: int = 3, out_channels: int = 1, bgr: bool = True) -> None:
        super().__init__(in_channels, out_channels, bgr=bool(bgr))
        c = add_lvit_trunk(self, in_channels, out_channels, UpblockAlign)
        text_widths = [1, c, 2 * c, 4 * c, 8 * c]
        for i in range(4):
            setattr(self, f"reconstruct{i + 1}", Reconstruct(c << i, 16 >> i))
            setattr(self, f"vlab{i + 1}", VLAlignBlock(c << i))
            setattr(
                self,
                f"text_module{i + 1}",
                nn.Conv1d(text_widths[i], text_widths[i + 1], kernel_size=3, padding=1),
            )
            setattr(self, f"reconstruct_text{i + 1}", ConvNormUnused(c << i, c << i))
            setattr(self, f"process_text{i + 1}", ConvNormUnused(NUM_ATTRIBUTES, c << i))
        for i in (4, 3, 2):
            setattr(self, f"outc{i}", nn.Conv2d(c << (i - 1), out_channels, kernel_size=1))

    def _check(self, x: torch.Tensor, attributes: torch.Tensor | None) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (IMAGE_SIZE, IMAGE_SIZE):
            raise CovsegError(
                f"C2FVL (published) takes {IMAGE_SIZE}×{IMAGE_SIZE} inputs, got {list(x.shape[-2:])}"
            )
        if attributes is None:
            raise CovsegError(
                "C2FVL (published) reads 8 attributes (a QaTa-style caption) with every image; none came"
            )
        attributes = attributes.reshape(attributes.shape[0], -1).to(x.dtype)
        if attributes.shape != (x.shape[0], NUM_ATTRIBUTES):
            raise CovsegError(
                f"C2FVL (published) reads {NUM_ATTRIBUTES} attributes per image, got shape {list(attributes.shape)}"
            )
        return attributes

    def forward_all(self, x: torch.Tensor, attributes: torch.Tensor | None) -> dict[str, Any]:
        """``logits`` and ``side`` (the four side-output logits of their forward, fine to coarse)."""
        attributes = self._check(x, attributes)
        if self.init_args["bgr"]:
            x = x.flip(1)
        down = [self.inc(x)]
        for block in (self.down1, self.down2, self.down3, self.down4):
            down.append(block(down[-1]))
        tokens = [
            self.downVit.Encoder_blocks(self.downVit.embeddings(down[0]))
        ]  # no text tokens, unlike LViT
        for i, vit in enumerate((self.downVit1, self.downVit2, self.downVit3), start=1):
            tokens.append(vit.down(down[i], tokens[-1], None))
        recon = (self.reconstruct1, self.reconstruct2, self.reconstruct3, self.reconstruct4)
        skips = [
            (recon[i](tokens[i]) + down[i]) * tile_attributes(attributes, down[i].shape[1]) for i in range(4)
        ]
        y, aligned = down[4], []
        for block, skip in zip((self.up4, self.up3, self.up2, self.up1), reversed(skips)):
            y, a = block(y, skip)
            aligned.append(a)
        side4, side3, side2, side1 = aligned
        side = [
            self.outc(side1),
            self.outc2(nn.functional.interpolate(side2, scale_factor=2.0, mode="nearest")),
            self.outc3(nn.functional.interpolate(side3, scale_factor=4.0, mode="nearest")),
            self.outc4(nn.functional.interpolate(side4, scale_factor=8.0, mode="nearest")),
        ]
        return {"logits": self.outc(y), "side": side}

    def _forward(self, x: torch.Tensor, attributes: torch.Tensor | None = None) -> dict[str, Any]:  # type: ignore[override]
        return {"logits": self.forward_all(x, attributes)["logits"]}

    def forward_train(self, x: torch.Tensor, attributes: torch.Tensor | None = None) -> dict[str, Any]:  # type: ignore[override]
        return self._forward(x, attributes)

    def forward(self, x: torch.Tensor, attributes: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        return self._forward(x, attributes)["logits"]


MODELS.register(
    "c2fvl_published",
    help="C2FVL as published (HUANGLIZI/C2FVL: 224², 8 caption attributes): loads the authors' checkpoints",
)(C2FVLPublished)
