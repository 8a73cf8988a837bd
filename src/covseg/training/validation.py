"""Validation scores during training: the medical protocol at original resolution."""

from __future__ import annotations

import numpy as np

from covseg.inference.core import probs_to_labels


def score_cases(probs: list[np.ndarray], gts: list[np.ndarray], num_classes: int, threshold: float = 0.5) -> dict[str, float]:
    """Mean Dice and IoU over cases (foreground classes averaged; per class for K > 1).

    A case whose ground truth and prediction are both empty scores 1 (nothing to find,
    nothing found), so empty validation slices do not count as failures.
    """
    labels = [probs_to_labels(p, threshold) for p in probs]
    classes = [1] if num_classes == 1 else list(range(1, num_classes))
    per_class: dict[int, list[tuple[float, float]]] = {c: [] for c in classes}
    for pred, gt in zip(labels, gts):
        for c in classes:
            p, g = pred == c, gt == c
            inter, total, union = np.logical_and(p, g).sum(), p.sum() + g.sum(), np.logical_or(p, g).sum()
            dice = 1.0 if total == 0 else 2.0 * inter / total
            iou = 1.0 if union == 0 else inter / union
            per_class[c].append((float(dice), float(iou)))
    out: dict[str, float] = {}
    for c in classes:
        arr = np.array(per_class[c])
        if num_classes > 1:
            out[f"dice_c{c}"] = float(arr[:, 0].mean())
            out[f"iou_c{c}"] = float(arr[:, 1].mean())
    out["dice"] = float(np.mean([np.mean([d for d, _ in v]) for v in per_class.values()]))
    out["iou"] = float(np.mean([np.mean([i for _, i in v]) for v in per_class.values()]))
    return out
