"""The ``medical`` protocol: hard masks at the ground truth's resolution, per class, with distances in mm.

Soft maps are binarised as ``p >= threshold`` (default 0.5); channel-first multi-class maps by
argmax; label maps are used as they are (see ``covseg.metrics._arrays``). For every class
``c = 1..K`` the masks ``pred == c`` and ``gt == c`` give Dice, IoU, precision, sensitivity
(recall), specificity (``covseg.metrics.overlap``) and HD95, ASSD, NSD at tolerance τ
(``covseg.metrics.surface``, identical to MONAI 1.6). Distances are in the units of ``spacing``:
millimetres when the spacing is given in mm, pixels/voxels when it is None.

Empty structures are scored by two explicit arguments: ``empty`` (what an undefined 0/0 ratio and
a both-empty case become: ``"nan"``, ``"one"`` or ``"zero"``) and ``empty_distance`` (HD95/ASSD
when exactly one side is empty: ``"nan"``, ``"max"`` = the image diagonal, or a number).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from covseg.metrics._arrays import PredType, gt_labels, normalise_spacing, prediction_labels
from covseg.metrics.base import MetricAccumulator, Reduction, summarize
from covseg.metrics.overlap import (
    EMPTY_POLICIES,
    OVERLAP_METRICS,
    EmptyPolicy,
    confusion_counts,
    overlap_from_counts,
)
from covseg.metrics.surface import SURFACE_METRICS, EmptyDistance, resolve_empty_distance, surface_metrics

MEDICAL_METRICS: tuple[str, ...] = OVERLAP_METRICS + SURFACE_METRICS


def score_binary(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    tolerance: float = 1.0,
    empty: EmptyPolicy = "nan",
    empty_distance: EmptyDistance = "nan",
    surface: bool = True,
) -> dict[str, float]:
    """All medical metrics of two boolean masks of the same shape, plus ``gt_voxels`` and ``pred_voxels``."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    counts = confusion_counts(pred, gt)
    out: dict[str, Any] = overlap_from_counts(**counts, empty=empty)
    if surface:
        out.update(
            surface_metrics(
                pred, gt, spacing, tolerance=tolerance, empty=empty, empty_distance=empty_distance
            )
        )
    out["gt_voxels"] = counts["tp"] + counts["fn"]
    out["pred_voxels"] = counts["tp"] + counts["fp"]
    return out


def medical_metrics(
    pred: Any,
    gt: Any,
    spacing: Sequence[float] | float | None = None,
    *,
    num_classes: int = 1,
    threshold: float = 0.5,
    tolerance: float = 1.0,
    empty: EmptyPolicy = "nan",
    empty_distance: EmptyDistance = "nan",
    pred_type: PredType = "auto",
    surface: bool = True,
    voxel_ml: float | None = None,
) -> list[dict[str, Any]]:
    """Score one case: a list with one dict per class ``1..num_classes`` (key ``class``).

    ``pred`` and ``gt`` must already have the same spatial shape (numpy arrays or torch tensors);
    ``spacing`` is one number or one per axis, in mm. Volumes with a spacing also get each class's
    volume in ml (``gt_ml``, ``pred_ml``): one voxel is ``voxel_ml`` when given (``|det(affine)|``, right on
    sheared grids), else the product of the spacing.
    """
    g = gt_labels(gt, num_classes)
    p = prediction_labels(pred, g.shape, num_classes=num_classes, threshold=threshold, pred_type=pred_type)
    sp = normalise_spacing(spacing, g.ndim)
    rows = []
    for c in range(1, num_classes + 1):
        pm, gm = (p > 0, g > 0) if num_classes == 1 else (p == c, g == c)
        rows.append(
            {
                "class": c,
                **score_binary(
                    pm,
                    gm,
                    sp,
                    tolerance=tolerance,
                    empty=empty,
                    empty_distance=empty_distance,
                    surface=surface,
                ),
            }
        )
        if sp is not None and g.ndim == 3:
            ml = float(np.prod(sp)) / 1000.0 if voxel_ml is None else float(voxel_ml)
            rows[-1]["gt_ml"] = rows[-1]["gt_voxels"] * ml
            rows[-1]["pred_ml"] = rows[-1]["pred_voxels"] * ml
    return rows


