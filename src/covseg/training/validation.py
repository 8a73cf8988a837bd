"""Validation scores during training: the medical protocol at original resolution, and for joint
models the classification metrics of the validation cases."""

from __future__ import annotations

import numpy as np


def score_cases(
    probs: list[np.ndarray],
    gts: list[np.ndarray | None],
    num_classes: int,
    threshold: float = 0.5,
    spacings: list | None = None,
    surface: bool = False,
    class_probs: list[np.ndarray] | None = None,
    labels: list[int] | None = None,
) -> dict[str, float]:
    """Mean Dice and IoU over cases with ``covseg.metrics.MedicalMetrics`` (per class for K > 1).

    ``empty="one"``: a case whose ground truth and prediction are both empty scores 1 (nothing
    to find, nothing found), so empty validation slices do not count as failures. Surface
    distances are off by default (they cost more than the rest of validation together).
    Label-only cases (ground truth ``None``) count for classification alone. With
    ``class_probs`` and ``labels``: AUC, accuracy, sensitivity, specificity and F1 as well.
    """
    from covseg.metrics.medical import MedicalMetrics

    classes = max(1, num_classes - 1) if num_classes > 1 else 1
    acc = MedicalMetrics(num_classes=classes, threshold=threshold, empty="one", surface=surface)
    for i, (prob, gt) in enumerate(zip(probs, gts)):
        if gt is None:
            continue
        spacing = spacings[i] if spacings else None
        acc.update(prob, gt, spacing=spacing, case_id=str(i))
    out: dict[str, float] = {}
    if len(acc):
        agg = acc.aggregate("nanmean")
        out = {name: float(stats["mean"]) for name, stats in agg["metrics"].items() if name in ("dice", "iou", "hd95", "nsd")}
        if num_classes > 1:
            for cls, metrics in agg.get("per_class", {}).items():
                out[f"dice_c{cls}"] = float(metrics["dice"]["mean"])
    if class_probs is not None and labels is not None:
        from covseg.metrics.classification import classification_metrics

        scores = classification_metrics(labels, np.stack(class_probs), threshold=0.5)["metrics"]
        out.update({name: float(scores[name]) for name in ("auc", "accuracy", "sensitivity", "specificity", "f1")})
    return out
