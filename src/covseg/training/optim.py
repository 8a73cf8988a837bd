"""Optimisers by name (:data:`covseg.registry.OPTIMISERS`): ``optim.name`` in the config picks one.

An entry is a factory ``factory(params, cfg) -> torch.optim.Optimizer`` taking the parameters (or
parameter groups) and the config's :class:`~covseg.training.config.OptimConfig`; a new optimiser is
one ``OPTIMISERS.register`` call, in any module (a plugin, a test), and the config accepts its name.
"""

from __future__ import annotations

from typing import Any

from covseg.registry import OPTIMISERS


@OPTIMISERS.register("adamw")
def adamw(params: Any, cfg: Any) -> Any:
    """AdamW (decoupled weight decay); the default."""
    import torch

    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@OPTIMISERS.register("adam")
def adam(params: Any, cfg: Any) -> Any:
    """Adam with L2 weight decay."""
    import torch

    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@OPTIMISERS.register("sgd")
def sgd(params: Any, cfg: Any) -> Any:
    """SGD with Nesterov momentum (nnU-Net's optimiser)."""
    import torch

    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)


def build_optimizer(params: Any, cfg: Any) -> Any:
    """The optimiser ``cfg.name`` over ``params`` (an unknown name is one line naming the known ones)."""
    return OPTIMISERS.get(cfg.name)(params, cfg)
