"""Segmentation losses (registry :data:`covseg.registry.LOSSES`) and named loss terms.

Elementary losses: ``dice``, ``bce``, ``dice_bce``, ``ce``, ``dice_ce``, ``structure``, ``edge``;
each is ``loss(logits, target) -> scalar`` (``covseg.losses.elementary`` has the target
conventions). :class:`LossTerms` maps a model's named outputs to losses and weights
(``covseg.losses.terms``); :class:`Criterion` is the classic main + deep-supervision + edge set.
"""

from covseg.losses.criterion import Criterion, build_criterion
from covseg.losses.elementary import boundary_weights, structure_loss
from covseg.losses.terms import LossTerm, LossTerms, build_loss, build_loss_terms, mask_to_edge
from covseg.registry import LOSSES

__all__ = [
    "LOSSES",
    "Criterion",
    "LossTerm",
    "LossTerms",
    "boundary_weights",
    "build_criterion",
    "build_loss",
    "build_loss_terms",
    "mask_to_edge",
    "structure_loss",
]
