"""``jcs_published``: the JCS segmentation network exactly as its authors released it (Wu et al., TIP 2021).

covseg's ``jcs`` (and its ``jcs_paper`` config) is a re-design: different backbones, a five-level
decoder, a learned classification head. Its modules and forward cannot be made to match the released
network, so this is a separate model written from the authors' ``Models/joint_model.py`` (``JCS``),
``Models/vgg.py``, ``Models/res2net.py`` and ``Models/utils.py`` (github yuhuan-wu/JCS), with their
submodule names, so their ``joint.pth`` loads key for key (``covseg weights import --format jcs``):

- ``vgg16``: VGG-16 with (frozen) batch norm and max pooling; its ``conv5_*`` read ``conv4_3``, not the
  pooled map, so the five features lie at strides 1, 2, 4, 8, 8 (64, 128, 256, 512, 512 channels);
- ``res2net``: Res2Net-101 v1b 26w×4s (covseg's encoder, its batch norms frozen as theirs are),
  strides 2–32 (64, 256, 512, 1024, 2048 channels);
- ``gpd`` (the paper's Enhanced Feature Module) on VGG's deepest feature, and ``gpd1`` on that
  result max-pooled once more (a sixth level, stride 16);
- ``fuse``: per level, VGG's feature resized to Res2Net's and concatenated, three 3×3 conv-BN-ReLU;
- ``fpn``: the top-down decoder of Attentive Feature Fusion stages over the six levels;
- ``cls1``–``cls5``: 1×1 side outputs; ``cls1`` (stride 2) is the prediction, the other four are ``aux``.

Their batch norms are ``FrozenBatchNorm2d`` (buffers only, ``x · w / √var + (b − mean · w / √var)``, no
epsilon), reproduced here: on random weights the outputs agree with their code bit for bit
(``bench/bench_weights_equivalence_jcs.py``). Input: three channels, RGB, ImageNet mean / std, 512² in
their test script. ``res2net`` picks the Res2Net depth: 101 as released (50 builds the same design
on Res2Net-50, which no released checkpoint has).

The released checkpoint has no classifier (the authors' classification network is a separate model).
``class_logits`` here are derived from the segmentation, ``[0, max logit]``, so the image's infection
probability is the highest pixel probability of the map (``"lesion_score"``, no parameters): an image is
called infected when any pixel is. Grad-CAM explains that score at ``res2net.layer2`` (stride 8).

With ``classifier=True`` the class logits come from the authors' classification network instead
(``tools/gen_results.py``: ``res2net101_v1b_26w_4s`` with its ``fc`` replaced by a 2048 → 2 linear
layer without bias; their ``res2net_cls.pth``): ``classifier`` (Res2Net-101 v1b, frozen batch norms)
and ``classifier_fc``, fed the input as their demo prepares it (shorter side resized to 256,
bilinear with antialiasing as PIL does, the centre 224² cropped), global average pooling of
``layer4``. Grad-CAM then explains it at ``classifier.layer4``, where their demo does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from covseg.models.base import SegmentationModel
from covseg.models.res2net import RES2NET_LAYERS, Res2NetEncoder
from covseg.registry import MODELS

#: (VGG-16 stage convs, their width); ``pool`` before every stage but the first and the fifth
VGG_BN_STAGES: tuple[tuple[tuple[str, ...], int], ...] = (
    (("conv1_1", "conv1_2"), 64),
    (("conv2_1", "conv2_2"), 128),
    (("conv3_1", "conv3_2", "conv3_3"), 256),
    (("conv4_1", "conv4_2", "conv4_3"), 512),
    (("conv5_1", "conv5_2", "conv5_3"), 512),
)
ENCODER_WIDTHS = (64, 128, 256, 512, 512, 512)


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine terms, all buffers (no epsilon), as the authors' file has it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * self.running_var.rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


def freeze_batch_norms(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` inside ``module`` by a :class:`FrozenBatchNorm2d` of the same width."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features))
        else:
            freeze_batch_norms(child)
    return module


class ConvBNReLU(nn.Module):
    """Conv (with bias), a batch norm (``"batch"``, ``"frozen"`` or ``"none"``), optional ReLU; named ``conv`` / ``bn``."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, bn: str = "batch", relu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
        norms = {"batch": nn.BatchNorm2d, "frozen": FrozenBatchNorm2d}
        self.bn = norms[bn](cout) if bn in norms else None
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class VGG16BN(nn.Module):
    """The authors' VGG-16: conv-BN-ReLU, max pooling; features at strides 1, 2, 4, 8, 8."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        cin = in_channels
        for names, width in VGG_BN_STAGES:
            for name in names:
                setattr(self, name, ConvBNReLU(cin, width, bn="frozen"))
                cin = width

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, (names, _) in enumerate(VGG_BN_STAGES):
            if 0 < i < 4:
                x = F.max_pool2d(x, 2, 2)
            for name in names:
                x = getattr(self, name)(x)
            features.append(x)
        return features


class SEBlock(nn.Module):
    """Squeeze-excitation: ``x · σ(W₂ ReLU(W₁ mean(x)))`` (``linear1`` / ``linear2`` as released)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.linear1 = nn.Linear(channels, channels // reduction)
        self.linear2 = nn.Linear(channels // reduction, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=2).mean(dim=2)  # rows, then columns, as released (same rounding)
        weights = torch.sigmoid(self.linear2(F.relu(self.linear1(pooled))))
        return x * weights[:, :, None, None]


class GPD(nn.Module):
    """The Enhanced Feature Module: 1×1 to twice the width, one dilated 3×3 per half-width group, SE, 1×1, 3×3."""

    def __init__(self, channels: int, dilations: Sequence[int] = (1, 3, 6, 9)) -> None:
        super().__init__()
        expanded, group = channels * 2, channels // 2
        if len(dilations) * group != expanded:
            raise ValueError(f"GPD: {len(dilations)} groups of {group} channels do not make {expanded}")
        self.group = group
        self.expand_conv = ConvBNReLU(channels, expanded, 1, bn="none")
        self.reduce_conv = ConvBNReLU(expanded, channels, 1, bn="none")
        self.end_conv = ConvBNReLU(channels, channels, bn="none")
        self.se_block = SEBlock(expanded)
        self.dilation_convs = nn.ModuleList(
            nn.Conv2d(group, group, 3, padding=d, dilation=d) for d in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.split(self.expand_conv(x), self.group, dim=1)
        y = F.relu(torch.cat([conv(g) for conv, g in zip(self.dilation_convs, groups)], dim=1))
        return self.end_conv(self.reduce_conv(self.se_block(y)))


class FuseNet(nn.Module):
    """Per level: the VGG feature resized to the Res2Net one, concatenated, three 3×3 conv-BN-ReLU blocks (trainable BN)."""

    def __init__(
        self, vgg_widths: Sequence[int], res2net_widths: Sequence[int], widths: Sequence[int]
    ) -> None:
        super().__init__()
        self.cat_modules = nn.ModuleList(
            ConvBNReLU(a + b, c) for a, b, c in zip(vgg_widths, res2net_widths, widths)
        )
        self.se_modules = nn.ModuleList(ConvBNReLU(c, c) for c in widths)
        self.fuse_modules = nn.ModuleList(ConvBNReLU(c, c) for c in widths)

    def forward(self, vgg: Sequence[torch.Tensor], res2net: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for cat, se, fuse, a, b in zip(self.cat_modules, self.se_modules, self.fuse_modules, vgg, res2net):
            a = F.interpolate(a, b.shape[2:], mode="bilinear", align_corners=False)
            out.append(fuse(se(cat(torch.cat([a, b], dim=1)))))
        return out


class FuseModule(nn.Module):
    """Attentive Feature Fusion of a lateral (``low``) and a top-down (``high``) feature, each half the width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        wide = channels * 3 // 2
        self.se1 = SEBlock(channels, channels)
        self.conv1 = ConvBNReLU(channels, channels, bn="none")
        self.se2 = SEBlock(wide, wide)
        self.reduce_conv = ConvBNReLU(wide, channels, 1, bn="none")
        self.conv2 = ConvBNReLU(channels, channels, bn="none")

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.se1(torch.cat([low, high], dim=1)))
        return self.conv2(self.reduce_conv(self.se2(torch.cat([x, high], dim=1))))


class ImprovedDecoder(nn.Module):
    """Top-down decoder: the deepest level through 1×1 + 3×3, then one AFF stage per shallower level."""

    def __init__(self, in_widths: Sequence[int], out_widths: Sequence[int]) -> None:
        super().__init__()
        n = len(in_widths)
        self.inners_a = nn.ModuleList(
            ConvBNReLU(in_widths[i], out_widths[i] // 2, 1, bn="none") for i in range(n - 1)
        )
        self.inners_a.append(ConvBNReLU(in_widths[-1], out_widths[-1], 1, bn="none"))
        self.inners_b = nn.ModuleList(
            ConvBNReLU(out_widths[i + 1], out_widths[i] // 2, 1, bn="none") for i in range(n - 1)
        )
        self.fuse = nn.ModuleList(
            [
                *(FuseModule(out_widths[i]) for i in range(n - 1)),
                ConvBNReLU(out_widths[-1], out_widths[-1], bn="none"),
            ]
        )

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        y = self.fuse[-1](self.inners_a[-1](features[-1]))
        results = [y]
        for i in range(len(features) - 2, -1, -1):
            top_down = F.interpolate(
                self.inners_b[i](y), size=features[i].shape[2:], mode="bilinear", align_corners=False
            )
            y = self.fuse[i](self.inners_a[i](features[i]), top_down)
            results.insert(0, y)
        return results


class LesionScore(nn.Module):
    """Image-level logits ``[0, max pixel logit]`` of a binary map: softmax gives the highest pixel probability."""

    output = "class_logits"
    classes = 2
    init_args: dict[str, Any] = {}

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        peak = logits.flatten(1).amax(dim=1)
        return torch.stack([torch.zeros_like(peak), peak], dim=1)


CLASSIFIER_RESIZE, CLASSIFIER_CROP = 256, 224


def classifier_view(x: torch.Tensor) -> torch.Tensor:
    """Their classifier's input from the image: ``Resize(256)`` (shorter side, antialiased bilinear), ``CenterCrop(224)``."""
    h, w = x.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    size_long = int(CLASSIFIER_RESIZE * long / short)
    size = (CLASSIFIER_RESIZE, size_long) if h <= w else (size_long, CLASSIFIER_RESIZE)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    top, left = (round((s - CLASSIFIER_CROP) / 2.0) for s in size)
    return x[..., top : top + CLASSIFIER_CROP, left : left + CLASSIFIER_CROP]


class JCSPublished(SegmentationModel):
    """The released JCS network (``Models/joint_model.py``, ``JCS``), key for key; see the module docstring."""

    train_outputs = ("logits", "aux", "class_logits")
    num_aux = 4

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        res2net: str = "res2net101_v1b_26w_4s",
        classifier: bool = False,
    ) -> None:
        if out_channels != 1:
            raise ValueError(
                f"jcs_published segments one class (sigmoid maps), out_channels must be 1, got {out_channels}"
            )
        if res2net not in RES2NET_LAYERS:
            raise ValueError(f"res2net must be one of {', '.join(RES2NET_LAYERS)}, got {res2net!r}")
        super().__init__(in_channels, out_channels, res2net=res2net, classifier=bool(classifier))
        enc, dec = ENCODER_WIDTHS, ENCODER_WIDTHS
        self.vgg16 = VGG16BN(in_channels)
        self.res2net = freeze_batch_norms(Res2NetEncoder(in_channels, layers=RES2NET_LAYERS[res2net]))
        self.fuse = FuseNet([64, 128, 256, 512, 512], list(self.res2net.out_channels), enc[:-1])
        self.gpd = GPD(enc[-1])
        self.gpd1 = GPD(enc[-1], dilations=(1, 2, 3, 4))
        self.fpn = ImprovedDecoder(enc, dec)
        for i in range(5):
            setattr(self, f"cls{i + 1}", nn.Conv2d(dec[i], 1, 1))
        self.head_input = nn.Identity()
        self.heads["lesion_score"] = LesionScore()
        if classifier:  # the authors' classification network (tools/gen_results.py)
            self.classifier = freeze_batch_norms(Res2NetEncoder(in_channels, layers=RES2NET_LAYERS[res2net]))
            self.classifier_fc = nn.Linear(self.classifier.out_channels[-1], 2, bias=False)

    @property
    def cam_layer(self) -> str:
        """Grad-CAM of the class score: the classifier's ``layer4`` (their demo's), else Res2Net's stride-8 stage."""
        return "classifier.layer4" if self.init_args["classifier"] else "res2net.layer2"

    def class_logits(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``(B, 2)``: the authors' classifier on ``x`` when built with one, else the lesion score of ``logits``."""
        if not self.init_args["classifier"]:
            return self.heads["lesion_score"](self.head_input(logits))
        features = self.classifier(classifier_view(x))[-1]
        return self.classifier_fc(F.adaptive_avg_pool2d(features, 1).flatten(1))

    def _run_heads(self, out: dict[str, Any]) -> dict[str, Any]:
        return {}  # the lesion score reads the cropped logits (forward_train / forward_heads)

    def forward_train(self, x: torch.Tensor) -> dict[str, Any]:
        out = super().forward_train(x)
        out["class_logits"] = self.class_logits(x, out["logits"])
        return out

    def forward_heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().forward_heads(x)
        out["class_logits"] = self.class_logits(x, out["logits"])
        return out

    def _forward(self, x: torch.Tensor) -> dict[str, Any]:
        vgg = self.vgg16(x)
        res = self.res2net(x)
        vgg[4] = self.gpd(vgg[4])
        sixth = self.gpd1(F.max_pool2d(vgg[4], 2, 2))
        features = self.fpn([*self.fuse(vgg, res), sixth])
        maps = [
            F.interpolate(getattr(self, f"cls{i + 1}")(f), x.shape[2:], mode="bilinear", align_corners=False)
            for i, f in enumerate(features[:5])
        ]
        return {"logits": maps[0], "aux": maps[1:]}


MODELS.register("jcs_published")(JCSPublished)
