"""Several run folders predicting as one: their probabilities averaged (nnU-Net's ensembling).

The ensemble composes predictors; it is not one. Members may differ in architecture, input size
and normalisation (each applies its own preprocessing and restores its output to the input's
size before the average), but must agree on the task: the number of classes and whether they
read text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from covseg.errors import CovsegError
from covseg.inference.predictor import BasePredictor, Predictor


class EnsemblePredictor(BasePredictor):
    """Mean of the members' soft maps, thresholded at the members' mean threshold."""

    def __init__(self, members: Sequence[Predictor]) -> None:
        if len(members) < 2:
            raise CovsegError(f"an ensemble needs at least two run folders, got {len(members)}")
        first = members[0]
        for member in members[1:]:
            if member.num_classes != first.num_classes:
                raise CovsegError(
                    f"ensemble members disagree on the number of classes ({member.num_classes} here, "
                    f"{first.num_classes} in {first.run_dir})",
                    member.run_dir,
                )
            if member.text_guided != first.text_guided:
                raise CovsegError(f"ensemble mixes text-guided and image-only models (first member: {first.run_dir})", member.run_dir)
        self.members = list(members)
        self.num_classes = first.num_classes
        self.threshold = float(np.mean([m.threshold for m in members]))
        self.text_guided = first.text_guided
        self.volumetric = any(m.volumetric for m in members)
        self.run_dir = first.run_dir
        self.description = first.description
        self.runtime = first.runtime
        self.run_dirs = [str(m.run_dir) for m in members]
        names = [m.class_names for m in members if m.class_names is not None]
        if any(n != names[0] for n in names[1:]):
            raise CovsegError(f"ensemble members disagree on the image-level classes ({', '.join(map(str, names))})", self.run_dir)
        self.class_names = names[0] if names else None

    @classmethod
    def from_runs(cls, run_dirs: Sequence[str | Path], checkpoint: str = "best", runtime=None) -> EnsemblePredictor:
        """Load every run folder (image-only or text-guided) with the same checkpoint choice and runtime."""
        from covseg.engine.runtime import Runtime

        runtime = runtime or Runtime.create("auto", distributed=False)
        return cls([Predictor.from_run(Path(d), checkpoint, runtime=runtime) for d in run_dirs])

    def segmenters(self):
        return [s for m in self.members for s in m.segmenters()]

    def _outputs(self, images, tta_flip=False, batch_size=8, **extra):
        """The members' soft maps averaged and, where members classify (joint runs), their class
        probabilities averaged over those members: an ensemble of joint runs is a joint predictor."""
        from covseg.engine.segmenter import SegmenterOutput

        total: list[np.ndarray] | None = None
        class_total: list[np.ndarray] | None = None
        classifying = 0
        for member in self.members:
            out = member._outputs(images, tta_flip=tta_flip, batch_size=batch_size, **extra)
            total = out.probs if total is None else [t + p for t, p in zip(total, out.probs)]
            if out.class_probs is not None:
                classifying += 1
                cp = [np.asarray(c, dtype=np.float64) for c in out.class_probs]
                class_total = cp if class_total is None else [t + c for t, c in zip(class_total, cp)]
        probs = [(t / len(self.members)).astype(np.float32) for t in total]
        class_probs = None if class_total is None else [(t / classifying).astype(np.float32) for t in class_total]
        return SegmenterOutput(probs, class_probs)

    def _volume_probabilities(self, volume, affine, tta_flip=False, window=None, batch_size=8, **extra):
        """Each member predicts the volume in its own way (window, slicing); soft maps averaged."""
        probs = [m._volume_probabilities(volume, affine, tta_flip=tta_flip, window=window, batch_size=batch_size, **extra) for m in self.members]
        return (np.sum(probs, axis=0) / len(probs)).astype(np.float32)
