"""Classification and explanation scores beside a folder evaluation (``covseg evaluate`` of a joint model).

``covseg predict`` of a joint model writes each image's class probabilities to
``predictions.csv`` (``p_<class>`` columns, class 0 the negative one); ``covseg explain`` writes
Grad-CAM and attention heatmaps (``heatmaps/<stem>_<kind>.npy``) and panels. Given those, an
evaluation also scores, over the cases it paired:

- classification (:class:`~covseg.metrics.classification.ClassificationMetrics`): labels from a
  labels CSV (``image,label``) or, by default, from the ground truth (non-empty mask = positive);
  per patient too (JCS's patient-level diagnosis) where the labels CSV has a ``patient`` column or a
  grouping rule (a regular expression whose first group, or whole match, of a case's stem is its patient);
- explanations (:class:`~covseg.metrics.explanation.ExplanationMetrics`): each heatmap's share
  inside the ground-truth lesion and the pointing game.

Results go into the run's ``extras`` (``summary`` entries, per-case columns, panels), which
:mod:`covseg.metrics.evaluation` writes without knowing what they are.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from covseg.data.imageio import stem_of
from covseg.errors import ConfigError, DataError
from covseg.metrics.classification import ClassificationMetrics
from covseg.metrics.evaluation import EvaluationRun, read_ground_truth
from covseg.metrics.explanation import ExplanationMetrics

PREDICTIONS_FILE = "predictions.csv"
HEATMAP_KINDS = ("gradcam", "attention")


def find_class_scores(pred_dir: Path) -> Path | None:
    """``predictions.csv`` with class probabilities beside or above the prediction folder (``pred/probs`` → ``pred/``)."""
    for folder in (Path(pred_dir), Path(pred_dir).parent):
        path = folder / PREDICTIONS_FILE
        if path.is_file() and read_class_scores(path)[0]:
            return path
    return None


def read_class_scores(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """``(class names, {stem: probabilities})`` from a predictions CSV's ``p_<class>`` columns (none: empty)."""
    from covseg.data.text_sources import _csv_rows, _find_column

    header, rows = _csv_rows(Path(path))
    columns = [i for i, h in enumerate(header) if h.startswith("p_")]
    if not columns:
        return [], {}
    icol = _find_column(header, ("input", "image"), Path(path))
    scores: dict[str, np.ndarray] = {}
    for line, cells in rows:
        try:
            values = np.array([float(cells[i]) for i in columns])
        except (ValueError, IndexError):
            raise DataError(f"row {line}: class probabilities are not numbers", path) from None
        scores[stem_of(Path(cells[icol]))] = values
    return [header[i][2:] for i in columns], scores


def patient_of(stem: str, pattern: re.Pattern[str] | None) -> str | None:
    """A case's patient by the grouping rule: the pattern's first group (or whole match) in the stem; None if no match."""
    if pattern is None:
        return None
    match = pattern.search(stem)
    if match is None:
        return None
    return match.group(1) if pattern.groups else match.group(0)


def attach_classification(
    run: EvaluationRun,
    scores_path: Path,
    labels_csv: Path | None = None,
    num_classes: int = 1,
    patient_pattern: str | None = None,
    patient_rule: str = "max",
) -> None:
    """Score the paired cases' class probabilities against labels (CSV, else derived from the ground truth),
    and per patient where the CSV's ``patient`` column or ``patient_pattern`` names one."""
    from covseg.data.labels import label_from_mask, read_labels_csv

    names, scores = read_class_scores(scores_path)
    if not names:
        raise DataError("no class probability columns (p_<class>) in the predictions CSV", scores_path)
    table = read_labels_csv(labels_csv, names) if labels_csv is not None else None
    by_stem = {stem_of(p): c for _, p, c in table.rows} if table is not None else {}
    patient_by_stem = {stem_of(p): pid for p, pid in table.patients.items()} if table is not None else {}
    try:
        pattern = re.compile(patient_pattern) if patient_pattern else None
    except re.error as exc:
        raise ConfigError(f"--patient-pattern {patient_pattern!r} is not a regular expression: {exc}") from None
    acc = ClassificationMetrics(len(names), class_names=names, patient_rule=patient_rule)
    missing = []
    for case in run.cases:
        probs = scores.get(case.case_id)
        if probs is None:
            missing.append(case.case_id)
            continue
        label = by_stem.get(case.case_id) if table is not None else label_from_mask(read_ground_truth(case.gt_path, num_classes)[0])
        if label is None:
            missing.append(case.case_id)
            continue
        patient = patient_by_stem.get(case.case_id) or patient_of(case.case_id, pattern)
        acc.update(probs, label, case_id=case.case_id, patient=patient)
    if not len(acc):
        raise DataError("no evaluated case has both class probabilities and a label", scores_path)
    summary = acc.aggregate()
    summary["labels_from"] = f"labels CSV {labels_csv}" if labels_csv is not None else "ground truth (non-empty mask = positive)"
    summary["scores_from"] = str(scores_path)
    summary["cases_without_score_or_label"] = missing
    run.extras.setdefault("summary", {})["classification"] = summary
    per_case = run.extras.setdefault("per_case", {})
    for row in acc.per_case():
        per_case.setdefault(row["case_id"], {}).update({k: v for k, v in row.items() if k != "case_id"})


