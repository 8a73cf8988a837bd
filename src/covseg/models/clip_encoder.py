"""``clip-vision``: the vision tower of a local CLIP-style checkpoint as a five-level covseg encoder.

CRIS builds on CLIP's image encoder. Nothing can be downloaded here, but a user who has a CLIP
checkpoint folder (``save_pretrained`` of ``openai/clip-vit-base-patch16``, say: ``config.json``,
``model.safetensors``) can give it as ``model.params.encoder: clip-vision`` with
``encoder_kwargs: {pretrained_dir: /models/clip-vit-base-patch16}``. The ViT's patch tokens
(stride = patch size) are turned into the five feature maps at strides 2..32 that covseg's
decoders take, as ViTDet's simple feature pyramid does: the last hidden state is resized to each
stride and projected by a 1×1 convolution. The ViT stays frozen (as CLIP stays frozen in
CLIPSeg); its position embeddings are interpolated for any input size. The frozen weights are
part of the run's checkpoints (a ViT-B/16 adds about 350 MB to each).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from covseg.errors import CovsegError
from covseg.models.encoders import Encoder
from covseg.registry import ENCODERS
from covseg.utils.paths import expand

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPVisionEncoder(Encoder):
    """Frozen CLIP ViT from a local folder → features at strides 2, 4, 8, 16, 32 (trainable 1×1 projections)."""

    def __init__(self, in_channels: int = 3, pretrained_dir: str | None = None, widths: Sequence[int] = (32, 48, 96, 192, 256)) -> None:
        super().__init__()
        if not pretrained_dir:
            raise CovsegError("the clip-vision encoder needs encoder_kwargs.pretrained_dir: a local CLIP checkpoint folder")
        path = expand(str(pretrained_dir))
        if not (path / "config.json").is_file():
            raise CovsegError("CLIP folder not found or has no config.json (nothing is downloaded)", path)
        from transformers import CLIPVisionModel

        from covseg.utils.hf import load_hf_pretrained

        self.vit = load_hf_pretrained(CLIPVisionModel, path)
        self.vit.requires_grad_(False)
        self.vit.eval()
        hidden = int(self.vit.config.hidden_size)
        self.patch = int(self.vit.config.patch_size)
        self.in_channels = in_channels
        self.out_channels = tuple(int(w) for w in widths)
        if len(self.out_channels) != 5:
            raise ValueError(f"clip-vision widths needs 5 entries (strides 2..32), got {self.out_channels}")
        self.proj = nn.ModuleList(nn.Sequential(nn.Conv2d(hidden, w, 1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)) for w in self.out_channels)
        if in_channels == 3:
            self.input_mean, self.input_std = CLIP_MEAN, CLIP_STD
        else:
            self.input_mean, self.input_std = (sum(CLIP_MEAN) / 3,) * in_channels, (sum(CLIP_STD) / 3,) * in_channels

    def train(self, mode: bool = True) -> CLIPVisionEncoder:
        super().train(mode)
        self.vit.eval()  # frozen: no dropout, whatever the model's mode
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        rgb = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]
        h, w = x.shape[-2:]
        with torch.no_grad():
            out = self.vit(pixel_values=rgb, interpolate_pos_encoding=True)
        tokens = out.last_hidden_state[:, 1:]  # drop the class token
        gh, gw = h // self.patch, w // self.patch
        grid = tokens.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)
        features = []
        for level, proj in enumerate(self.proj):
            stride = 2 ** (level + 1)
            size = (max(1, h // stride), max(1, w // stride))
            features.append(proj(F.interpolate(grid, size=size, mode="bilinear", align_corners=False)))
        return features


@ENCODERS.register("clip-vision")
def _clip_vision(in_channels: int, pretrained: bool = False, pretrained_dir: str | None = None, widths: Sequence[int] = (32, 48, 96, 192, 256)) -> CLIPVisionEncoder:
    """A local CLIP checkpoint's frozen vision tower (``pretrained_dir``); ``pretrained`` is implied."""
    return CLIPVisionEncoder(in_channels, pretrained_dir, widths)
