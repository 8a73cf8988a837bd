"""Validation scores during training: the medical protocol at original resolution, and for joint
models the classification metrics of the validation cases.

Scoring is split in two so that processes can share it: :func:`case_records` scores a set of
cases (each process its share), :func:`summarise_records` reduces the records of all cases,
ordered by case index, to the means the history reports (the same numbers as one process).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _accumulator(num_classes: int, threshold: float, surface: bool):
    """``MedicalMetrics`` per foreground class with ``empty="one"``: a case whose ground truth and
    prediction are both empty scores 1 (nothing to find, nothing found), so empty validation slices
    do not count as failures. Surface distances are off unless asked for (they cost more than the
    rest of validation together)."""
    from covseg.metrics.medical import MedicalMetrics

    classes = max(1, num_classes - 1) if num_classes > 1 else 1
    return MedicalMetrics(num_classes=classes, threshold=threshold, empty="one", surface=surface)


def case_records(
    probs: list[np.ndarray],
    gts: list[np.ndarray],
    num_classes: int,
    threshold: float = 0.5,
    case_indices: list[int] | None = None,
    spacings: list | None = None,
    surface: bool = False,
) -> list[tuple[int, list[dict[str, Any]]]]:
    """``(case index, per-class records)`` of each case (``MedicalMetrics`` records)."""
    acc = _accumulator(num_classes, threshold, surface)
    indices = case_indices if case_indices is not None else list(range(len(probs)))
    out = []
    for k, (i, prob, gt) in enumerate(zip(indices, probs, gts)):
        if gt is None:  # a label-only case counts for classification alone
            continue
        before = len(acc.per_case())
        acc.update(prob, gt, spacing=spacings[k] if spacings else None, case_id=str(i))
        out.append((int(i), acc.per_case()[before:]))
    return out


def summarise_records(records: list[tuple[int, list[dict[str, Any]]]], num_classes: int, threshold: float = 0.5, surface: bool = False) -> dict[str, float]:
    """Mean Dice and IoU (and HD95 / NSD with ``surface``), per class for K > 1, over all records."""
    acc = _accumulator(num_classes, threshold, surface)
    for index, recs in sorted(records, key=lambda r: r[0]):
        acc.add_records(str(index), recs)
    if not len(acc):
        return {}
    agg = acc.aggregate("nanmean")
    out = {name: float(stats["mean"]) for name, stats in agg["metrics"].items() if name in ("dice", "iou", "hd95", "nsd")}
    if num_classes > 1:
        for cls, metrics in agg.get("per_class", {}).items():
            out[f"dice_c{cls}"] = float(metrics["dice"]["mean"])
    return out


def classification_scores(class_probs: list[np.ndarray], labels: list[int]) -> dict[str, float]:
    """AUC, accuracy, sensitivity, specificity and F1 of image-level class probabilities."""
    from covseg.metrics.classification import classification_metrics

    scores = classification_metrics(labels, np.stack(class_probs), threshold=0.5)["metrics"]
    return {name: float(scores[name]) for name in ("auc", "accuracy", "sensitivity", "specificity", "f1")}


class TrainerValidation:
    """Validation of the model being trained through the saved run's own prediction path (mixed into the trainer)."""

    # ----------------------------------------------------------------- validation
    def segmenter(self, model=None):
        """The model being trained as a :class:`Segmenter` (the predictor's own path)."""
        from covseg.engine.segmenter import Segmenter

        return Segmenter(
            model or self.model,
            self.preprocessing,
            self.num_classes,
            self.adapters,
            self.inferer,
            self.cfg.train.threshold,
            channels_last=self.cfg.train.channels_last,
            runtime=self.runtime,
            volume_plan=self.volume_plan,
            cascade=self.cascade_stage,
        )

    def val_contexts(self) -> list[dict[str, Any]]:
        texts = self.val_data.texts or [None] * len(self.val_data)
        return [{"text": t} for t in texts]

    def val_inputs(self):
        """Validation inputs at their original size, prepared once (normalised + adapter channels)."""
        if self._val_inputs is None:
            segmenter = self.segmenter()
            self._val_inputs = [
                segmenter.prepare(img, ctx) for img, ctx in zip(self.val_data.original_images, self.val_contexts())
            ]
        return self._val_inputs

    def predict_val(self, model=None, indices: list[int] | None = None):
        """Validation outputs at each case's original size (the cases ``indices``, default all):
        ``.probs`` and, for joint models, ``.class_probs``."""
        indices = list(range(len(self.val_data))) if indices is None else indices
        if self.volume_plan is not None:  # whole volumes, through the saved run's own path
            from covseg.engine.segmenter import SegmenterOutput

            segmenter, data = self.segmenter(model), self.val_data
            return SegmenterOutput(
                [segmenter.volume_probabilities(data.original_images[i], data.affines[i], batch_size=self.cfg.train.val_batch_size) for i in indices]
            )
        inputs, contexts = self.val_inputs(), self.val_contexts()
        return self.segmenter(model).infer(
            [inputs[i] for i in indices], [contexts[i] for i in indices], self.cfg.train.val_batch_size
        )

    def validate(self, model=None) -> dict[str, float]:
        """Medical-protocol metrics on the validation set at original resolution (+ classification
        metrics for joint models).

        Each process scores its share of the cases; the records are gathered and reduced in case
        order, so every process gets the numbers one process would.
        """
        from covseg.training.validation import case_records, classification_scores, summarise_records

        rt = self.runtime
        indices = list(range(len(self.val_data)))[rt.rank :: rt.world_size]
        out = self.predict_val(model, indices)
        gts = [self.val_data.original_masks[i] for i in indices]
        records = case_records(out.probs, gts, self.num_classes, self.cfg.train.threshold, indices)
        classes = list(zip(indices, out.class_probs)) if out.class_probs is not None else []
        if rt.distributed:
            records = [r for part in rt.gather_objects(records) for r in part]
            classes = [c for part in rt.gather_objects(classes) for c in part]
        scores = summarise_records(records, self.num_classes, self.cfg.train.threshold)
        if classes:
            classes.sort(key=lambda c: c[0])
            labels = self.val_data.labels.tolist()
            scores.update(classification_scores([p for _, p in classes], [labels[i] for i, _ in classes]))
        return scores
