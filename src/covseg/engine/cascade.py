"""The coarse stage of the 3D coarse-to-fine cascade: a low-resolution run finds the region of interest.

A fine run whose description names a ``cascade`` run (``model.json``: ``{"run", "checkpoint",
"margin_mm", "threshold"}``; a relative path is taken inside the fine run's folder, so a run folder
holding its coarse run under ``coarse/`` predicts on its own) segments only inside the bounding box of
the coarse run's foreground, grown by ``margin_mm`` on every side. The box is computed on the fine
run's grid, so the fine network sees full-resolution voxels of the region and nothing else.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from covseg.utils.monai_import import import_monai


def roi_box(mask: np.ndarray, spacing: tuple[float, ...], margin_mm: float) -> tuple[tuple[int, int], ...] | None:
    """Bounding box (start, end per axis) of ``mask`` grown by ``margin_mm``; None when it is empty."""
    import_monai()
    from monai.transforms.utils import generate_spatial_bounding_box

    if not mask.any():
        return None
    margin = [math.ceil(margin_mm / s) for s in spacing]
    start, end = generate_spatial_bounding_box(np.asarray(mask)[None], margin=margin)
    return tuple((max(0, int(a)), min(int(n), int(b))) for a, b, n in zip(start, end, mask.shape))


def crop_to(x: np.ndarray, geometry: Any, box: tuple[tuple[int, int], ...]):
    """``x`` (C, *cropped grid) cut to ``box`` (in its own coordinates), with the geometry's box moved alike."""
    inner = tuple((a0 + a, a0 + b) for (a0, _), (a, b) in zip(geometry.box, box))
    return np.ascontiguousarray(x[(slice(None), *(slice(a, b) for a, b in box))]), dataclasses.replace(geometry, box=inner)


class CoarseStage:
    """A coarse segmenter and how its map becomes the fine run's region of interest."""

    def __init__(
        self, segmenter: Any, margin_mm: float = 20.0, threshold: float = 0.5, run_dir: Path | None = None, checkpoint: str = "best"
    ) -> None:
        self.segmenter = segmenter
        self.checkpoint = checkpoint
        self.margin_mm = float(margin_mm)
        self.threshold = float(threshold)
        self.run_dir = run_dir

    @classmethod
    def from_description(cls, spec: Any, run_dir: Path, load_run: Callable[[Path, str], Any]) -> CoarseStage:
        path = Path(spec.run).expanduser()
        if not path.is_absolute():
            path = Path(run_dir) / path
        return cls(load_run(path, spec.checkpoint), spec.margin_mm, spec.threshold, path, spec.checkpoint)

    def foreground(self, volume: np.ndarray, affine: np.ndarray, space: str | None = None) -> np.ndarray:
        """The coarse run's foreground on the input volume (binary: ``p >= threshold``; K classes: argmax > 0)."""
        probs = self.segmenter.volume_probabilities(volume, affine, space=space)
        return probs >= self.threshold if probs.ndim == 3 else probs.argmax(axis=0) > 0

    def box(self, volume: np.ndarray, affine: np.ndarray, geometry: Any, extra: np.ndarray | None = None, space: str | None = None):
        """The region of interest on the fine grid (``extra``: a mask on the input added to the coarse one)."""
        from covseg.transforms.volume import prepare_labels

        fg = self.foreground(volume, affine, space)
        if extra is not None:
            fg = fg | (np.asarray(extra) > 0)
        return roi_box(prepare_labels(fg.astype(np.uint8), geometry) > 0, geometry.spacing, self.margin_mm)

    def crop(self, fine: Any, volume: np.ndarray, affine: np.ndarray, x: np.ndarray, geometry: Any, space: str | None = None):
        """``(x, geometry)`` cut to the region of interest, or ``(None, geometry)`` when the coarse map is empty."""
        box = self.box(volume, affine, geometry, space=space)
        if box is None:
            return None, geometry
        return crop_to(x, geometry, box)
