"""The ``flare`` protocol: FLARE22's evaluation table (the SemiSeg-CSSN benchmark).

FLARE22 scores every organ (class ``1..K``) of every case by DSC and NSD (normalised surface
Dice at a tolerance of 1 mm), and every case by its inference seconds and peak memory. Here:

* :class:`FlareMetrics` is the ``medical`` protocol restricted to ``dice`` and ``nsd`` (the same
  functions: NSD counts surface voxels within τ, MONAI's ``compute_surface_dice`` with
  ``use_subvoxels=False``; FLARE's own script weighs surface elements by their area, DeepMind's
  ``surface_distance``, which differs from this at the edges of a discrete surface);
* :func:`attach_timings` reads ``seconds`` and ``peak_memory_mb`` per case from the
  ``predictions.csv`` that ``covseg predict`` writes beside its masks (CPU: the process's peak
  resident memory; CUDA: ``max_memory_allocated``) and puts them into the per-case rows;
* :func:`flare_table` makes the wide table (one row per case: ``dsc_<class>``, ``nsd_<class>``,
  seconds, memory) and its mean row, recorded in ``summary.json`` under ``flare``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from covseg.data.imageio import stem_of
from covseg.errors import DataError
from covseg.metrics.base import Reduction, summarize
from covseg.metrics.medical import MedicalMetrics
from covseg.metrics.overlap import EmptyPolicy

FLARE_METRICS: tuple[str, ...] = ("dice", "nsd")
TIMING_COLUMNS: tuple[str, ...] = ("seconds", "peak_memory_mb")
PREDICTIONS_FILE = "predictions.csv"
_KEEP = ("case_id", "class", *FLARE_METRICS, "gt_voxels", "pred_voxels", "spacing")


class FlareMetrics(MedicalMetrics):
    """DSC and NSD (tolerance in mm, default 1 mm as FLARE22) per case and class.

        >>> m = FlareMetrics(num_classes=13)
        >>> m.update(pred, gt, spacing=(0.8, 0.8, 2.5), case_id="FLARE22_Tr_0001")   # doctest: +SKIP
    """

    protocol = "flare"
    higher_is_better = {"dice": True, "nsd": True}

    def __init__(
        self,
        *,
        num_classes: int = 1,
        threshold: float = 0.5,
        tolerance: float = 1.0,
        empty: EmptyPolicy = "nan",
        pred_type: Any = "auto",
    ) -> None:
        super().__init__(
            num_classes=num_classes, threshold=threshold, tolerance=tolerance, empty=empty, pred_type=pred_type
        )
        self.metric_names = FLARE_METRICS

    @property
    def params(self) -> dict[str, Any]:
        keep = ("num_classes", "threshold", "binarisation", "tolerance", "empty", "pred_type", "nsd")
        return {k: v for k, v in super().params.items() if k in keep}

    def case_records(
        self,
        pred: Any,
        gt: Any,
        spacing: Any = None,
        case_id: str | None = None,
        voxel_ml: float | None = None,
    ) -> list[dict[str, Any]]:
        """One case's records, keeping DSC, NSD, voxel counts and spacing (``update`` records these)."""
        records = super().case_records(pred, gt, spacing, case_id, voxel_ml=voxel_ml)
        return [{k: r[k] for k in _KEEP if k in r} for r in records]


def _case_keys(name: str) -> list[str]:
    """A predicted file's stem, and that stem without an nnU-Net channel suffix (``case_0000`` → ``case``)."""
    stem = stem_of(Path(name))
    base = stem[:-5] if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit() else stem
    return [stem] if base == stem else [stem, base]


def find_timings(pred_dir: Path) -> Path | None:
    """``predictions.csv`` beside or above the prediction folder (``pred/masks`` → ``pred/``)."""
    for folder in (Path(pred_dir), Path(pred_dir).parent):
        if (folder / PREDICTIONS_FILE).is_file():
            return folder / PREDICTIONS_FILE
    return None


def read_timings(path: Path) -> dict[str, dict[str, float]]:
    """``{case stem: {"seconds": s, "peak_memory_mb": mb}}`` from a ``covseg predict`` index file."""
    from covseg.data.text_sources import _csv_rows

    header, rows = _csv_rows(Path(path))
    cols = {name: header.index(name) for name in (*TIMING_COLUMNS, "mask", "input") if name in header}
    if "seconds" not in cols or not ({"mask", "input"} & set(cols)):
        raise DataError("no seconds and mask/input columns: not a covseg predict index", path)
    out: dict[str, dict[str, float]] = {}
    for line, cells in rows:
        try:
            values = {name: float(cells[cols[name]]) for name in TIMING_COLUMNS if name in cols and cells[cols[name]] != ""}
        except (ValueError, IndexError):
            raise DataError(f"row {line}: seconds / peak memory are not numbers", path) from None
        for column in ("mask", "input"):
            if column in cols and cols[column] < len(cells):
                for key in _case_keys(cells[cols[column]]):
                    out.setdefault(key, values)
    return out


def attach_timings(run: Any, timings: dict[str, dict[str, float]]) -> int:
    """Add each case's seconds and peak memory to the run's per-case rows; returns how many cases had them."""
    per_case = run.extras.setdefault("per_case", {})
    found = 0
    for case in run.cases:
        t = timings.get(case.case_id)
        if t is None and case.pred_path is not None:
            t = next((timings[k] for k in _case_keys(case.pred_path.name) if k in timings), None)
        if t is not None:
            per_case.setdefault(case.case_id, {}).update(t)
            found += 1
    return found


def flare_table(run: Any, reduction: Reduction = "nanmean") -> dict[str, Any]:
    """FLARE's table of a scored run: per case ``dsc_<c>``, ``nsd_<c>``, seconds, memory; per class and overall means."""
    acc = run.accumulator
    classes = list(range(1, acc.num_classes + 1))
    extra = run.extras.get("per_case", {})
    rows: dict[str, dict[str, Any]] = {}
    for rec in acc.per_case():
        row = rows.setdefault(rec["case_id"], {"case_id": rec["case_id"]})
        row[f"dsc_{rec['class']}"] = rec["dice"]
        row[f"nsd_{rec['class']}"] = rec["nsd"]
    for cid, row in rows.items():
        dsc = [row[f"dsc_{c}"] for c in classes if not math.isnan(row[f"dsc_{c}"])]
        nsd = [row[f"nsd_{c}"] for c in classes if not math.isnan(row[f"nsd_{c}"])]
        row["mean_dsc"] = float(np.mean(dsc)) if dsc else float("nan")
        row["mean_nsd"] = float(np.mean(nsd)) if nsd else float("nan")
        row.update({k: extra.get(cid, {}).get(k, float("nan")) for k in TIMING_COLUMNS})
    columns = [f"{m}_{c}" for c in classes for m in ("dsc", "nsd")] + ["mean_dsc", "mean_nsd", *TIMING_COLUMNS]
    means = {col: summarize((r[col] for r in rows.values()), reduction)["mean"] for col in columns}
    return {
        "tolerance_mm": acc.tolerance,
        "columns": ["case_id", *columns],
        "cases": list(rows.values()),
        "mean": means,
        "per_class": {str(c): {"dsc": means[f"dsc_{c}"], "nsd": means[f"nsd_{c}"]} for c in classes},
        "timed_cases": sum(not math.isnan(r["seconds"]) for r in rows.values()),
    }
