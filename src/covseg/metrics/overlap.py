"""Overlap metrics of two binary masks: Dice, IoU, precision, sensitivity, specificity, mIoU.

``miou`` is the background-inclusive mean IoU that JCS (Wu et al., TIP 2021) reports: the mean of the
foreground IoU and the background IoU ``TN / (TN + FP + FN)`` of one image. The foreground IoU of two
empty masks follows the ``empty`` policy; an undefined (NaN) IoU is left out of the mean, so two empty
masks give ``miou = 1`` under ``"nan"`` and ``"one"`` and ``0.5`` under ``"zero"``.

All are ratios of confusion counts. A ratio whose denominator is 0 is undefined; the ``empty``
policy says what it becomes:

* ``"nan"``  – NaN (left out of a ``nanmean``; nnU-Net's value for Dice when both masks are empty);
* ``"one"``  – 1.0 (an empty prediction of an empty structure counts as perfect);
* ``"zero"`` – 0.0 (counts as a failure; what pysodmetrics' safe division returns).

Denominators that can be 0: Dice and IoU when gt and prediction are both empty; precision when
the prediction is empty; sensitivity when the gt is empty; specificity when the gt covers the
whole image.

Dice and IoU are **0**, whatever the policy, when exactly one side is empty: an empty ground
truth with a non-empty prediction is a failure (nnU-Net's convention, ``2TP / (2TP + FP + FN)``
with TP = 0). MONAI's ``compute_dice`` with its default ``ignore_empty=True`` returns NaN for
every case whose ground truth is empty, prediction or not, so a model that paints lesions on
healthy slices is not penalised there; covseg does not follow that default (MONAI's
``ignore_empty=False`` gives covseg's 0, and 1 for two empty masks, which is ``empty="one"``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

EmptyPolicy = Literal["nan", "one", "zero"]
EMPTY_POLICIES: tuple[str, ...] = ("nan", "one", "zero")
OVERLAP_METRICS: tuple[str, ...] = ("dice", "iou", "precision", "sensitivity", "specificity", "miou")


def empty_value(empty: EmptyPolicy) -> float:
    """The value an undefined (0/0) ratio takes under an ``empty`` policy."""
    try:
        return {"nan": float("nan"), "one": 1.0, "zero": 0.0}[empty]
    except KeyError:
        raise ValueError(f"empty must be one of {EMPTY_POLICIES}, got {empty!r}") from None


def confusion_counts(pred: np.ndarray, gt: np.ndarray) -> dict[str, int]:
    """True/false positive/negative counts of two boolean masks of the same shape."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"shapes differ: prediction {pred.shape}, ground truth {gt.shape}")
    tp = int(np.count_nonzero(pred & gt))
    pred_count = int(np.count_nonzero(pred))
    gt_count = int(np.count_nonzero(gt))
    fp = pred_count - tp
    fn = gt_count - tp
    tn = int(gt.size) - tp - fp - fn
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def _ratio(numerator: float, denominator: float, empty: EmptyPolicy) -> float:
    return float(numerator) / float(denominator) if denominator else empty_value(empty)


def overlap_from_counts(tp: int, fp: int, fn: int, tn: int, empty: EmptyPolicy = "nan") -> dict[str, float]:
    """Dice, IoU, precision, sensitivity (recall), specificity and background-inclusive mIoU from confusion counts."""
    empty_value(empty)  # validate even when no ratio is undefined
    foreground_iou = _ratio(tp, tp + fp + fn, empty)
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, empty),
        "iou": foreground_iou,
        "precision": _ratio(tp, tp + fp, empty),
        "sensitivity": _ratio(tp, tp + fn, empty),
        "specificity": _ratio(tn, tn + fp, empty),
        "miou": _mean_defined(foreground_iou, _ratio(tn, tn + fp + fn, empty)),
    }


def _mean_defined(*values: float) -> float:
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def overlap_metrics(pred: np.ndarray, gt: np.ndarray, empty: EmptyPolicy = "nan") -> dict[str, float]:
    """All overlap metrics of two boolean masks (see the module docstring for ``empty``)."""
    return overlap_from_counts(**confusion_counts(pred, gt), empty=empty)


def dice(pred: np.ndarray, gt: np.ndarray, empty: EmptyPolicy = "nan") -> float:
    """Dice = 2|P∩G| / (|P| + |G|)."""
    return overlap_metrics(pred, gt, empty)["dice"]


def iou(pred: np.ndarray, gt: np.ndarray, empty: EmptyPolicy = "nan") -> float:
    """IoU (Jaccard) = |P∩G| / |P∪G|."""
    return overlap_metrics(pred, gt, empty)["iou"]


def background_inclusive_miou(pred: np.ndarray, gt: np.ndarray, empty: EmptyPolicy = "nan") -> float:
    """JCS's mIoU: the mean of the foreground IoU and the background IoU of one image (module docstring)."""
    return overlap_metrics(pred, gt, empty)["miou"]


def precision(pred: np.ndarray, gt: np.ndarray, empty: EmptyPolicy = "nan") -> float:
    """Precision = TP / (TP + FP)."""
    return overlap_metrics(pred, gt, empty)["precision"]


def sensitivity(pred: np.ndarray, gt: np.ndarray, empty: EmptyPolicy = "nan") -> float:
    """Sensitivity (recall) = TP / (TP + FN)."""
    return overlap_metrics(pred, gt, empty)["sensitivity"]


def specificity(pred: np.ndarray, gt: np.ndarray, empty: EmptyPolicy = "nan") -> float:
    """Specificity = TN / (TN + FP)."""
    return overlap_metrics(pred, gt, empty)["specificity"]
