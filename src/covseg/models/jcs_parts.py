"""The parts of JCS as published (Wu et al., TIP 2021), options of ``jcs`` (:mod:`covseg.models.jcs`).

Written from the paper and the authors' ``Models/joint_model.py`` (github yuhuan-wu/JCS), in covseg's
blocks, not copied:

- :class:`SqueezeExcitation`: channel weights from global average pooling (Hu et al. 2018);
- :class:`EnhancedFeatureModule` (EFM, the authors' ``GPD``): a 1×1 expansion to twice the channels,
  split into four groups, each a 3×3 convolution at dilation 1, 3, 6 or 9 (a grouped convolution with a
  different dilation per group), ReLU, squeeze-excitation over all groups, 1×1 back to the input width,
  3×3 conv. It widens the receptive field of the deepest features;
- :class:`AttentiveFeatureFusion` (AFF, the authors' ``FuseModule``): the lateral (encoder) and top-down
  (decoder) features concatenated and weighted by squeeze-excitation, a 3×3 conv, then concatenated with
  the top-down feature again and weighted once more, reduced 1×1 and a 3×3 conv;
- :class:`AFFDecoder`: the top-down decoder of AFF stages over the five encoder features, returning the
  decoded feature of every stride (32 → 2), which deep supervision reads at five scales;
- :class:`StageFusion`: per-stage fusion of a second (classification) backbone's features into the
  segmentation backbone's (concatenation, 3×3 conv-norm-ReLU back to the segmentation width).

The authors' extra sixth level (an EFM on a pooled stride-64 feature) is left out: at covseg's input
sizes (64–256 px) the stride-32 map is already 2–8 cells wide.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from covseg.models.layers import ConvNormAct, resize_to

#: EFM dilations of the paper (one per channel group)
EFM_DILATIONS: tuple[int, ...] = (1, 3, 6, 9)


class SqueezeExcitation(nn.Module):
    """Channel attention: ``x · σ(W₂ ReLU(W₁ mean(x)))`` with a ``reduction``-fold bottleneck."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * weights[:, :, None, None]


class EnhancedFeatureModule(nn.Module):
    """EFM: dilated grouped convolutions (dilations 1/3/6/9) with squeeze-excitation; same width out as in."""

    def __init__(self, channels: int, dilations: Sequence[int] = EFM_DILATIONS, norm: str = "none") -> None:
        super().__init__()
        self.dilations = tuple(int(d) for d in dilations)
        groups = len(self.dilations)
        expanded = 2 * channels
        if expanded % groups:
            raise ValueError(f"EFM: twice the {channels} channels must split into {groups} dilation groups")
        self.group_channels = expanded // groups
        self.expand = ConvNormAct(channels, expanded, 1, norm=norm)
        self.branches = nn.ModuleList(
            nn.Conv2d(self.group_channels, self.group_channels, 3, padding=d, dilation=d) for d in self.dilations
        )
        self.se = SqueezeExcitation(expanded)
        self.reduce = ConvNormAct(expanded, channels, 1, norm=norm)
        self.out = ConvNormAct(channels, channels, 3, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.split(self.expand(x), self.group_channels, dim=1)
        y = torch.relu(torch.cat([branch(g) for branch, g in zip(self.branches, groups)], dim=1))
        return self.out(self.reduce(self.se(y)))


class AttentiveFeatureFusion(nn.Module):
    """AFF: SE-weighted fusion of a lateral feature and a top-down feature (each ``channels // 2`` wide)."""

    def __init__(self, channels: int, norm: str = "none") -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"AFF needs an even decoder width, got {channels}")
        half = channels // 2
        self.se_pair = SqueezeExcitation(channels)
        self.conv_pair = ConvNormAct(channels, channels, 3, norm=norm)
        self.se_again = SqueezeExcitation(channels + half)
        self.reduce = ConvNormAct(channels + half, channels, 1, norm=norm)
        self.out = ConvNormAct(channels, channels, 3, norm=norm)

    def forward(self, lateral: torch.Tensor, top_down: torch.Tensor) -> torch.Tensor:
        x = self.conv_pair(self.se_pair(torch.cat([lateral, top_down], dim=1)))
        return self.out(self.reduce(self.se_again(torch.cat([x, top_down], dim=1))))


class AFFDecoder(nn.Module):
    """Top-down decoder of AFF stages: five encoder features (strides 2…32) in, five decoded features out.

    ``widths`` are the decoded widths at strides 32, 16, 8, 4, 2 (even). The returned list runs deep to
    shallow: ``[stride 32, 16, 8, 4, 2]``.
    """

    def __init__(self, encoder_channels: Sequence[int], widths: Sequence[int], norm: str = "none") -> None:
        super().__init__()
        enc = list(encoder_channels)[::-1]  # deep → shallow
        dec = [int(w) for w in widths]
        if len(enc) != 5 or len(dec) != 5:
            raise ValueError(f"AFF decoder needs 5 encoder features and 5 widths, got {len(enc)} and {len(dec)}")
        self.top = nn.Sequential(ConvNormAct(enc[0], dec[0], 1, norm=norm), ConvNormAct(dec[0], dec[0], 3, norm=norm))
        self.laterals = nn.ModuleList(ConvNormAct(c, d // 2, 1, norm=norm) for c, d in zip(enc[1:], dec[1:]))
        self.top_downs = nn.ModuleList(ConvNormAct(p, d // 2, 1, norm=norm) for p, d in pairwise(dec))
        self.fusions = nn.ModuleList(AttentiveFeatureFusion(d, norm) for d in dec[1:])

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        y = self.top(features[4])
        decoded = [y]
        for lateral, top_down, fuse, skip in zip(self.laterals, self.top_downs, self.fusions, reversed(features[:4])):
            y = fuse(lateral(skip), resize_to(top_down(y), skip))
            decoded.append(y)
        return decoded


class StageFusion(nn.Module):
    """Fuses a second backbone's five stage features into the first's: concat, 3×3 conv back to the first's width."""

    def __init__(self, channels: Sequence[int], other_channels: Sequence[int], norm: str = "batch") -> None:
        super().__init__()
        self.fuse = nn.ModuleList(ConvNormAct(c + o, c, 3, norm=norm) for c, o in zip(channels, other_channels))

    def forward(self, features: Sequence[torch.Tensor], others: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [fuse(torch.cat([f, resize_to(o, f)], dim=1)) for fuse, f, o in zip(self.fuse, features, others)]
