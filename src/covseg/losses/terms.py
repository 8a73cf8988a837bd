"""Named loss terms: each term maps one named model output to a loss against one batch target.

``total = Σ_t weight_t · loss_t(outputs[output_t], batch[target_t])``

A model's ``forward_train`` returns named outputs (``logits``, ``aux``, ``edge``, ``align_loss``,
``class_logits``); the config names the terms (``loss.terms: {seg: dice_bce, aux: {loss: dice_bce,
weight: 0.4}, align: {loss: value, weight: 0.1}}``), so a new head or a new loss is a new entry,
not a new criterion class. An output that is a list (deep supervision) gets one weight for all
entries or one per entry; ``loss: value`` takes an output that already is a scalar loss (c2fvl's
image–text alignment). Map outputs are resized (bilinear, ``align_corners=False``, as Inf-Net
upsamples its side outputs) to the target's resolution; targets are never resized.

Samples may carry only some targets (mixed supervision): a batch entry ``has_<target>`` (bool per
sample) restricts that target's terms to the samples that have it, and a term whose target no
sample has contributes nothing (its gradient is exactly zero).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from covseg.errors import ConfigError
from covseg.registry import LOSSES

#: the output and target a term reads when the config does not name them
DEFAULT_OUTPUTS = {"seg": "logits", "main": "logits", "aux": "aux", "edge": "edge", "align": "align_loss", "cls": "class_logits"}
DEFAULT_TARGETS = {"seg": "mask", "main": "mask", "aux": "mask", "edge": "edge", "cls": "label"}
VALUE = "value"


def build_loss(name: str, **kwargs: Any) -> torch.nn.Module:
    """Build a registered elementary loss by name."""
    try:
        return LOSSES.build(name, **kwargs)
    except TypeError as exc:  # a loss given keyword arguments it does not take
        raise ConfigError(f"loss {name!r}: {exc}") from None


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


def resize_like(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``output`` at the target's spatial size (bilinear / trilinear); class logits pass unchanged."""
    if output.ndim <= 2:
        return output
    spatial = target.shape[-(output.ndim - 2) :]
    if output.shape[2:] == spatial:
        return output
    mode = "trilinear" if output.ndim == 5 else "bilinear"
    return F.interpolate(output, size=spatial, mode=mode, align_corners=False)


@dataclass
class LossTerm:
    """One named term: ``weight · loss(outputs[output], batch[target])``."""

    name: str
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None  # None: the output is the loss
    weight: float | list[float] = 1.0
    output: str = "logits"
    target: str | None = "mask"
    required: bool = False
    edge_from_mask: bool = False

    def weights_for(self, n: int) -> list[float]:
        if isinstance(self.weight, (int, float)):
            return [float(self.weight)] * n
        if len(self.weight) != n:
            raise ValueError(f"{self.name}_weight has {len(self.weight)} entries but the model gives {n} {self.output} outputs")
        return [float(w) for w in self.weight]


