"""The classic composite criterion (main + deep supervision + edge) as three named loss terms.

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

from covseg.errors import ConfigError
from covseg.losses.terms import LossTerm, LossTerms, build_loss, mask_to_edge

__all__ = ["Criterion", "build_criterion", "mask_to_edge"]


class Criterion(LossTerms):
    """Main + deep-supervision + edge loss; ``__call__(outputs, batch) -> (total, parts)``.

    The terms are named ``main`` (``logits`` vs ``mask``), ``aux`` (each ``aux`` output vs
    ``mask``; parts ``aux0``, ``aux1`` …) and ``edge`` (``edge`` vs ``edge``).

    Args:
        main: loss name for ``outputs["logits"]`` (``covseg.registry.LOSSES``).
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
        super().__init__(
            [
                LossTerm("main", self.main, 1.0, "logits", "mask", required=True),
                LossTerm("aux", self.aux, self.aux_weight, "aux", "mask"),
                LossTerm("edge", self.edge, self.edge_weight, "edge", "edge", edge_from_mask=edge_from_mask),
            ]
        )

    def __call__(self, outputs, batch):
        if "mask" not in batch:
            raise ValueError("batch has no 'mask'")
        return super().__call__(outputs, batch)


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
    except TypeError as exc:  # a criterion given arguments it does not take
        raise ConfigError(f"loss config: {exc}") from exc
