"""The per-image measures of the ``sod`` protocol: S-measure, E-measure, weighted F-measure, MAE and the
thresholded Dice / sensitivity / specificity curves, on a prepared (min-max normalised) soft map.

Pure numpy functions matching ``py_sod_metrics`` 1.6; the protocol around them (preparation rules,
data-set aggregation, the MATLAB variant) is described and accumulated in :mod:`covseg.metrics.sod`,
from which every name here is importable as before.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from covseg.metrics._arrays import gt_labels, soft_map

EPS = float(np.spacing(1))  # MATLAB's eps, used where the reference implementations use it
NUM_THRESHOLDS = 256
SpecificityRule = Literal["pysodmetrics", "infnet"]
SPECIFICITY_RULES: tuple[str, ...] = ("pysodmetrics", "infnet")


def prepare_sod_inputs(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    """Min-max normalised float64 soft map and boolean ground truth, both 2D and of the same shape."""
    p = soft_map(pred)
    g = gt_labels(gt, 1).astype(bool)
    if p.ndim != 2:
        raise ValueError(f"the sod protocol scores 2D soft maps, got shape {p.shape}")
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth {g.shape}")
    lo, hi = p.min(), p.max()
    if hi != lo:
        p = (p - lo) / (hi - lo)
    return p, g


# ---------------------------------------------------------------------------------------- S-measure
def _s_object(values: np.ndarray) -> float:
    mean = np.mean(values)
    std = np.std(values, ddof=1) if values.size > 1 else 0.0
    return 2 * mean / (mean**2 + 1 + std + EPS)


def _ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    n = pred.size
    x = np.mean(pred)
    y = np.mean(gt)
    sigma_x = np.sum((pred - x) ** 2) / (n - 1 + EPS)
    sigma_y = np.sum((gt - y) ** 2) / (n - 1 + EPS)
    sigma_xy = np.sum((pred - x) * (gt - y)) / (n - 1 + EPS)
    alpha = 4 * x * y * sigma_xy
    beta = (x**2 + y**2) * (sigma_x + sigma_y)
    if alpha != 0:
        return alpha / (beta + EPS)
    return 1.0 if beta == 0 else 0.0


def _region_score(pred: np.ndarray, gt: np.ndarray) -> float:
    h, w = gt.shape
    area = h * w
    # Centroid rounded with numpy's round-half-to-even (as pysodmetrics), then +1 as MATLAB's 1:X ranges.
    cy, cx = np.argwhere(gt).mean(axis=0).round()
    cy, cx = int(cy) + 1, int(cx) + 1
    w_lt = cx * cy / area
    w_rt = cy * (w - cx) / area
    w_lb = (h - cy) * cx / area
    w_rb = 1 - w_lt - w_rt - w_lb
    quadrants = (
        (np.s_[0:cy, 0:cx], w_lt),
        (np.s_[0:cy, cx:w], w_rt),
        (np.s_[cy:h, 0:cx], w_lb),
        (np.s_[cy:h, cx:w], w_rb),
    )
    score = 0.0
    for box, weight in quadrants:
        if pred[box].size:  # an empty quadrant has weight 0 (pysodmetrics would give NaN here)
            score = score + _ssim(pred[box], gt[box]) * weight
    return score


def s_measure(pred: np.ndarray, gt: np.ndarray, alpha: float = 0.5) -> float:
    """Structure measure of a normalised soft map ``pred`` in [0, 1] against a boolean ``gt``."""
    y = np.mean(gt)
    if y == 0:
        return float(1 - np.mean(pred))
    if y == 1:
        return float(np.mean(pred))
    gt_mean = y
    object_score = _s_object(pred[gt]) * gt_mean + _s_object((1 - pred)[~gt]) * (1 - gt_mean)
    score = object_score * alpha + _region_score(pred, gt) * (1 - alpha)
    return float(max(0.0, score))


# ---------------------------------------------------------------------------------------- E-measure
def _enhanced_alignment(tp, fp, gt_fg: int, size: int):
    """E-measure from counts (scalars or arrays over thresholds): TP and FP of the binarised map."""
    pred_fg = tp + fp
    pred_bg = size - pred_fg
    if gt_fg == 0:
        enhanced = pred_bg
    elif gt_fg == size:
        enhanced = pred_fg
    else:
        fn = gt_fg - tp
        tn = pred_bg - fn
        mean_pred = pred_fg / size
        mean_gt = gt_fg / size
        parts = (
            (tp, 1 - mean_pred, 1 - mean_gt),
            (fp, 1 - mean_pred, 0 - mean_gt),
            (fn, 0 - mean_pred, 1 - mean_gt),
            (tn, 0 - mean_pred, 0 - mean_gt),
        )
        enhanced = 0
        for count, a, b in parts:
            align = 2 * (a * b) / (a**2 + b**2 + EPS)
            enhanced = enhanced + (align + 1) ** 2 / 4 * count
    return enhanced / (size - 1 + EPS)


def _threshold_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TP and FP at thresholds k = 0..255 (foreground where floor(255·p) >= k)."""
    levels = (pred * 255).astype(np.uint8)
    fg_hist = np.bincount(levels[gt], minlength=NUM_THRESHOLDS)
    bg_hist = np.bincount(levels[~gt], minlength=NUM_THRESHOLDS)
    tp = np.cumsum(fg_hist[::-1])[::-1]
    fp = np.cumsum(bg_hist[::-1])[::-1]
    return tp, fp


