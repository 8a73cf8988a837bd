"""Image-level classification metrics: ROC and AUC, accuracy, sensitivity, specificity, F1, confusion matrix.

Class 0 is the negative class (no infection), as background is in segmentation. With K > 2
classes (e.g. normal / pneumonia / COVID-19) the detection view (any class > 0 against class 0)
gives AUC, sensitivity, specificity, precision and F1, on the score ``1 − p(class 0)``; accuracy
and the confusion matrix use all K classes, and ``auc_macro`` / ``f1_macro`` average the
one-vs-rest values per class. Binary predictions are ``p(positive) >= threshold`` (0.5 is the
arg-max); K-class predictions the arg-max.

Each metric is a pure function of numpy arrays; :class:`ClassificationMetrics` accumulates cases
and reports them with its parameters, like the segmentation accumulators. ``roc_curve`` and
``roc_auc`` agree with scikit-learn's ``roc_curve(drop_intermediate=False)`` and
``roc_auc_score`` (tested); ties between a positive and a negative count one half.

Patient level (JCS's diagnosis of a patient from its slices, :func:`patient_level_metrics`): a
patient is positive when any of its slices is; its score is the highest slice score ``1 − p(class 0)``
(rule ``max``, a lesion anywhere makes the patient positive) or their mean (rule ``mean``), and it is
called positive when that score reaches the threshold. AUC, sensitivity and specificity are then
computed over patients, not slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

CLASSIFICATION_METRICS: tuple[str, ...] = ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1")
#: how a patient's slice scores become one patient score
PATIENT_RULES: tuple[str, ...] = ("max", "mean")


def _nan_div(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def roc_curve(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` of a binary score: one point per distinct score, highest first,
    after the ``(0, 0)`` point at threshold ``+inf``."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels for {s.size} scores")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1] if s.size else np.array([], dtype=int)
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    tpr = np.r_[0.0, tps / n_pos] if n_pos else np.full(last.size + 1, np.nan)
    fpr = np.r_[0.0, fps / n_neg] if n_neg else np.full(last.size + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, s[last]]


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (trapezoids: ties count one half); NaN unless both classes occur."""
    fpr, tpr, _ = roc_curve(labels, scores)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return float("nan")
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))  # trapezoids (np.trapezoid needs numpy 2)


def confusion_matrix(labels: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K)`` counts: row = true class, column = predicted class."""
    t = np.asarray(labels, dtype=np.int64).ravel()
    p = np.asarray(predicted, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"{t.size} labels for {p.size} predictions")
    for name, arr in (("label", t), ("prediction", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"a {name} lies outside the {num_classes} classes: {sorted(set(arr.tolist()))}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def detection_scores(tp: int, fp: int, tn: int, fn: int) -> dict[str, float]:
    """Accuracy, sensitivity (recall), specificity, precision and F1 from the four counts (NaN where undefined)."""
    sensitivity = _nan_div(tp, tp + fn)
    precision = _nan_div(tp, tp + fp)
    return {
        "accuracy": _nan_div(tp + tn, tp + fp + tn + fn),
        "sensitivity": sensitivity,
        "specificity": _nan_div(tn, tn + fp),
        "precision": precision,
        "f1": _nan_div(2 * tp, 2 * tp + fp + fn),
    }


def as_class_probabilities(probs: Sequence[Any] | np.ndarray) -> np.ndarray:
    """``(N, K)`` probabilities from ``(N, K)`` rows or ``(N,)`` positive-class probabilities (binary)."""
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim == 1:
        arr = np.stack([1.0 - arr, arr], axis=1)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ValueError(f"class probabilities must be (N, K) with K ≥ 2 or (N,), got shape {arr.shape}")
    if arr.size and (not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1):
        raise ValueError("class probabilities must be finite and lie in [0, 1]")
    return arr


def predict_classes(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Binary: positive where ``p(1) >= threshold``; K classes: the arg-max."""
    if probs.shape[1] == 2:
        return (probs[:, 1] >= threshold).astype(np.int64)
    return probs.argmax(axis=1).astype(np.int64)


