"""Composite training criterion over a model's ``forward_train`` outputs.

``total = main(logits, mask) + Σ_i aux_weight_i · aux_loss(aux_i, mask) + edge_weight · edge_loss(edge, edge_gt)``

Every output is resized (bilinear, ``align_corners=False``, as Inf-Net upsamples its side
outputs) to its target's resolution before the loss, so deep-supervision maps at strides 8–32
are compared with the full-resolution mask; the targets are never resized.

Edge supervision: when the model gives ``"edge"`` and ``edge_weight > 0`` the batch must carry
``"edge"`` (float ``(B, 1, H, W)``), or ``edge_from_mask=True`` derives it from the mask (Inf-Net's
2-pixel boundary band, see ``mask_to_edge``); otherwise the call raises ``ValueError`` rather
than silently dropping a configured loss term. A batch edge with a model that has no edge
output (e.g. ResUNet without ESM) is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from covseg.errors import ConfigError
from covseg.losses.registry import build_loss


def mask_to_edge(mask: torch.Tensor) -> torch.Tensor:
    """Inf-Net-style edge map of a mask batch, float ``(B, 1, H, W)`` in {0, 1}.

    A pixel is edge where the mask's central difference ``m[i+1] − m[i−1]`` along rows or
    columns is non-zero (replicated borders): a 2-pixel band, one pixel inside and one outside
    the boundary, the same rule as ``covseg.transforms.edges.mask_to_edge(width=2)`` that the
    data pipeline uses for Inf-Net's edge ground truth. Accepts a binary float ``(B, 1, H, W)``
    mask (foreground = value > 0.5) or a long ``(B, H, W)`` label map (any class > 0).
    """
    fg = (mask > 0).float() if not mask.is_floating_point() else (mask > 0.5).float()
    if fg.ndim == 3:
        fg = fg.unsqueeze(1)
    padded = F.pad(fg, (1, 1, 1, 1), mode="replicate")
    d_rows = padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]
    d_cols = padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]
    return ((d_rows != 0) | (d_cols != 0)).to(fg.dtype)


def _resize_like(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    size = target.shape[-2:]
    if output.shape[-2:] == size:
        return output
    return F.interpolate(output, size=size, mode="bilinear", align_corners=False)


class Criterion:
    """Main + deep-supervision + edge loss; ``__call__(outputs, batch) -> (total, parts)``.

    Args:
        main: loss name for ``outputs["logits"]`` (``covseg.losses.LOSSES``).
        aux_weight: weight of each ``outputs["aux"]`` entry — one float for all, or one per
            entry (a list whose length must equal the number of aux outputs). 0 skips them.
        edge_weight: weight of the edge term (0 skips it).
        edge_loss: loss name for ``outputs["edge"]`` (default ``edge``: BCE).
        aux_loss: loss name for aux outputs (default: the same as ``main``).
        main_kwargs / aux_kwargs / edge_kwargs: keyword arguments of those losses.
        edge_from_mask: derive the edge target from the mask when the batch has none.
    """

    def __init__(
        self,
        main: str,
        aux_weight: float | Sequence[float] = 1.0,
        edge_weight: float = 1.0,
        edge_loss: str = "edge",
        aux_loss: str | None = None,
        main_kwargs: Mapping[str, Any] | None = None,
        aux_kwargs: Mapping[str, Any] | None = None,
        edge_kwargs: Mapping[str, Any] | None = None,
        edge_from_mask: bool = False,
    ) -> None:
        self.main_name = main
        self.main = build_loss(main, **dict(main_kwargs or {}))
        if aux_loss is None and aux_kwargs is None:
            self.aux = self.main  # the same loss object: per-target work (boundary weights) is shared
        else:
            self.aux = build_loss(aux_loss or main, **dict(aux_kwargs or {}))
        self.edge = build_loss(edge_loss, **dict(edge_kwargs or {}))
        if isinstance(aux_weight, (int, float)):
            self.aux_weight: float | list[float] = float(aux_weight)
        else:
            self.aux_weight = [float(w) for w in aux_weight]
        self.edge_weight = float(edge_weight)
        self.edge_from_mask = edge_from_mask

    def _aux_weights(self, n: int) -> list[float]:
        if isinstance(self.aux_weight, float):
            return [self.aux_weight] * n
        if len(self.aux_weight) != n:
            raise ValueError(
                f"aux_weight has {len(self.aux_weight)} entries but the model gives {n} aux outputs"
            )
        return list(self.aux_weight)

    def __call__(
        self, outputs: Mapping[str, Any], batch: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if "mask" not in batch:
            raise ValueError("batch has no 'mask'")
        mask = batch["mask"]
        parts: dict[str, float] = {}
        main = self.main(_resize_like(outputs["logits"], mask), mask)
        parts["main"] = float(main.detach())
        total = main
        aux_outputs = outputs.get("aux") or []
        for i, (weight, aux) in enumerate(zip(self._aux_weights(len(aux_outputs)), aux_outputs)):
            if weight == 0.0:
                continue
            value = self.aux(_resize_like(aux, mask), mask)
            parts[f"aux{i}"] = float(value.detach())
            total = total + weight * value
        if outputs.get("edge") is not None and self.edge_weight != 0.0:
            edge_target = batch.get("edge")
            if edge_target is None:
                if not self.edge_from_mask:
                    raise ValueError(
                        "the model gives an 'edge' output but the batch has no 'edge': add edge maps to the "
                        "batch, set edge_from_mask=True to derive them from the mask, or set edge_weight=0"
                    )
                edge_target = mask_to_edge(mask)
            value = self.edge(_resize_like(outputs["edge"], edge_target), edge_target)
            parts["edge"] = float(value.detach())
            total = total + self.edge_weight * value
        parts["total"] = float(total.detach())
        return total, parts


_CRITERION_KEYS = (
    "main",
    "aux_weight",
    "edge_weight",
    "edge_loss",
    "aux_loss",
    "main_kwargs",
    "aux_kwargs",
    "edge_kwargs",
    "edge_from_mask",
)


def build_criterion(cfg: Mapping[str, Any] | str) -> Criterion:
    """A ``Criterion`` from a config mapping (keys as its arguments) or a bare main-loss name.

    ``params`` is accepted as another name for ``main_kwargs`` (the trainer's ``LossConfig``
    calls the main loss's keyword arguments so); an empty ``params`` is ignored.
    """
    if isinstance(cfg, str):
        return Criterion(main=cfg)
    cfg = dict(cfg)
    params = cfg.pop("params", None)
    if params:
        if cfg.get("main_kwargs"):
            raise ConfigError("loss config gives both 'params' and 'main_kwargs'; use one")
        cfg["main_kwargs"] = params
    unknown = sorted(set(cfg) - set(_CRITERION_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown loss config keys {unknown}; allowed: {', '.join(_CRITERION_KEYS)}, params"
        )
    if "main" not in cfg:
        raise ConfigError("loss config needs 'main' (a loss name)")
    try:
        return Criterion(**cfg)
    except KeyError as exc:  # unknown loss name from the registry
        raise ConfigError(str(exc.args[0])) from exc
    except TypeError as exc:  # a loss given keyword arguments it does not take
        raise ConfigError(f"loss config: {exc}") from exc
