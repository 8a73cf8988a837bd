"""The ``flare`` protocol: FLARE22's evaluation table (the SemiSeg-CSSN benchmark).

FLARE scores every organ (class ``1..K``) of every case by DSC and NSD (normalised surface Dice at
a tolerance τ in mm), and every case by its inference seconds and peak memory. Here:

* :class:`FlareMetrics` gives DSC and NSD per case and class. NSD is by default FLARE's own
  (``nsd="surfel"``): DeepMind's ``surface_distance``, which FLARE's ``SurfaceDice.py`` copies, weighs
  each surface element by its area (:mod:`covseg.metrics.surface_area`, checked against the library).
  ``nsd="voxel"`` instead counts surface voxels (MONAI ``compute_surface_dice``, the ``medical``
  protocol's NSD). ``tolerance`` is one number for all classes (1 mm by default, FLARE21's) or
  ``"flare22"``: FLARE22's script, :data:`FLARE22_TOLERANCES_MM` per organ and its rules (see
  :class:`FlareMetrics`);
* :func:`attach_timings` reads ``seconds`` and ``peak_memory_mb`` per case from the
  ``predictions.csv`` that ``covseg predict`` writes beside its masks (CPU: the process's peak
  resident memory; CUDA: ``max_memory_allocated``) and puts them into the per-case rows;
* :func:`flare_table` makes the wide table (one row per case: ``dsc_<class>``, ``nsd_<class>``,
  seconds, memory) and its mean row, recorded in ``summary.json`` under ``flare``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from covseg.data.imageio import stem_of
from covseg.errors import DataError
from covseg.metrics._arrays import gt_labels, normalise_spacing, prediction_labels
from covseg.metrics.base import Reduction, summarize
from covseg.metrics.medical import MedicalMetrics
from covseg.metrics.overlap import EmptyPolicy, empty_value
from covseg.metrics.surface_area import surfel_surface_dice

FLARE_METRICS: tuple[str, ...] = ("dice", "nsd")
TIMING_COLUMNS: tuple[str, ...] = ("seconds", "peak_memory_mb")
PREDICTIONS_FILE = "predictions.csv"
NSD_KINDS: tuple[str, ...] = ("surfel", "voxel")
_KEEP = ("case_id", "class", *FLARE_METRICS, "gt_voxels", "pred_voxels", "spacing")

# FLARE22/Evaluation/FLARE22_DSC_NSD_Eval.py (github.com/JunMa11/FLARE): τ in mm per organ label.
FLARE22_ORGANS: dict[int, str] = {
    1: "liver", 2: "right kidney", 3: "spleen", 4: "pancreas", 5: "aorta", 6: "inferior vena cava",
    7: "right adrenal gland", 8: "left adrenal gland", 9: "gallbladder", 10: "esophagus", 11: "stomach",
    12: "duodenum", 13: "left kidney",
}  # fmt: skip
FLARE22_TOLERANCES_MM: dict[int, float] = {
    1: 5.0, 2: 3.0, 3: 3.0, 4: 5.0, 5: 2.0, 6: 2.0, 7: 2.0, 8: 2.0, 9: 2.0, 10: 3.0, 11: 5.0, 12: 7.0, 13: 3.0,
}  # fmt: skip
FLARE22_SLAB_CLASSES: tuple[int, ...] = (5, 6, 10)  # aorta, IVC, esophagus: only the ground truth's slices
FLARE22_MIN_DICE = 0.2  # below it the script sets NSD to 0 without computing it


def _class_boxes(labels: np.ndarray, num_classes: int) -> list[tuple[slice, ...] | None]:
    """Bounding box of each class ``1..K`` of a label map (None when absent), in one pass."""
    from scipy import ndimage

    found = ndimage.find_objects(labels, max_label=num_classes)
    return list(found) + [None] * (num_classes - len(found))


def _union(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    if a is None or b is None:
        return a if b is None else b
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def _flare22_slab(gm: np.ndarray, pm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the ground truth's labelled slices along the last axis, as FLARE22's script
    cuts them: ``[:, :, z_lower:z_upper]``, which leaves the last labelled slice out."""
    z = np.flatnonzero(gm.any(axis=tuple(range(gm.ndim - 1))))
    return gm[..., z[0] : z[-1]], pm[..., z[0] : z[-1]]