def attach_explanations(run: EvaluationRun, explain_dir: Path, tolerance: float = 0.0, num_classes: int = 1, show: int = 6) -> None:
    """Score ``covseg explain`` heatmaps against the ground truth; keep panels for the report."""
    heatmaps = Path(explain_dir) / "heatmaps"
    if not heatmaps.is_dir():
        raise DataError("not a covseg explain output (no heatmaps/ folder)", explain_dir)
    accs = {kind: ExplanationMetrics(kind, tolerance) for kind in HEATMAP_KINDS}
    per_case = run.extras.setdefault("per_case", {})
    for case in run.cases:
        gt = None
        for kind, acc in accs.items():
            path = heatmaps / f"{case.case_id}_{kind}.npy"
            if not path.is_file():
                continue
            gt = read_ground_truth(case.gt_path, num_classes)[0] if gt is None else gt
            heat = np.load(path, allow_pickle=False).astype(np.float64)
            if heat.shape != gt.shape:
                raise DataError(f"heatmap {heat.shape} differs from the ground truth {gt.shape}", path)
            rec = acc.update(heat, gt, case_id=case.case_id)
            per_case.setdefault(case.case_id, {}).update(
                {f"{kind}_inside_share": rec["inside_share"], f"{kind}_pointing_hit": rec["pointing_hit"]}
            )
    found = {kind: acc.aggregate() for kind, acc in accs.items() if len(acc)}
    if not found:
        raise DataError("no heatmap in heatmaps/ matches an evaluated case", heatmaps)
    run.extras.setdefault("summary", {})["explanation"] = found
    run.extras["panels"] = _panels(run, Path(explain_dir) / "panels", show)


def _panels(run: EvaluationRun, folder: Path, show: int) -> list[tuple[Path, str]]:
    """Panels to show: misclassified cases first (most confident errors), then correct ones, ``2 · show`` at most."""
    if not folder.is_dir():
        return []
    rows = run.extras.get("per_case", {})

    def order(case_id: str) -> tuple[int, float]:
        row = rows.get(case_id, {})
        wrong = row.get("correct") is False
        share = row.get("gradcam_inside_share", float("nan"))
        return (0 if wrong else 1, share if share == share else 1.0)

    ids = sorted((c.case_id for c in run.cases if (folder / f"{c.case_id}.png").is_file()), key=order)[: 2 * show]
    out = []
    for cid in ids:
        row = rows.get(cid, {})
        bits = [cid]
        if "label" in row:
            bits.append(f"true {row['label']}, predicted {row['predicted']}")
        if "gradcam_inside_share" in row and row["gradcam_inside_share"] == row["gradcam_inside_share"]:
            bits.append(f"Grad-CAM inside lesion {row['gradcam_inside_share']:.2f}")
        out.append((folder / f"{cid}.png", "; ".join(bits)))
    return out


def joint_options(pred_dir: Path, classes: Path | None) -> Path | None:
    """The predictions CSV to read class probabilities from: the one given, or the one ``covseg predict`` wrote."""
    if classes is not None:
        if not Path(classes).is_file():
            raise DataError("class probabilities file not found", classes)
        return Path(classes)
    return find_class_scores(pred_dir)
