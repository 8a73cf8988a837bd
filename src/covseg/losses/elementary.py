"""Elementary segmentation losses: ``loss(logits, target) -> scalar tensor``.

Target conventions:

- binary: logits ``(B, 1, H, W)``, target float ``(B, 1, H, W)`` in {0, 1} (soft values in
  [0, 1], e.g. after bilinear resizing, are accepted);
- multi-class: logits ``(B, K, H, W)``, K ≥ 2, target long ``(B, H, W)`` of class indices
  (``(B, 1, H, W)`` is squeezed), class 0 = background.

Dice, BCE, CE and their sums take 3D patches alike (``(B, 1|K, D, H, W)``).

``dice`` works for both (sigmoid for one channel, softmax otherwise). All losses are means over
the batch, so their scale does not depend on the batch size. ``class_ce`` is the image-level
one: class logits ``(B, K)`` against class indices ``(B,)`` (the ``cls`` term of joint models).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from covseg.registry import LOSSES


def check_binary(logits: torch.Tensor, target: torch.Tensor, loss: str) -> None:
    """Raise a clear error unless ``logits``/``target`` are a binary pair of equal shape."""
    if logits.ndim not in (4, 5) or logits.shape[1] != 1:
        raise ValueError(f"{loss}: binary logits must be (B, 1, H, W) or (B, 1, D, H, W), got {tuple(logits.shape)}")
    if target.shape != logits.shape:
        raise ValueError(
            f"{loss}: target shape {tuple(target.shape)} differs from logits {tuple(logits.shape)}"
        )
    if not target.is_floating_point():
        raise ValueError(f"{loss}: binary target must be float in [0, 1], got {target.dtype}")


def check_multiclass(logits: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Validate a multi-class pair; returns the target as long ``(B, H, W)``."""
    if logits.ndim not in (4, 5) or logits.shape[1] < 2:
        raise ValueError(
            f"{loss}: multi-class logits must be (B, K, H, W) or (B, K, D, H, W) with K ≥ 2, got {tuple(logits.shape)}"
        )
    if target.ndim == logits.ndim and target.shape[1] == 1:
        target = target[:, 0]
    if target.is_floating_point():
        raise ValueError(f"{loss}: multi-class target must hold integer class indices, got {target.dtype}")
    if target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"{loss}: target shape {tuple(target.shape)} does not fit logits {tuple(logits.shape)}"
        )
    return target.long()