class MedicalMetrics(MetricAccumulator):
    """Accumulate the medical protocol over cases.

        >>> m = MedicalMetrics(threshold=0.5, tolerance=1.0)
        >>> m.update(pred, gt, spacing=(0.7, 0.7), case_id="0001")   # doctest: +SKIP
        >>> m.aggregate()["metrics"]["dice"]["mean"]                  # doctest: +SKIP

    ``per_case()`` gives one record per case and class: ``case_id``, ``class``, the metrics,
    ``gt_voxels``, ``pred_voxels`` and ``spacing``. ``aggregate()`` summarises every metric over all
    (case, class) records under ``metrics`` and per class under ``per_class``.
    """

    protocol = "medical"
    primary_metric = "dice"
    higher_is_better = {
        "dice": True,
        "iou": True,
        "precision": True,
        "sensitivity": True,
        "specificity": True,
        "miou": True,
        "hd95": False,
        "assd": False,
        "nsd": True,
    }

    def __init__(
        self,
        *,
        num_classes: int = 1,
        threshold: float = 0.5,
        tolerance: float = 1.0,
        empty: EmptyPolicy = "nan",
        empty_distance: EmptyDistance = "nan",
        pred_type: PredType = "auto",
        surface: bool = True,
    ) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        if empty not in EMPTY_POLICIES:
            raise ValueError(f"empty must be one of {EMPTY_POLICIES}, got {empty!r}")
        resolve_empty_distance(empty_distance, (2,), None)  # validate now, not at the first empty case
        if not (float(tolerance) >= 0 and np.isfinite(tolerance)):
            raise ValueError(f"tolerance must be a finite non-negative number, got {tolerance}")
        self.num_classes = int(num_classes)
        self.threshold = float(threshold)
        self.tolerance = float(tolerance)
        self.empty = empty
        self.empty_distance = empty_distance
        self.pred_type = pred_type
        self.surface = bool(surface)
        self.metric_names = MEDICAL_METRICS if surface else OVERLAP_METRICS

    @property
    def params(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "threshold": self.threshold,
            "binarisation": "argmax over channels; otherwise soft map p >= threshold",
            "tolerance": self.tolerance,
            "empty": self.empty,
            "empty_distance": self.empty_distance,
            "pred_type": self.pred_type,
            "surface_metrics": self.surface,
            "hd95": "max of the two directed 95th percentiles (MONAI compute_hausdorff_distance, percentile=95)",
            "assd": "mean of pooled directed surface distances (MONAI symmetric=True)",
            "nsd": "surface voxels within tolerance / all surface voxels (MONAI use_subvoxels=False)",
        }

    def update(
        self, pred: Any, gt: Any, spacing: Sequence[float] | float | None = None, case_id: str | None = None, voxel_ml: float | None = None
    ) -> list[dict[str, Any]]:
        """Score one case (validated before anything is recorded) and return its records; ``voxel_ml`` as in
        :func:`medical_metrics`."""
        records = self.case_records(pred, gt, spacing, case_id, voxel_ml=voxel_ml)
        self.add_records(self._case_id_for(case_id), records)
        return [dict(r) for r in records]

    def _case_id_for(self, case_id: str | None) -> str:
        return f"case{len(self._case_ids):05d}" if case_id is None else str(case_id)

    def case_records(
        self,
        pred: Any,
        gt: Any,
        spacing: Any = None,
        case_id: str | None = None,
        voxel_ml: float | None = None,
    ) -> list[dict[str, Any]]:
        """The case's records (``case_id``, class, metrics, voxel counts, spacing) without recording them."""
        rows = medical_metrics(
            pred,
            gt,
            spacing,
            num_classes=self.num_classes,
            threshold=self.threshold,
            tolerance=self.tolerance,
            empty=self.empty,
            empty_distance=self.empty_distance,
            pred_type=self.pred_type,
            surface=self.surface,
            voxel_ml=voxel_ml,
        )
        ndim = np.ndim(gt) if not hasattr(gt, "ndim") else gt.ndim
        sp = normalise_spacing(spacing, ndim)
        cid = self._case_id_for(case_id)
        return [{"case_id": cid, **row, "spacing": sp} for row in rows]

    def aggregate(self, reduction: Reduction = "nanmean") -> dict[str, Any]:
        """Overall statistics (all case × class records) plus ``per_class`` statistics."""
        out = super().aggregate(reduction)
        out["per_class"] = {
            str(c): {
                m: summarize((r[m] for r in self._records if r["class"] == c), reduction)
                for m in self.metric_names
            }
            for c in range(1, self.num_classes + 1)
        }
        with_spacing = {r["spacing"] is not None for r in self._records}
        out["distance_unit"] = {
            frozenset({True}): "mm (spacing units)",
            frozenset({False}): "voxel",
            frozenset({True, False}): "mixed: mm where a case has a spacing, voxels otherwise",
        }.get(frozenset(with_spacing), "none")
        return out
