"""Multi-scale training (Inf-Net, Fan et al. 2020, ``MyTrain_LungInf.py``): every batch trained at several sizes.

With ``train.multiscale_rates: [0.75, 1.0, 1.25]`` each batch of the epoch is trained once per
rate, one optimiser step each, at ``round(size * rate / multiple) * multiple`` (``multiple`` is
``train.multiscale_multiple``, 32 as published): images, edges and binary masks are resized
bilinearly (``align_corners=True``, as published; binary masks become soft at the borders),
class-index masks by nearest neighbour. Rate 1 trains on the batch itself, so a run with the
rates ``[1.0]`` is the plain run. The views are made by :class:`BatchViews`, the trainer's
``step_views`` hook; a second batch of the same step (pseudo labels) is matched to the view's size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch.nn.functional as F

from covseg.errors import ConfigError

#: batch entries that are maps of the image (resized with it); the rest are per-sample values
MAP_KEYS = ("image", "mask", "edge")


def scaled_size(size: Sequence[int], rate: float, multiple: int = 32) -> tuple[int, ...]:
    """Inf-Net's training size at ``rate``: each side ``round(side * rate / multiple) * multiple``, at least ``multiple``."""
    return tuple(max(multiple, round(s * rate / multiple) * multiple) for s in size)


def resize_batch(batch: dict[str, Any], size: Sequence[int]) -> dict[str, Any]:
    """A copy of ``batch`` with its maps at ``size``: float maps bilinear (corners aligned), class indices nearest."""
    out = dict(batch)
    for key in MAP_KEYS:
        value = batch.get(key)
        if value is None or tuple(value.shape[-2:]) == tuple(size):
            continue
        if value.is_floating_point():
            kind = value.dtype
            resized = F.interpolate(value.float(), size=tuple(size), mode="bilinear", align_corners=True)
            out[key] = resized.to(kind)
        else:  # class indices (B, H, W) or (B, 1, H, W)
            squeeze = value.ndim == 3
            v = value.unsqueeze(1) if squeeze else value
            resized = F.interpolate(v.float(), size=tuple(size), mode="nearest").to(value.dtype)
            out[key] = resized.squeeze(1) if squeeze else resized
    return out


class BatchViews:
    """The sizes each batch is trained at, one optimiser step each (the trainer's ``step_views``)."""

    def __init__(self, rates: Sequence[float], multiple: int = 32) -> None:
        self.rates = [float(r) for r in rates]
        self.multiple = int(multiple)
        self.size: tuple[int, ...] | None = None  # the size of the view being trained

    def views(self, batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """``batch`` at each rate in order; rate 1 is the batch itself (unchanged, not rounded)."""
        base = tuple(batch["image"].shape[-2:])
        for rate in self.rates:
            view = batch if rate == 1.0 else resize_batch(batch, scaled_size(base, rate, self.multiple))
            self.size = tuple(view["image"].shape[-2:])
            yield view
        self.size = None

    def match(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A second batch of the same step at the size of the view being trained."""
        if self.size is None or tuple(batch["image"].shape[-2:]) == self.size:
            return batch
        return resize_batch(batch, self.size)


def multiscale_views(trainer: Any) -> BatchViews | None:
    """The run's :class:`BatchViews` (None when ``train.multiscale_rates`` is unset); refuses runs it does not fit."""
    train = trainer.cfg.train
    if not train.multiscale_rates:
        return None
    if trainer.volume_plan is not None:
        raise ConfigError(
            "train.multiscale_rates: this run trains on volume patches (3D or 2.5D); multi-scale training is for 2D images"
        )
    if not getattr(type(trainer), "supports_multiscale", True):
        raise ConfigError(
            f"train.multiscale_rates: trainer {trainer.cfg.trainer!r} draws unlabelled batches at the network size; "
            "multi-scale training is not supported there"
        )
    if getattr(trainer.model, "fixed_input_size", False):
        raise ConfigError(
            f"train.multiscale_rates: model {trainer.cfg.model.name!r} takes one input size only"
        )
    return BatchViews(train.multiscale_rates, train.multiscale_multiple)
