"""Inferers: how a prepared input becomes logits at its own size (the strategy of ``monai.inferers``).

An inferer gets ``forward(x, contexts) -> logits`` (a batch of network inputs and one context
dict per sample, e.g. its text) and a list of inputs ``(C, *spatial)`` at their original size,
already intensity-normalised; it returns one logits tensor ``(K, *spatial)`` per input, at that
input's size. Validation during training and ``covseg predict`` both go through the inferer the
run description names, so a validation score is what a user gets from the saved run.

- ``resize``: resize each input to the network size (antialiased bilinear), run the network in
  batches, resize the logits back (bilinear) before any sigmoid/softmax — covseg's 2D default.
- ``sliding_window``: MONAI's ``sliding_window_inference`` (Gaussian or constant weighting,
  configurable overlap) over inputs of any size, 2D or 3D.
- ``slices``: a 2D network over a volume ``(C, D, H, W)``, slice by slice along the first spatial
  axis, each slice through an inner 2D inferer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from covseg.errors import ConfigError
from covseg.registry import INFERERS
from covseg.transforms.preprocess import resize_tensor
from covseg.utils.monai_import import import_monai

Forward = Callable[[torch.Tensor, list[dict[str, Any]]], torch.Tensor]


def restore_size(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Logits ``(1, K, *spatial)`` at ``size`` (bilinear / trilinear, no antialiasing: an upsampling)."""
    if tuple(logits.shape[2:]) == tuple(size):
        return logits
    mode = "trilinear" if logits.ndim == 5 else "bilinear"
    return F.interpolate(logits, size=tuple(size), mode=mode, align_corners=False)


def _contexts(contexts: Sequence[dict[str, Any]] | None, n: int) -> list[dict[str, Any]]:
    return [dict(c) for c in contexts] if contexts is not None else [{} for _ in range(n)]


class Inferer:
    """Base: ``__call__(forward, inputs, contexts, batch_size) -> [logits (K, *spatial)]``."""

    name = "base"

    def __call__(
        self,
        forward: Forward,
        inputs: Sequence[torch.Tensor],
        contexts: Sequence[dict[str, Any]] | None = None,
        batch_size: int = 8,
    ) -> list[torch.Tensor]:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        """``{"name", "params"}`` for the run description."""
        return {"name": self.name, "params": self.params()}


@INFERERS.register("resize")
class ResizeInferer(Inferer):
    """Resize to the network size, predict in batches, resize the logits back (``size=None``: as is)."""

    name = "resize"

    def __init__(self, size: Sequence[int] | None = None) -> None:
        self.size = tuple(int(s) for s in size) if size else None

    def params(self) -> dict[str, Any]:
        return {"size": list(self.size) if self.size else None}

    def __call__(self, forward, inputs, contexts=None, batch_size=8):
        ctx = _contexts(contexts, len(inputs))
        out: list[torch.Tensor] = []
        start = 0
        while start < len(inputs):
            # a batch: consecutive inputs of one network shape
            group = [resize_tensor(inputs[start][None], self.size or inputs[start].shape[1:])]
            end = start + 1
            while end < len(inputs) and end - start < batch_size:
                nxt = resize_tensor(inputs[end][None], self.size or inputs[end].shape[1:])
                if nxt.shape != group[0].shape:
                    break
                group.append(nxt)
                end += 1
            logits = forward(torch.cat(group), ctx[start:end])
            for i in range(end - start):
                out.append(restore_size(logits[i : i + 1], inputs[start + i].shape[1:])[0])
            start = end
        return out


