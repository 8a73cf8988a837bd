"""What a prediction gives and how its mask is cleaned: :class:`Prediction`, :class:`PostprocessOptions`.

Plain data, shared by the predictors (:mod:`covseg.inference.predictor`), one file's prediction
(:mod:`covseg.inference.case`) and the options of a run (:mod:`covseg.inference.options`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from covseg.inference.postprocess import LUNG_MARGIN_MM


@dataclass
class PostprocessOptions:
    """Applied to the thresholded mask: keep the k largest components, drop small ones.

    ``lungs_only`` (CT volumes in HU only) first sets every voxel of the soft maps, and so of the
    masks, outside the input's lung mask grown by ``lung_margin_mm`` to background
    (:func:`covseg.inference.postprocess.lungs_of`), before the component rules run.
    """

    largest: int = 0
    min_size: int = 0
    lungs_only: bool = False
    lung_margin_mm: float = LUNG_MARGIN_MM

    def apply(self, labels: np.ndarray) -> np.ndarray:
        from covseg.inference.postprocess import keep_largest_components, remove_small_components

        if self.min_size > 1:
            labels = remove_small_components(labels, self.min_size)
        if self.largest > 0:
            labels = keep_largest_components(labels, self.largest)
        return labels


@dataclass
class Prediction:
    """Soft map and label map of one 2D image or volume at its original size; a joint model's
    class probabilities ``(K,)`` (class 0 negative) in ``class_probs``."""

    probs: np.ndarray
    labels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    class_probs: np.ndarray | None = None
