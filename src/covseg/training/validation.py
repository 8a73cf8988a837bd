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
