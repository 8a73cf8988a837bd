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

The per-image measures live in :mod:`covseg.metrics.sod_measures` (importable from here as before);
this module holds the protocol: :func:`sod_metrics` for one case and :class:`SodMetrics` for a data set.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from covseg.metrics.base import MetricAccumulator, Reduction
from covseg.metrics.sod_measures import (
    EPS,
    NUM_THRESHOLDS,
    SPECIFICITY_RULES,
    SpecificityRule,
    adaptive_e_measure,
    e_measure_curve,
    mae,
    prepare_sod_inputs,
    s_measure,
    sod_curves,
    weighted_f_measure,
)

__all__ = [
    "CURVE_NAMES",
    "EPS",
    "NUM_THRESHOLDS",
    "SOD_METRICS",
    "SPECIFICITY_RULES",
    "TOOLBOXES",
    "SodMetrics",
    "SpecificityRule",
    "Toolbox",
    "adaptive_e_measure",
    "e_measure_curve",
    "mae",
    "prepare_sod_inputs",
    "s_measure",
    "sod_curves",
    "sod_metrics",
    "weighted_f_measure",
]

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
        self._curves.append(
            {name: values[::-1] for name, values in curves.items()}
        )  # ascending, as the default
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
