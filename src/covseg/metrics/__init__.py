"""Evaluation toolbox: pure per-case functions and accumulating classes for two protocols.

* ``medical`` – hard masks (threshold / argmax) at the ground truth's resolution, per class:
  Dice, IoU, precision, sensitivity, specificity, HD95, ASSD, NSD (distances in mm, identical to
  MONAI 1.6). See ``covseg.metrics.medical`` and ``covseg.metrics.surface``.
* ``sod`` – the salient-object protocol behind the published Inf-Net / COVID-SemiSeg numbers:
  S-measure, E-measure, weighted F-measure, MAE and mean/max Dice, sensitivity, specificity over
  256 thresholds of the min-max normalised soft map (identical to pysodmetrics 1.6). See
  ``covseg.metrics.sod``.

Accumulators follow MONAI's pattern: ``update(pred, gt, spacing=None, case_id=None)``,
``per_case()``, ``aggregate(reduction="nanmean")``, ``reset()``. Folder evaluation (the
``covseg evaluate`` command) lives in ``covseg.metrics.evaluation``. Nothing here imports torch or
monai; torch tensors are accepted as inputs.
"""

from covseg.metrics.base import MetricAccumulator, summarize
from covseg.metrics.flare import FLARE_METRICS, FlareMetrics
from covseg.metrics.medical import MEDICAL_METRICS, MedicalMetrics, medical_metrics, score_binary
from covseg.metrics.overlap import (
    confusion_counts,
    dice,
    iou,
    overlap_from_counts,
    overlap_metrics,
    precision,
    sensitivity,
    specificity,
)
from covseg.metrics.sod import (
    SOD_METRICS,
    SodMetrics,
    adaptive_e_measure,
    e_measure_curve,
    mae,
    prepare_sod_inputs,
    s_measure,
    sod_curves,
    sod_metrics,
    weighted_f_measure,
)
from covseg.metrics.surface import (
    average_symmetric_surface_distance,
    hausdorff_distance,
    normalized_surface_dice,
    surface_distances,
    surface_metrics,
)

PROTOCOLS = {"medical": MedicalMetrics, "sod": SodMetrics, "flare": FlareMetrics}

__all__ = [
    "FLARE_METRICS",
    "MEDICAL_METRICS",
    "PROTOCOLS",
    "SOD_METRICS",
    "FlareMetrics",
    "MedicalMetrics",
    "MetricAccumulator",
    "SodMetrics",
    "adaptive_e_measure",
    "average_symmetric_surface_distance",
    "confusion_counts",
    "dice",
    "e_measure_curve",
    "hausdorff_distance",
    "iou",
    "mae",
    "medical_metrics",
    "normalized_surface_dice",
    "overlap_from_counts",
    "overlap_metrics",
    "precision",
    "prepare_sod_inputs",
    "s_measure",
    "score_binary",
    "sensitivity",
    "sod_curves",
    "sod_metrics",
    "specificity",
    "summarize",
    "surface_distances",
    "surface_metrics",
    "weighted_f_measure",
]
