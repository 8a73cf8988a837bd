"""The ``sod`` protocol: the salient-object evaluation used for the published COVID-SemiSeg (Inf-Net) numbers.

It scores the *soft* map, 2D only, and matches ``py_sod_metrics`` 1.6 (pysodmetrics) to 1e-6:

* **preparation** – integer maps are divided by 255 (MATLAB ``im2double``), then every map is
  min-max normalised per image (``mapminmax``; a constant map is left as it is); the ground
  truth is foreground where its label is non-zero (the MATLAB toolbox and pysodmetrics use
  ``gt > 128`` on 0..255 PNGs, which is the same for 0/255 masks but would make 0/1 masks empty);
* **thresholds** – 256 thresholds ``t_k = k/255``, ``k = 0..255``; pixel ``p`` is foreground at
  ``t_k`` when ``floor(255·p) >= k`` (pysodmetrics: ``(pred * 255).astype(uint8)`` + cumulative
  histograms). Inf-Net's MATLAB ``main.m`` loops ``Thresholds = 1:-1/255:0`` and tests
  ``resmap >= threshold`` on the continuous map: the same set, except for pixels lying within
  floating-point rounding of a threshold;
* **thresholded Dice, sensitivity, specificity** per threshold from TP/FP/FN/TN:
  ``2TP/(2TP+FP+FN)``, ``TP/(TP+FN)``, ``TN/(TN+FP)``, 0 where a denominator is 0
  (pysodmetrics ``FmeasureV2`` ``DICEHandler`` / ``SensitivityHandler`` / ``SpecificityHandler``).
  Inf-Net's ``Fmeasure_calu.m`` differs in one respect: when ``TP == 0`` it sets *every* output,
  specificity included, to 0. ``specificity_rule="infnet"`` reproduces that; the default
  ``"pysodmetrics"`` does not;
* **mean / max** – for one image, ``mean_x`` / ``max_x`` are the mean / max of its 256-point
  curve. For a data set the toolbox averages the curves over images first and then takes the
  mean / max over thresholds: ``meanDic = mean_t mean_i Dice(i, t)`` (equal to the mean of
  per-image ``mean_dice``), ``maxDic = max_t mean_i Dice(i, t)`` (a single threshold for the whole
  data set, *not* the mean of per-image maxima). ``SodMetrics.aggregate()`` reports the toolbox
  numbers under ``toolbox`` and the per-image distributions under ``metrics``;
* **resizing** – the MATLAB script resizes a map of the wrong size with ``imresize`` (bicubic) and
  writes it back over the prediction file; ``covseg evaluate`` resizes bilinearly in memory and
  never modifies its inputs;
* **MATLAB variant** – ``SodMetrics(toolbox="matlab")`` (``covseg evaluate --toolbox matlab``)
  reproduces Inf-Net's MATLAB toolbox instead, to 1e-12 and NaN included, as it was when the
  published numbers were made (commit ``fb3a03b``; ``"matlab-2020-11"``: commit ``e723632``, whose
  E-measure binarises at ``>=``) (:mod:`covseg.metrics.sod_matlab`): its ``1:-1/255:0``
  thresholds, half-away-from-zero centroid rounding, S-measure clamped at 0, NaN specificity on an
  all-foreground ground truth, NaN S-measure where a quadrant is empty;
* **S-measure** (Fan et al. ICCV'17, α = 0.5; where the ground truth touches the right or bottom
  edge, a quadrant of the region term is empty: pysodmetrics and the MATLAB toolbox give NaN,
  covseg gives that quadrant weight 0, which is its weight in the formula), **E-measure** (Fan et al. IJCAI'18: curve over the
  256 thresholds, and adaptive with threshold ``min(2·mean(p), 1)`` on the continuous map),
  **weighted F-measure** (Margolin et al. CVPR'14, β² = 1, MATLAB ``fspecial('gaussian', 7, 5)``),
  **MAE** = ``mean(|p − gt|)``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from covseg.metrics._arrays import gt_labels, soft_map
from covseg.metrics.base import MetricAccumulator, Reduction

EPS = float(np.spacing(1))  # MATLAB's eps, used where the reference implementations use it
NUM_THRESHOLDS = 256
SpecificityRule = Literal["pysodmetrics", "infnet"]
SPECIFICITY_RULES: tuple[str, ...] = ("pysodmetrics", "infnet")
Toolbox = Literal["pysodmetrics", "matlab", "matlab-2020-11"]
TOOLBOXES: tuple[str, ...] = ("pysodmetrics", "matlab", "matlab-2020-11")
CURVE_NAMES: tuple[str, ...] = ("e_measure", "dice", "sensitivity", "specificity")
SOD_METRICS: tuple[str, ...] = (
    "s_measure",
    "weighted_f_measure",
    "mae",
    "adaptive_e_measure",
    "mean_e_measure",
    "max_e_measure",
    "mean_dice",
    "max_dice",
    "mean_sensitivity",
    "max_sensitivity",
    "mean_specificity",
    "max_specificity",
)


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


def sod_metrics(
    pred: Any,
    gt: Any,
    *,
    alpha: float = 0.5,
    beta2: float = 1.0,
    specificity_rule: SpecificityRule = "pysodmetrics",
    return_curves: bool = False,
) -> dict[str, Any]:
    """Every sod metric of one 2D case (raw soft map and mask in; preparation as in the module docstring).

    With ``return_curves`` the 256-point curves are added under ``curves``.
    """
    p, g = prepare_sod_inputs(pred, gt)
    curves = sod_curves(p, g, specificity_rule)
    out: dict[str, Any] = {
        "s_measure": s_measure(p, g, alpha),
        "weighted_f_measure": weighted_f_measure(p, g, beta2),
        "mae": mae(p, g),
        "adaptive_e_measure": adaptive_e_measure(p, g),
    }
    for name in CURVE_NAMES:
        out[f"mean_{name}"] = float(np.mean(curves[name]))
        out[f"max_{name}"] = float(np.max(curves[name]))
    if return_curves:
        out["curves"] = curves
    return out


class SodMetrics(MetricAccumulator):
    """Accumulate the sod protocol; ``aggregate()`` adds the toolbox numbers and the mean curves.

    ``aggregate()["toolbox"]`` holds what the Inf-Net toolbox / pysodmetrics report for the data
    set (``max_*`` = max over thresholds of the image-averaged curve); ``aggregate()["metrics"]``
    summarises the per-image values (``max_*`` there is each image's own best threshold).
    """

    protocol = "sod"
    primary_metric = "mean_dice"
    metric_names = SOD_METRICS
    higher_is_better = {m: m != "mae" for m in SOD_METRICS}

    def __init__(
        self,
        *,
        alpha: float = 0.5,
        beta2: float = 1.0,
        specificity_rule: SpecificityRule = "pysodmetrics",
        toolbox: Toolbox = "pysodmetrics",
    ) -> None:
        super().__init__()
        if toolbox not in TOOLBOXES:
            raise ValueError(f"toolbox must be one of {TOOLBOXES}, got {toolbox!r}")
        self.toolbox = toolbox
        if specificity_rule not in SPECIFICITY_RULES:
            raise ValueError(f"specificity_rule must be one of {SPECIFICITY_RULES}, got {specificity_rule!r}")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.beta2 = float(beta2)
        self.specificity_rule = specificity_rule
        self._curves: list[dict[str, np.ndarray]] = []

    @property
    def matlab(self) -> bool:
        """True for the MATLAB-toolbox variants (:mod:`covseg.metrics.sod_matlab`)."""
        return self.toolbox != "pysodmetrics"

    @property
    def params(self) -> dict[str, Any]:
        if self.matlab:
            from covseg.metrics.sod_matlab import TOOLBOX_VERSIONS

            version = TOOLBOX_VERSIONS[self.toolbox]
            e_at = ">= t" if version.e_inclusive else "> t"
            return {
                "toolbox": self.toolbox,
                "alpha": self.alpha,
                "normalisation": "im2double by type, then mapminmax(x, 0, 1)",
                "thresholds": f"1:-1/255:0 (MATLAB colon); Dice/Sen/Spe at p >= t, E-measure at p {e_at}",
                "s_measure": "StructureMeasure.m: clamped at 0 unless the ground truth is empty or full; NaN where a quadrant is empty",
                "gt": "files: main.m's gt(:,:,1) > 128 (colour via rgb2gray, 1-bit as stored; a 0/1 mask is empty); "
                "arrays: foreground where non-zero",
                "reference": f"Inf-Net EvaluationTool (github.com/DengPingFan/Inf-Net) at commit {version.commit} "
                f"({version.date}): main.m, Fmeasure_calu.m, StructureMeasure.m, Enhancedmeasure.m",
            }
        return {
            "toolbox": "pysodmetrics",
            "alpha": self.alpha,
            "beta2": self.beta2,
            "specificity_rule": self.specificity_rule,
            "normalisation": "integer maps / 255, then per-image min-max",
            "thresholds": "k/255 for k = 0..255; foreground where floor(255 p) >= k",
            "gt": "foreground where label > 0",
            "reference": "py_sod_metrics 1.6 (Smeasure, Emeasure, WeightedFmeasure, MAE, FmeasureV2 handlers)",
        }

    def update(self, pred: Any, gt: Any, spacing: Any = None, case_id: str | None = None) -> dict[str, Any]:
        """Score one case; ``spacing`` is accepted for a uniform interface and ignored (pixel-based protocol)."""
        if self.matlab:
            return self._update_matlab(pred, gt, case_id)
        result = sod_metrics(
            pred,
            gt,
            alpha=self.alpha,
            beta2=self.beta2,
            specificity_rule=self.specificity_rule,
            return_curves=True,
        )
        curves = result.pop("curves")
        record = {"case_id": self._next_case_id(case_id), **result}
        self._records.append(record)
        self._curves.append(curves)
        return dict(record)

    def _update_matlab(self, pred: Any, gt: Any, case_id: str | None) -> dict[str, Any]:
        from covseg.metrics import sod_matlab

        scores, curves, (p, g) = sod_matlab.case_metrics(pred, gt, self.alpha, self.toolbox)
        # not part of main.m: computed as in the default variant, left out of the toolbox numbers
        scores["weighted_f_measure"] = weighted_f_measure(p, g, self.beta2)
        scores["adaptive_e_measure"] = adaptive_e_measure(p, g)
        record = {"case_id": self._next_case_id(case_id), **{m: scores[m] for m in SOD_METRICS}}
        self._records.append(record)
        self._curves.append({name: values[::-1] for name, values in curves.items()})  # ascending, as the default
        return dict(record)

    def reset(self) -> None:
        super().reset()
        self._curves.clear()

    def mean_curves(self) -> dict[str, np.ndarray]:
        """Each curve averaged over images (ascending thresholds ``k/255``)."""
        if not self._curves:
            return {name: np.full(NUM_THRESHOLDS, np.nan) for name in CURVE_NAMES}
        return {name: np.mean([c[name] for c in self._curves], axis=0) for name in CURVE_NAMES}

    def aggregate(self, reduction: Reduction = "nanmean") -> dict[str, Any]:
        out = super().aggregate(reduction)
        if self.matlab:
            from covseg.metrics import sod_matlab

            descending = [{k: v[::-1] for k, v in c.items()} for c in self._curves]
            out["toolbox"] = sod_matlab.toolbox_numbers(self._records, descending)
            curves = self.mean_curves()
            out["curves"] = {
                "threshold": sod_matlab.matlab_thresholds()[::-1].tolist(),
                **{name: curves[name].tolist() for name in CURVE_NAMES},
            }
            return out
        curves = self.mean_curves()
        toolbox: dict[str, float] = {
            m: out["metrics"][m]["mean"]
            for m in ("s_measure", "weighted_f_measure", "mae", "adaptive_e_measure")
        }
        for name in CURVE_NAMES:
            toolbox[f"mean_{name}"] = float(np.mean(curves[name]))
            toolbox[f"max_{name}"] = float(np.max(curves[name]))
        out["toolbox"] = toolbox
        out["curves"] = {
            "threshold": (np.arange(NUM_THRESHOLDS) / 255).tolist(),
            **{name: curves[name].tolist() for name in CURVE_NAMES},
        }
        return out