def flare_scores(
    pm: np.ndarray,
    gm: np.ndarray,
    spacing: Sequence[float] | None,
    tolerance: float,
    *,
    empty: EmptyPolicy = "nan",
    flare22_class: int | None = None,
) -> tuple[float, float]:
    """``(DSC, NSD)`` of one class's boolean masks, NSD by surfel area (FLARE's ``SurfaceDice.py``).

    One mask empty: DSC = NSD = 0; both empty: the ``empty`` policy. ``flare22_class`` applies
    FLARE22's script to that organ label: both empty score 1, the slab rule of
    :data:`FLARE22_SLAB_CLASSES`, NSD 0 when DSC < 0.2, both rounded to 4 decimals."""
    n_gt, n_pred = int(np.count_nonzero(gm)), int(np.count_nonzero(pm))
    if n_gt == 0 or n_pred == 0:
        both = 1.0 if flare22_class is not None else empty_value(empty)
        return (both, both) if n_gt == n_pred == 0 else (0.0, 0.0)
    if flare22_class in FLARE22_SLAB_CLASSES:
        gm, pm = _flare22_slab(gm, pm)
        n_gt, n_pred = int(np.count_nonzero(gm)), int(np.count_nonzero(pm))
    total = n_gt + n_pred
    dsc = 2.0 * int(np.count_nonzero(gm & pm)) / total if total else float("nan")
    if flare22_class is not None and dsc < FLARE22_MIN_DICE:
        return round(dsc, 4), 0.0
    nsd = surfel_surface_dice(pm, gm, spacing, tolerance)
    return (round(dsc, 4), round(nsd, 4)) if flare22_class is not None else (dsc, nsd)