def classification_metrics(
    labels: Sequence[int] | np.ndarray, probs: Sequence[Any] | np.ndarray, threshold: float = 0.5
) -> dict[str, Any]:
    """Every metric of a set of cases: ``metrics`` (floats), ``confusion_matrix``, ``roc`` and class counts."""
    p = as_class_probabilities(probs)
    y = np.asarray(labels, dtype=np.int64).ravel()
    if y.shape[0] != p.shape[0]:
        raise ValueError(f"{y.shape[0]} labels for {p.shape[0]} probability rows")
    k = p.shape[1]
    if y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"a label lies outside the model's {k} classes: {sorted(set(y.tolist()))}")
    predicted = predict_classes(p, threshold)
    positive, score, called = y > 0, 1.0 - p[:, 0], predicted > 0
    tp, fp = int((positive & called).sum()), int((~positive & called).sum())
    tn, fn = int((~positive & ~called).sum()), int((positive & ~called).sum())
    metrics: dict[str, float] = {"auc": roc_auc(positive, score), **detection_scores(tp, fp, tn, fn)}
    metrics["accuracy"] = _nan_div(int((predicted == y).sum()), y.size)
    if k > 2:
        per_class_auc = [roc_auc(y == c, p[:, c]) for c in range(k)]
        per_class_f1 = [
            detection_scores(int(((y == c) & (predicted == c)).sum()), int(((y != c) & (predicted == c)).sum()), 0,
                             int(((y == c) & (predicted != c)).sum()))["f1"]
            for c in range(k)
        ]
        metrics["auc_macro"] = float(np.nanmean(per_class_auc)) if not np.all(np.isnan(per_class_auc)) else float("nan")
        metrics["f1_macro"] = float(np.nanmean(per_class_f1)) if not np.all(np.isnan(per_class_f1)) else float("nan")
    fpr, tpr, thresholds = roc_curve(positive, score)
    return {
        "metrics": metrics,
        "counts": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
        "confusion_matrix": confusion_matrix(y, predicted, k).tolist(),
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thresholds.tolist()},
        "class_counts": np.bincount(y, minlength=k).tolist(),
    }