def binary_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, batch: bool = False) -> torch.Tensor:
    """``1 − mean_b (2 Σ p·t + s) / (Σ p + Σ t + s)`` with ``p = σ(logits)``, sums per image
    (``batch``: one sum over the whole batch, nnU-Net's batch Dice, which an image without
    foreground cannot dominate)."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    if batch:
        p, t = p.reshape(1, -1), t.reshape(1, -1)
    dice = (2.0 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return 1.0 - dice.mean()


def multiclass_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, include_background: bool = False, batch: bool = False
) -> torch.Tensor:
    """Soft Dice on softmax probabilities, per image and class, averaged (background optional;
    ``batch``: sums over the whole batch per class)."""
    k = logits.shape[1]
    p = torch.softmax(logits, dim=1).flatten(2)
    t = torch.movedim(F.one_hot(target, k), -1, 1).flatten(2).to(p.dtype)
    if batch:
        p, t = p.transpose(0, 1).reshape(1, k, -1), t.transpose(0, 1).reshape(1, k, -1)
    if not include_background:
        p, t = p[:, 1:], t[:, 1:]
    dice = (2.0 * (p * t).sum(2) + smooth) / (p.sum(2) + t.sum(2) + smooth)
    return 1.0 - dice.mean()


class DiceLoss(nn.Module):
    """Soft Dice loss (binary: sigmoid; multi-class: softmax, foreground classes unless ``include_background``;
    ``batch``: sums over the whole batch, for batches that mix images with and without foreground)."""

    def __init__(self, smooth: float = 1.0, include_background: bool = False, batch: bool = False) -> None:
        super().__init__()
        self.smooth = smooth
        self.include_background = include_background
        self.batch = batch

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] == 1:
            check_binary(logits, target, "dice")
            return binary_dice_loss(logits, target, self.smooth, self.batch)
        target = check_multiclass(logits, target, "dice")
        return multiclass_dice_loss(logits, target, self.smooth, self.include_background, self.batch)


class BCELoss(nn.Module):
    """Binary cross-entropy on logits, mean over pixels (optional ``pos_weight`` for rare foreground)."""

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_binary(logits, target, "bce")
        pos_weight = None if self.pos_weight is None else logits.new_tensor(self.pos_weight)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)


class CELoss(nn.Module):
    """Multi-class cross-entropy (optional per-class ``weight`` and ``ignore_index``)."""

    def __init__(self, weight: Sequence[float] | None = None, ignore_index: int = -100) -> None:
        super().__init__()
        self.weight = None if weight is None else [float(w) for w in weight]
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = check_multiclass(logits, target, "ce")
        weight = None if self.weight is None else logits.new_tensor(self.weight)
        if weight is not None and weight.numel() != logits.shape[1]:
            raise ValueError(f"ce: {weight.numel()} class weights for {logits.shape[1]} classes")
        return F.cross_entropy(logits, target, weight=weight, ignore_index=self.ignore_index)


class DiceBCELoss(nn.Module):
    """``dice_weight · Dice + bce_weight · BCE`` for binary masks."""

    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0, smooth: float = 1.0, batch: bool = False) -> None:
        super().__init__()
        self.dice_weight, self.bce_weight = dice_weight, bce_weight
        self.dice, self.bce = DiceLoss(smooth, batch=batch), BCELoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_binary(logits, target, "dice_bce")
        return self.dice_weight * self.dice(logits, target) + self.bce_weight * self.bce(logits, target)


class DiceCELoss(nn.Module):
    """``dice_weight · Dice + ce_weight · CE`` for multi-class masks."""

    def __init__(
        self,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        smooth: float = 1.0,
        include_background: bool = False,
        weight: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.dice_weight, self.ce_weight = dice_weight, ce_weight
        self.dice, self.ce = DiceLoss(smooth, include_background), CELoss(weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = check_multiclass(logits, target, "dice_ce")
        return self.dice_weight * self.dice(logits, target) + self.ce_weight * self.ce(logits, target)


def boundary_weights(mask: torch.Tensor, kernel_size: int = 31, gain: float = 5.0) -> torch.Tensor:
    """Inf-Net/F3Net pixel weights ``1 + gain·|avg_pool(mask, k, stride 1, pad k//2) − mask|``.

    High near boundaries (where the local mean differs from the pixel), 1 inside flat regions.
    The zero padding counts in the average (PyTorch's default, as in the original code), so
    foreground touching the image border also gets weight there.
    """
    pad = kernel_size // 2
    # The k×k box mean is separable: a k×1 then a 1×k mean (each dividing by k, zero padding
    # counted) equals the 2D average pool, at 2k instead of k² operations per pixel.
    rows = F.avg_pool2d(mask, kernel_size=(kernel_size, 1), stride=1, padding=(pad, 0))
    local_mean = F.avg_pool2d(rows, kernel_size=(1, kernel_size), stride=1, padding=(0, pad))
    return 1.0 + gain * torch.abs(local_mean - mask)


def structure_loss(
    logits: torch.Tensor,
    mask: torch.Tensor,
    kernel_size: int = 31,
    gain: float = 5.0,
    bce_weight: float = 1.0,
    iou_weight: float = 1.0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Inf-Net structure loss: boundary-weighted BCE + weighted IoU, per image and channel, then mean.

    ``wbce = Σ w·bce / Σ w`` with the BCE kept *per pixel* (``reduction='none'``) and
    ``wiou = 1 − (Σ w·p·t + 1) / (Σ w·(p + t) − Σ w·p·t + 1)``. The released Inf-Net code passes
    ``reduce='none'``, which PyTorch reads as the legacy truthy ``reduce`` flag: the BCE is
    averaged to one number first, and the weighting then cancels out (``Σ w·c / Σ w = c``).
    This implements the intended per-pixel weighting.
    """
    weights = boundary_weights(mask, kernel_size, gain) if weights is None else weights
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    wbce = (weights * bce).sum(dim=(2, 3)) / weights.sum(dim=(2, 3))
    p = torch.sigmoid(logits)
    inter = (p * mask * weights).sum(dim=(2, 3))
    union = ((p + mask) * weights).sum(dim=(2, 3))
    wiou = 1.0 - (inter + 1.0) / (union - inter + 1.0)
    return (bce_weight * wbce + iou_weight * wiou).mean()


class StructureLoss(nn.Module):
    """Inf-Net structure loss (boundary-weighted BCE + weighted IoU); see ``structure_loss``."""

    def __init__(
        self, kernel_size: int = 31, gain: float = 5.0, bce_weight: float = 1.0, iou_weight: float = 1.0
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"structure: kernel_size must be odd (same-size pooling), got {kernel_size}")
        self.kernel_size, self.gain = kernel_size, gain
        self.bce_weight, self.iou_weight = bce_weight, iou_weight
        self._cached: tuple[torch.Tensor, int, torch.Tensor] | None = None

    def _weights(self, target: torch.Tensor) -> torch.Tensor:
        """Boundary weights of ``target``, computed once when deep supervision scores several outputs against it.

        The cache holds the target itself and matches by identity and in-place version: a key made
        of the storage address could match a new batch allocated where a freed one was.
        """
        cached = self._cached
        if cached is None or cached[0] is not target or cached[1] != target._version:
            cached = self._cached = (target, target._version, boundary_weights(target, self.kernel_size, self.gain))
        return cached[2]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_binary(logits, target, "structure")
        return structure_loss(
            logits, target, self.kernel_size, self.gain, self.bce_weight, self.iou_weight, weights=self._weights(target)
        )


class EdgeLoss(nn.Module):
    """BCE on edge logits; ``balanced=True`` weighs edge and non-edge pixels equally per image.

    Balanced: ``0.5 · mean BCE over edge pixels + 0.5 · mean BCE over the rest`` (the HED class
    balancing, normalised); an image with no edge (or only edge) falls back to the plain mean.
    Soft targets (resized edge maps) count fractionally in both sets.
    """

    def __init__(self, balanced: bool = False) -> None:
        super().__init__()
        self.balanced = balanced

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_binary(logits, target, "edge")
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1)
        if not self.balanced:
            return bce.mean()
        t = target.flatten(1)
        n_pos, n_neg = t.sum(1), (1.0 - t).sum(1)
        pos_sum, neg_sum = (t * bce).sum(1), ((1.0 - t) * bce).sum(1)
        balanced = 0.5 * pos_sum / n_pos.clamp_min(1e-6) + 0.5 * neg_sum / n_neg.clamp_min(1e-6)
        plain = bce.mean(1)
        has_both = (n_pos > 1e-6) & (n_neg > 1e-6)
        return torch.where(has_both, balanced, plain).mean()


class ClassCELoss(nn.Module):
    """Cross-entropy of image-level class logits ``(B, K)`` against class indices ``(B,)``.

    ``weight`` (one per class) counters class imbalance, e.g. few negative images;
    ``label_smoothing`` as in :func:`torch.nn.functional.cross_entropy`.
    """

    def __init__(self, weight: Sequence[float] | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.weight = None if weight is None else [float(w) for w in weight]
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2 or logits.shape[1] < 2:
            raise ValueError(f"class_ce: class logits must be (B, K) with K ≥ 2, got {tuple(logits.shape)}")
        target = target.reshape(-1)
        if target.is_floating_point() or target.shape[0] != logits.shape[0]:
            raise ValueError(f"class_ce: target must be {logits.shape[0]} class indices, got {target.dtype} {tuple(target.shape)}")
        weight = None if self.weight is None else logits.new_tensor(self.weight)
        if weight is not None and weight.numel() != logits.shape[1]:
            raise ValueError(f"class_ce: {weight.numel()} class weights for {logits.shape[1]} classes")
        return F.cross_entropy(logits, target.long(), weight=weight, label_smoothing=self.label_smoothing)


LOSSES.register("dice")(DiceLoss)
LOSSES.register("bce")(BCELoss)
LOSSES.register("ce")(CELoss)
LOSSES.register("dice_bce")(DiceBCELoss)
LOSSES.register("dice_ce")(DiceCELoss)
LOSSES.register("structure")(StructureLoss)
LOSSES.register("edge")(EdgeLoss)
LOSSES.register("class_ce")(ClassCELoss)
