"""Segmentation losses (registry ``LOSSES``) and the composite ``Criterion`` used by trainers.

Elementary losses: ``dice``, ``bce``, ``dice_bce``, ``ce``, ``dice_ce``, ``structure``, ``edge``;
each is ``loss(logits, target) -> scalar``. See ``covseg.losses.elementary`` for target
conventions and ``covseg.losses.criterion`` for how deep-supervision and edge outputs combine.
"""

from covseg.losses import elementary  # noqa: F401  (registration side effects)
from covseg.losses.criterion import Criterion, build_criterion, mask_to_edge
from covseg.losses.elementary import boundary_weights, structure_loss
from covseg.losses.registry import LOSSES, build_loss

__all__ = [
    "LOSSES",
    "Criterion",
    "boundary_weights",
    "build_criterion",
    "build_loss",
    "mask_to_edge",
    "structure_loss",
]