def patient_level_metrics(
    patients: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    probs: Sequence[Any] | np.ndarray,
    rule: str = "max",
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Per-patient AUC / sensitivity / specificity from slice outputs (``rule``: ``max`` or ``mean`` slice score).

    A patient's label is positive when any of its slices is; ``per_patient`` lists each patient's
    label, score and number of slices.
    """
    if rule not in PATIENT_RULES:
        raise ValueError(f"patient rule must be one of {', '.join(PATIENT_RULES)}, got {rule!r}")
    p = as_class_probabilities(probs)
    y = np.asarray(labels, dtype=np.int64).ravel()
    ids = [str(x) for x in patients]
    if not (len(ids) == y.shape[0] == p.shape[0]):
        raise ValueError(f"{len(ids)} patients, {y.shape[0]} labels and {p.shape[0]} probability rows")
    slice_scores = 1.0 - p[:, 0]
    order = list(dict.fromkeys(ids))
    rows = []
    for patient in order:
        index = np.array([i for i, pid in enumerate(ids) if pid == patient])
        scores = slice_scores[index]
        score = float(scores.max() if rule == "max" else scores.mean())
        rows.append({"patient": patient, "label": int(bool((y[index] > 0).any())), "score": score, "slices": int(index.size)})
    patient_labels = np.array([r["label"] for r in rows], dtype=np.int64)
    patient_scores = np.array([r["score"] for r in rows], dtype=np.float64)
    result = classification_metrics(patient_labels, patient_scores, threshold)
    return {"rule": rule, "threshold": float(threshold), "num_patients": len(rows), **result, "per_patient": rows}


class ClassificationMetrics:
    """Accumulates one case per ``update(probs, label, case_id)``; ``aggregate()`` scores them all.

    ``class_names`` (class 0 first) name the probability columns of ``per_case``. Cases given a
    ``patient`` are also scored per patient (``patient_level`` in ``aggregate()``, by ``patient_rule``).
    """

    protocol = "classification"
    metric_names = CLASSIFICATION_METRICS

    def __init__(
        self, num_classes: int = 2, threshold: float = 0.5, class_names: Sequence[str] | None = None, patient_rule: str = "max"
    ) -> None:
        if patient_rule not in PATIENT_RULES:
            raise ValueError(f"patient rule must be one of {', '.join(PATIENT_RULES)}, got {patient_rule!r}")
        self.patient_rule = patient_rule
        if num_classes < 2:
            raise ValueError(f"num_classes counts the negative class too, so it must be ≥ 2, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = int(num_classes)
        self.threshold = float(threshold)
        self.class_names = list(class_names) if class_names is not None else [f"class{c}" for c in range(num_classes)]
        self._probs: list[np.ndarray] = []
        self._labels: list[int] = []
        self._case_ids: list[str] = []
        self._patients: list[str | None] = []

    @property
    def params(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "class_names": self.class_names,
            "negative_class": self.class_names[0],
            "rule": "binary: p(positive) >= threshold; K classes: arg-max; detection metrics: class > 0 vs class 0 "
            "on 1 - p(class 0)",
        }

    def __len__(self) -> int:
        return len(self._case_ids)

    def update(
        self, probs: Sequence[float] | np.ndarray, label: int, case_id: str | None = None, patient: str | None = None
    ) -> dict[str, Any]:
        """Add one case: its class probabilities (K values, or p(positive) for binary), true class and patient."""
        arr = np.asarray(probs, dtype=np.float64)
        row = as_class_probabilities(arr[None] if arr.ndim == 1 else arr.reshape(1))[0]
        if row.shape[0] != self.num_classes:
            raise ValueError(f"{row.shape[0]} class probabilities for {self.num_classes} classes")
        label = int(label)
        if not 0 <= label < self.num_classes:
            raise ValueError(f"label {label} lies outside the {self.num_classes} classes")
        cid = f"case{len(self._case_ids):05d}" if case_id is None else str(case_id)
        self._probs.append(row)
        self._labels.append(label)
        self._case_ids.append(cid)
        self._patients.append(None if patient is None else str(patient))
        return self.per_case()[-1]

    def per_case(self) -> list[dict[str, Any]]:
        """One row per case: id, true and predicted class, correctness, each class probability."""
        rows = []
        for cid, label, row in zip(self._case_ids, self._labels, self._probs):
            predicted = int(predict_classes(row[None], self.threshold)[0])
            rows.append(
                {
                    "case_id": cid,
                    "label": self.class_names[label],
                    "predicted": self.class_names[predicted],
                    "correct": predicted == label,
                    **{f"p_{name}": float(v) for name, v in zip(self.class_names, row)},
                }
            )
        return rows

    def aggregate(self) -> dict[str, Any]:
        """The metrics of every case so far, with the protocol and its parameters."""
        probs = np.stack(self._probs) if self._probs else np.zeros((0, self.num_classes))
        result = classification_metrics(self._labels, probs, self.threshold)
        out = {"protocol": self.protocol, "params": self.params, "num_cases": len(self), **result}
        with_patient = [i for i, pid in enumerate(self._patients) if pid is not None]
        if with_patient:
            out["patient_level"] = patient_level_metrics(
                [str(self._patients[i]) for i in with_patient],
                [self._labels[i] for i in with_patient],
                probs[with_patient],
                self.patient_rule,
                self.threshold,
            )
            out["patient_level"]["cases_without_patient"] = [self._case_ids[i] for i in range(len(self)) if self._patients[i] is None]
        return out

    def reset(self) -> None:
        self._probs.clear()
        self._labels.clear()
        self._case_ids.clear()
        self._patients.clear()
