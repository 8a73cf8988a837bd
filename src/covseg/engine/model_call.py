"""The one way covseg calls a network, in training and in prediction alike.

:func:`call_model` puts a batch on the runtime's device in the model's memory format, asks each
input adapter (text tokens, the cascade's prior) for its keyword inputs, and calls the model,
under autocast when asked. The trainer (``forward_train`` of the model, or its DDP / compiled
wrapper) and :class:`covseg.engine.segmenter.Segmenter` (``forward``) both go through it, so a
model's inputs cannot differ between the run that trained it and the run that predicts with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def as_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A network-size 2D batch in channels-last memory format when ``channels_last`` (3D unchanged)."""
    if channels_last and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def call_model(
    call: Callable[..., Any],
    x: torch.Tensor,
    contexts: Sequence[dict[str, Any]],
    adapters: Sequence[Any],
    runtime: Any,
    channels_last: bool,
    autocast: bool = True,
) -> Any:
    """``call(input, **keyword inputs)``: ``x`` on ``runtime``'s device in the memory format, the
    adapters' keywords for ``contexts`` (one dict per sample), under ``runtime.autocast()`` when
    ``autocast`` (the trainer passes False: its epoch loop holds autocast over the whole step)."""
    kwargs: dict[str, Any] = {}
    for adapter in adapters:
        kwargs.update(runtime.to_device(adapter.model_kwargs(contexts)))
    inp = as_input(runtime.to_device(x), channels_last)
    if not autocast:
        return call(inp, **kwargs)
    with runtime.autocast():
        return call(inp, **kwargs)
