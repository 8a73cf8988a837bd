"""An exponential moving average of the model's weights (``train.ema_decay``).

The average of the last few hundred steps is often a better model than the last step of a short,
noisy run (Polyak averaging; the EMA of timm's ``ModelEmaV2`` and of mean-teacher methods). The
trainer updates it after every optimiser step; validation, ``best.pt`` / ``last.pt``'s
``model_state`` and therefore predict, export and the zoo use the average, while the checkpoint
also keeps the raw weights (``train_model_state``) so that a resumed run continues exactly.
"""

from __future__ import annotations

import copy
from typing import Any

import torch


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay of update number ``updates`` (0-based): warmed up as ``(1 + t) / (10 + t)`` so the
    first updates do not anchor the average to the random initial weights."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


class WeightAverage:
    """An EMA copy of ``model``: float parameters and buffers averaged, integer buffers copied."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards ``model``'s current weights by one step."""
        d = ema_decay_at(self.decay, self.updates)
        averaged = list(self.module.state_dict().values())
        current = list(model.state_dict().values())
        floats = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c.detach().to(a.dtype) for a, c in floats], 1.0 - d)
        for a, c in zip(averaged, current, strict=True):
            if not a.is_floating_point():
                a.copy_(c)
        self.updates += 1

    def state(self) -> dict[str, Any]:
        return {"updates": self.updates, "decay": self.decay}

    def load(self, model_state: dict[str, Any], state: dict[str, Any]) -> None:
        self.module.load_state_dict(model_state)
        self.updates = int(state["updates"])