def _restrict(batch: Mapping[str, Any], target_key: str, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The samples that carry ``target_key`` (``has_<key>`` in the batch), as an index tensor or None for all."""
    has = batch.get(f"has_{target_key}")
    if has is None:
        return value, None
    has = torch.as_tensor(has, dtype=torch.bool, device=value.device)
    if bool(has.all()):
        return value, None
    index = has.nonzero().flatten()
    return value[index], index


class LossTerms:
    """The training criterion: named terms summed with their weights; ``__call__ -> (total, parts)``.

    ``parts`` holds each term's value (``name``, or ``name0``, ``name1`` … for list outputs) and
    ``total``, as floats for the training log.
    """

    def __init__(self, terms: Sequence[LossTerm]) -> None:
        if not terms:
            raise ConfigError("loss: no terms")
        self.terms = list(terms)

    def _target(self, term: LossTerm, batch: Mapping[str, Any]) -> torch.Tensor | None:
        target = batch.get(term.target) if term.target else None
        if target is None and term.target == "edge" and term.edge_from_mask and batch.get("mask") is not None:
            target = mask_to_edge(batch["mask"])
        return target

    def __call__(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        parts: dict[str, float] = {}
        total: torch.Tensor | None = None

        def add(name: str, weight: float, value: torch.Tensor) -> None:
            nonlocal total
            parts[name] = float(value.detach())
            weighted = value if weight == 1.0 else weight * value
            total = weighted if total is None else total + weighted

        for term in self.terms:
            output = outputs.get(term.output)
            if output is None or (isinstance(output, (list, tuple)) and not output):
                if term.required:
                    raise ValueError(f"loss term {term.name!r}: the model gives no {term.output!r} output")
                continue
            if term.loss is None:  # the model computed this loss itself
                if term.weight:
                    add(term.name, float(term.weight), output)  # type: ignore[arg-type]
                continue
            if isinstance(output, (list, tuple)):
                entries = list(enumerate(zip(term.weights_for(len(output)), output)))
                if all(w == 0.0 for _, (w, _) in entries):
                    continue
            else:
                if float(term.weight) == 0.0:  # type: ignore[arg-type]
                    continue
                entries = [(None, (float(term.weight), output))]  # type: ignore[arg-type]
            target = self._target(term, batch)
            if target is None:
                raise ValueError(self._missing_target(term))
            target, index = _restrict(batch, str(term.target), target)
            for i, (weight, out) in entries:
                if weight == 0.0:
                    continue
                if index is not None:
                    out = out[index]
                name = term.name if i is None else f"{term.name}{i}"
                if target.shape[0] == 0:  # no sample of the batch has this target
                    add(name, weight, out.sum() * 0.0)
                    continue
                add(name, weight, term.loss(resize_like(out, target), target))
        if total is None:
            raise ValueError("no loss term applied to this batch (check loss.terms against the model's outputs)")
        parts["total"] = float(total.detach())
        return total, parts

    @staticmethod
    def _missing_target(term: LossTerm) -> str:
        if term.target == "edge":
            return (
                "the model gives an 'edge' output but the batch has no 'edge': add edge maps to the "
                "batch, set edge_from_mask=True to derive them from the mask, or set edge_weight=0"
            )
        return f"batch has no {term.target!r} (loss term {term.name!r})"


def term_from_config(name: str, spec: str | Mapping[str, Any]) -> LossTerm:
    """A :class:`LossTerm` from ``loss.terms.<name>``: a loss name, or ``{loss, weight, params, output, target}``."""
    if isinstance(spec, str):
        spec = {"loss": spec}
    spec = dict(spec)
    allowed = {"loss", "weight", "params", "output", "target", "edge_from_mask", "required"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"loss.terms.{name}: unknown keys {unknown}; allowed: {', '.join(sorted(allowed))}")
    if "loss" not in spec:
        raise ConfigError(f"loss.terms.{name} needs 'loss' (a loss name, or 'value' for an output that is a loss)")
    loss_name = spec["loss"]
    loss = None if loss_name == VALUE else build_loss(loss_name, **dict(spec.get("params") or {}))
    weight = spec.get("weight", 1.0)
    if isinstance(weight, (list, tuple)):
        weight = [float(w) for w in weight]
    return LossTerm(
        name=name,
        loss=loss,
        weight=weight if isinstance(weight, list) else float(weight),
        output=spec.get("output") or DEFAULT_OUTPUTS.get(name, "logits"),
        target=None if loss is None else spec.get("target") or DEFAULT_TARGETS.get(name, "mask"),
        required=bool(spec.get("required", name in ("seg", "main"))),
        edge_from_mask=bool(spec.get("edge_from_mask", False)),
    )


def build_loss_terms(terms: Mapping[str, str | Mapping[str, Any]]) -> LossTerms:
    """The criterion of a ``loss.terms`` mapping (term name → loss name or settings)."""
    return LossTerms([term_from_config(name, spec) for name, spec in terms.items()])