class FlareMetrics(MedicalMetrics):
    """DSC and NSD per case and class; NSD by surfel area (FLARE's script) or by voxel count (MONAI).

        >>> m = FlareMetrics(num_classes=13, tolerance="flare22")
        >>> m.update(pred, gt, spacing=(0.8, 0.8, 2.5), case_id="FLARE22_Tr_0001")   # doctest: +SKIP

    ``tolerance="flare22"`` (13 classes) is FLARE22's ``FLARE22_DSC_NSD_Eval.py``: τ per organ
    (:data:`FLARE22_TOLERANCES_MM`), both masks empty → DSC = NSD = 1 (``empty`` does not apply),
    aorta / IVC / esophagus scored on the ground truth's slices only, NSD = 0 where DSC < 0.2, both
    rounded to 4 decimals. With a number, every class gets that τ and no other rule.
    """

    protocol = "flare"
    higher_is_better = {"dice": True, "nsd": True}

    def __init__(
        self,
        *,
        num_classes: int = 1,
        threshold: float = 0.5,
        tolerance: float | Literal["flare22"] = 1.0,
        empty: EmptyPolicy = "nan",
        pred_type: Any = "auto",
        nsd: Literal["surfel", "voxel"] = "surfel",
    ) -> None:
        if nsd not in NSD_KINDS:
            raise ValueError(f"nsd must be one of {NSD_KINDS}, got {nsd!r}")
        self.flare22 = tolerance == "flare22"
        if self.flare22 and (int(num_classes) != len(FLARE22_TOLERANCES_MM) or nsd != "surfel"):
            raise ValueError('tolerance="flare22" scores FLARE22\'s 13 organs (num_classes=13) by surfel NSD')
        super().__init__(
            num_classes=num_classes,
            threshold=threshold,
            tolerance=1.0 if self.flare22 else tolerance,  # type: ignore[arg-type]
            empty=empty,
            pred_type=pred_type,
        )
        self.nsd = nsd
        self.metric_names = FLARE_METRICS

    def class_tolerance(self, c: int) -> float:
        """τ (mm) of class ``c``."""
        return FLARE22_TOLERANCES_MM[c] if self.flare22 else self.tolerance

    @property
    def tolerances(self) -> dict[str, float]:
        """τ per class, as ``{"1": mm, ...}``."""
        return {str(c): self.class_tolerance(c) for c in range(1, self.num_classes + 1)}

    @property
    def params(self) -> dict[str, Any]:
        keep = ("num_classes", "threshold", "binarisation", "empty", "pred_type")
        out = {k: v for k, v in super().params.items() if k in keep}
        out["tolerance"] = "flare22" if self.flare22 else self.tolerance
        out["tolerances_mm"] = self.tolerances
        out["nsd"] = {
            "surfel": "surface Dice weighted by surfel area (DeepMind surface_distance, FLARE's SurfaceDice.py)",
            "voxel": "surface voxels within tolerance / all surface voxels (MONAI use_subvoxels=False)",
        }[self.nsd]
        if self.flare22:
            out["rules"] = (
                "FLARE22_DSC_NSD_Eval.py: both empty = 1, slabs for 5/6/10, NSD 0 below DSC 0.2, 4 decimals"
            )
        return out

    def case_records(
        self,
        pred: Any,
        gt: Any,
        spacing: Any = None,
        case_id: str | None = None,
        voxel_ml: float | None = None,
    ) -> list[dict[str, Any]]:
        """One case's records (DSC, NSD, voxel counts, spacing) without recording them (``update`` records them)."""
        if self.nsd == "voxel":
            records = super().case_records(pred, gt, spacing, case_id, voxel_ml=voxel_ml)
            return [{k: r[k] for k in _KEEP if k in r} for r in records]
        g = gt_labels(gt, self.num_classes)
        p = prediction_labels(
            pred, g.shape, num_classes=self.num_classes, threshold=self.threshold, pred_type=self.pred_type
        )
        sp = normalise_spacing(spacing, g.ndim)
        if self.num_classes == 1:
            g, p = (g > 0).astype(np.uint8), (p > 0).astype(np.uint8)
        boxes = zip(_class_boxes(p, self.num_classes), _class_boxes(g, self.num_classes))
        cid = self._case_id_for(case_id)
        records = []
        for c, (box_p, box_g) in enumerate(boxes, 1):
            box = _union(box_p, box_g)
            pm, gm = (p[box] == c, g[box] == c) if box is not None else (np.zeros(0, bool), np.zeros(0, bool))
            dsc, nsd = flare_scores(
                pm,
                gm,
                sp,
                self.class_tolerance(c),
                empty=self.empty,
                flare22_class=c if self.flare22 else None,
            )
            records.append({"case_id": cid, "class": c, "dice": dsc, "nsd": nsd, "gt_voxels": int(gm.sum()),
                            "pred_voxels": int(pm.sum()), "spacing": sp})  # fmt: skip
        return records


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
            values = {
                name: float(cells[cols[name]])
                for name in TIMING_COLUMNS
                if name in cols and cells[cols[name]] != ""
            }
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
    columns = [f"{m}_{c}" for c in classes for m in ("dsc", "nsd")] + [
        "mean_dsc",
        "mean_nsd",
        *TIMING_COLUMNS,
    ]
    means = {col: summarize((r[col] for r in rows.values()), reduction)["mean"] for col in columns}
    return {
        "tolerance_mm": "flare22" if getattr(acc, "flare22", False) else acc.tolerance,
        "tolerances_mm": acc.tolerances,
        "nsd": getattr(acc, "nsd", "voxel"),
        "columns": ["case_id", *columns],
        "cases": list(rows.values()),
        "mean": means,
        "per_class": {str(c): {"dsc": means[f"dsc_{c}"], "nsd": means[f"nsd_{c}"]} for c in classes},
        "timed_cases": sum(not math.isnan(r["seconds"]) for r in rows.values()),
    }