def e_measure_curve(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """E-measure at the 256 thresholds ``k/255`` (ascending) of a normalised soft map."""
    tp, fp = _threshold_counts(pred, gt)
    return np.asarray(_enhanced_alignment(tp, fp, int(np.count_nonzero(gt)), gt.size), dtype=np.float64)


def adaptive_e_measure(pred: np.ndarray, gt: np.ndarray) -> float:
    """E-measure of the map binarised at ``min(2·mean(pred), 1)`` (``pred >= threshold``)."""
    binary = pred >= min(2 * pred.mean(), 1)
    tp = int(np.count_nonzero(binary & gt))
    fp = int(np.count_nonzero(binary & ~gt))
    return float(_enhanced_alignment(tp, fp, int(np.count_nonzero(gt)), gt.size))


# ---------------------------------------------------------------------------------- weighted F-measure
def _matlab_gaussian(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    half = (size - 1) / 2
    y, x = np.ogrid[-half : half + 1, -half : half + 1]
    kernel = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    kernel[kernel < np.finfo(kernel.dtype).eps * kernel.max()] = 0
    return kernel / kernel.sum()


def weighted_f_measure(pred: np.ndarray, gt: np.ndarray, beta2: float = 1.0) -> float:
    """Weighted F-measure (β² = ``beta2``) of a normalised soft map; 0 when the ground truth is empty."""
    from scipy.ndimage import convolve, distance_transform_edt

    if not gt.any():
        return 0.0
    background = ~gt
    dist, nearest = distance_transform_edt(background, return_indices=True)
    error = np.abs(pred - gt)
    # Pixel dependency: a background pixel takes the error of its nearest foreground pixel.
    error_t = error.copy()
    error_t[background] = error[nearest[0][background], nearest[1][background]]
    error_a = convolve(error_t, weights=_matlab_gaussian(7, 5.0), mode="constant", cval=0)
    min_error = np.where(gt & (error_a < error), error_a, error)
    # Pixel importance: errors far from the object weigh more.
    importance = np.where(background, 2 - np.exp(np.log(0.5) / 5 * dist), 1.0)
    weighted = min_error * importance
    tp_w = np.sum(gt) - np.sum(weighted[gt])
    fp_w = np.sum(weighted[background])
    recall = 1 - np.mean(weighted[gt])
    prec = tp_w / (tp_w + fp_w + EPS)
    return float((1 + beta2) * recall * prec / (recall + beta2 * prec + EPS))


def mae(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean absolute error between a normalised soft map and the binary ground truth."""
    return float(np.mean(np.abs(pred - gt)))


# ---------------------------------------------------------------------------- thresholded curves
def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.zeros(np.shape(denominator), dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def sod_curves(
    pred: np.ndarray, gt: np.ndarray, specificity_rule: SpecificityRule = "pysodmetrics"
) -> dict[str, np.ndarray]:
    """E-measure, Dice, sensitivity and specificity at thresholds ``k/255``, k = 0..255 (ascending)."""
    if specificity_rule not in SPECIFICITY_RULES:
        raise ValueError(f"specificity_rule must be one of {SPECIFICITY_RULES}, got {specificity_rule!r}")
    tp, fp = _threshold_counts(pred, gt)
    fg = int(np.count_nonzero(gt))
    bg = gt.size - fg
    fn = fg - tp
    tn = bg - fp
    specificity = _safe_divide(tn, tn + fp)
    if specificity_rule == "infnet":
        specificity[tp == 0] = 0.0  # Fmeasure_calu.m: every output is 0 when TP == 0
    return {
        "e_measure": np.asarray(_enhanced_alignment(tp, fp, fg, gt.size), dtype=np.float64),
        "dice": _safe_divide(2 * tp, tp + fn + tp + fp),
        "sensitivity": _safe_divide(tp, tp + fn),
        "specificity": specificity,
    }