@INFERERS.register("sliding_window")
class SlidingWindowInferer(Inferer):
    """MONAI's sliding-window inference: overlapping ``roi_size`` windows, Gaussian-weighted by default."""

    name = "sliding_window"

    def __init__(
        self,
        roi_size: Sequence[int],
        overlap: float = 0.5,
        mode: str = "gaussian",
        sw_batch_size: int = 4,
        sigma_scale: float = 0.125,
        padding_mode: str = "constant",
    ) -> None:
        if not roi_size or any(int(s) < 1 for s in roi_size):
            raise ConfigError(f"sliding_window: roi_size must be positive sizes, got {roi_size}")
        if not 0.0 <= overlap < 1.0:
            raise ConfigError(f"sliding_window: overlap must be in [0, 1), got {overlap}")
        if mode not in ("gaussian", "constant"):
            raise ConfigError(f"sliding_window: mode must be gaussian or constant, got {mode!r}")
        self.roi_size = tuple(int(s) for s in roi_size)
        self.overlap = float(overlap)
        self.mode = mode
        self.sw_batch_size = int(sw_batch_size)
        self.sigma_scale = float(sigma_scale)
        self.padding_mode = padding_mode

    def params(self) -> dict[str, Any]:
        return {
            "roi_size": list(self.roi_size),
            "overlap": self.overlap,
            "mode": self.mode,
            "sw_batch_size": self.sw_batch_size,
            "sigma_scale": self.sigma_scale,
            "padding_mode": self.padding_mode,
        }

    def __call__(self, forward, inputs, contexts=None, batch_size=8):
        import_monai()
        from monai.inferers import sliding_window_inference

        ctx = _contexts(contexts, len(inputs))
        out = []
        for x, c in zip(inputs, ctx):
            if len(self.roi_size) != x.ndim - 1:
                raise ConfigError(f"sliding_window: roi_size {list(self.roi_size)} does not fit a {x.ndim - 1}D input")
            logits = sliding_window_inference(
                x[None],
                roi_size=self.roi_size,
                sw_batch_size=self.sw_batch_size,
                predictor=lambda patch, c=c: forward(patch, [c] * patch.shape[0]),
                overlap=self.overlap,
                mode=self.mode,
                sigma_scale=self.sigma_scale,
                padding_mode=self.padding_mode,
            )
            out.append(torch.as_tensor(logits)[0])
        return out


@INFERERS.register("slices")
class SliceInferer(Inferer):
    """A 2D network over volumes ``(C, D, H, W)``: every slice along spatial ``axis`` through ``inner``.

    ``context`` > 0 is the 2.5D mode: each slice goes in with its ``context`` neighbours on each
    side as extra channels (``C × (2·context + 1)`` channels, channel-major; edge slices repeat),
    the layout the patch sampler gives 2D models trained on volumes.
    """

    name = "slices"

    def __init__(self, inner: Inferer | dict[str, Any] | None = None, axis: int = 0, context: int = 0) -> None:
        self.inner = build_inferer(inner) if isinstance(inner, dict) else inner or ResizeInferer()
        if axis not in (0, 1, 2):
            raise ConfigError(f"slices: axis must be 0, 1 or 2 (a spatial axis of the volume), got {axis}")
        if context < 0:
            raise ConfigError(f"slices: context must be >= 0, got {context}")
        self.axis = int(axis)
        self.context = int(context)

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"inner": self.inner.describe()}
        if self.axis:
            params["axis"] = self.axis
        if self.context:
            params["context"] = self.context
        return params

    def slab(self, x: torch.Tensor, z: int) -> torch.Tensor:
        """Slice ``z`` of ``x`` (C, *spatial) as a 2D input, with its neighbours as channels in 2.5D."""
        dim = self.axis + 1
        if not self.context:
            return x.select(dim, z)
        n = x.shape[dim]
        index = torch.arange(z - self.context, z + self.context + 1).clamp(0, n - 1).to(x.device)
        part = torch.movedim(x.index_select(dim, index), dim, 1)  # (C, 2k+1, H, W)
        return part.reshape(-1, *part.shape[2:])

    def __call__(self, forward, inputs, contexts=None, batch_size=8):
        ctx = _contexts(contexts, len(inputs))
        out = []
        for x, c in zip(inputs, ctx):
            if x.ndim != 4:
                raise ConfigError(f"slices: expects a volume (C, D, H, W), got shape {tuple(x.shape)}")
            slices = [self.slab(x, z) for z in range(x.shape[self.axis + 1])]
            logits = self.inner(forward, slices, [c] * len(slices), batch_size)
            out.append(torch.stack(logits, dim=self.axis + 1))
        return out


def build_inferer(spec: dict[str, Any] | None, default_size: Sequence[int] | None = None) -> Inferer:
    """An inferer from ``{"name", "params"}`` (the run description's ``inferer``); ``resize`` by default."""
    spec = dict(spec or {})
    name = spec.get("name", "resize")
    params = dict(spec.get("params") or {})
    if name == "resize" and params.get("size") is None and default_size is not None:
        params["size"] = list(default_size)
    try:
        return INFERERS.build(name, **params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"inferer {name!r}: bad params {params} ({exc})") from None
