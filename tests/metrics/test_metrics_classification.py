"""Classification and explanation metrics: agreement with scikit-learn, hand-computed values, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covseg.metrics.classification import (
    ClassificationMetrics,
    classification_metrics,
    confusion_matrix,
    roc_auc,
    roc_curve,
)
from covseg.metrics.explanation import ExplanationMetrics, inside_share, pointing_hit


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_and_auc_match_scikit_learn(seed):
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) * 0.5 + 0.4 * y, 2)  # rounded: many ties
    fpr, tpr, thr = roc_curve(y, scores)
    sk_fpr, sk_tpr, sk_thr = sk.roc_curve(y, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    assert roc_auc(y, scores) == pytest.approx(sk.roc_auc_score(y, scores), abs=1e-12)


def test_binary_metrics_match_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 90)
    p1 = np.clip(0.3 * y + rng.random(90) * 0.7, 0, 1)
    out = classification_metrics(y, p1)  # (N,) positive probabilities
    pred = (p1 >= 0.5).astype(int)
    m = out["metrics"]
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(sk.recall_score(y, pred))
    assert m["specificity"] == pytest.approx(sk.recall_score(1 - y, 1 - pred))
    assert m["precision"] == pytest.approx(sk.precision_score(y, pred))
    assert m["f1"] == pytest.approx(sk.f1_score(y, pred))
    assert m["auc"] == pytest.approx(sk.roc_auc_score(y, p1))
    assert out["confusion_matrix"] == sk.confusion_matrix(y, pred).tolist()


def test_three_classes_detection_view_and_macro_scores():
    sk = pytest.importorskip("sklearn.metrics")
    y = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    probs = np.array(
        [[0.8, 0.1, 0.1], [0.4, 0.5, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4],
         [0.2, 0.2, 0.6], [0.6, 0.2, 0.2]]
    )
    out = classification_metrics(y, probs)
    pred = probs.argmax(1)
    assert out["confusion_matrix"] == sk.confusion_matrix(y, pred).tolist()
    assert out["metrics"]["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert out["metrics"]["f1_macro"] == pytest.approx(sk.f1_score(y, pred, average="macro"))
    assert out["metrics"]["auc_macro"] == pytest.approx(sk.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    # detection: any infection class against class 0, on 1 - p(class 0)
    assert out["metrics"]["auc"] == pytest.approx(sk.roc_auc_score(y > 0, 1 - probs[:, 0]))
    assert out["counts"] == {"tp": 4, "fp": 1, "tn": 2, "fn": 1}
    assert out["metrics"]["sensitivity"] == pytest.approx(4 / 5) and out["metrics"]["specificity"] == pytest.approx(2 / 3)


def test_undefined_values_are_nan_and_bad_input_is_refused():
    out = classification_metrics([1, 1, 1], [0.9, 0.2, 0.7])
    assert math.isnan(out["metrics"]["auc"]) and math.isnan(out["metrics"]["specificity"])
    assert out["metrics"]["sensitivity"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 2], [0.1, 0.9])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        classification_metrics([0, 1], [0.1, 1.5])
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 3], [0, 1], 2)


def test_accumulator_rows_and_summary():
    acc = ClassificationMetrics(num_classes=2, class_names=["negative", "positive"])
    acc.update([0.2, 0.8], 1, case_id="a")
    acc.update(0.3, 0, case_id="b")  # p(positive) alone
    acc.update([0.6, 0.4], 1, case_id="c")
    rows = acc.per_case()
    assert [r["predicted"] for r in rows] == ["positive", "negative", "negative"]
    assert rows[1]["p_positive"] == pytest.approx(0.3) and rows[2]["correct"] is False
    agg = acc.aggregate()
    assert agg["num_cases"] == 3 and agg["confusion_matrix"] == [[1, 0], [1, 1]]
    assert agg["metrics"]["auc"] == pytest.approx(1.0)  # both positives outrank the negative
    assert agg["params"]["negative_class"] == "negative"
    with pytest.raises(ValueError, match="3 class probabilities"):
        acc.update([0.2, 0.3, 0.5], 1)


def test_inside_share_and_pointing_game_by_hand():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[2:4, 2:4] = 1
    heat = np.zeros((10, 10))
    heat[2, 2], heat[8, 8] = 3.0, 1.0
    assert inside_share(heat, mask) == pytest.approx(0.75)
    assert pointing_hit(heat, mask) == 1.0
    heat[8, 8] = 5.0
    assert pointing_hit(heat, mask) == 0.0
    assert pointing_hit(heat, mask, tolerance=6.0) == 0.0  # distance from (8, 8) to (3, 3) is 7.07
    assert pointing_hit(heat, mask, tolerance=7.1) == 1.0
    heat_negative = heat - 1.0  # negative values count as zero mass
    assert inside_share(heat_negative, mask) == pytest.approx(2.0 / 6.0)
    assert math.isnan(inside_share(heat, np.zeros_like(mask))) and math.isnan(pointing_hit(heat, np.zeros_like(mask)))
    assert math.isnan(inside_share(np.zeros((10, 10)), mask))
    with pytest.raises(ValueError, match="shape"):
        inside_share(heat, mask[:5])


def test_explanation_accumulator_counts_empty_masks_apart():
    acc = ExplanationMetrics("gradcam", tolerance=0)
    mask = np.zeros((8, 8))
    mask[:4] = 1
    uniform = np.ones((8, 8))
    acc.update(uniform, mask, "uniform")  # chance level: the mask's area fraction
    peak = np.zeros((8, 8))
    peak[1, 1] = 1
    acc.update(peak, mask, "peak")
    acc.update(peak, np.zeros((8, 8)), "empty")
    agg = acc.aggregate()
    assert agg["num_cases"] == 3 and agg["num_empty_masks"] == 1
    assert agg["metrics"]["inside_share"]["mean"] == pytest.approx((0.5 + 1.0) / 2)
    assert agg["metrics"]["mask_fraction"]["mean"] == pytest.approx(0.5)
    assert agg["pointing_game"] == pytest.approx(1.0)
