"""Pictures that training and prediction hand to ``viz`` (they never import it themselves)."""

from __future__ import annotations

from typing import Any

import numpy as np


def training_curves_callback(trainer: Any, event: str) -> None:
    """A trainer callback: ``curves.png`` in the run folder when training ends."""
    if event != "fit_end" or not trainer.history:
        return
    from covseg.utils.atomic import write_bytes
    from covseg.viz.plots import training_curves_png

    write_bytes(trainer.run.path / "curves.png", training_curves_png(trainer.history, monitor=trainer.cfg.train.monitor))


def prediction_overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A predicted label map drawn over its image (prediction red), for ``overlays/``."""
    from covseg.viz.overlay import overlay

    return overlay(image, None, labels)
