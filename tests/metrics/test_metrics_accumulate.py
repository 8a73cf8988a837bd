"""Accumulators: update / per_case / aggregate / reset, NaN reductions, recorded parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covseg.metrics import MedicalMetrics, SodMetrics, medical_metrics, summarize


def _square(size: int, top: int, left: int, side: int) -> np.ndarray:
    m = np.zeros((size, size), dtype=np.uint8)
    m[top : top + side, left : left + side] = 1
    return m


def test_summarize_statistics_and_reductions():
    s = summarize([1.0, 2.0, 4.0, math.nan])
    assert s["mean"] == pytest.approx(7 / 3)
    assert s["std"] == pytest.approx(np.std([1, 2, 4], ddof=1))
    assert s["median"] == 2.0 and s["min"] == 1.0 and s["max"] == 4.0
    assert s["n"] == 3 and s["n_nan"] == 1
    p = summarize([1.0, 2.0, 4.0, math.nan], reduction="mean")
    assert math.isnan(p["mean"]) and math.isnan(p["median"]) and p["n"] == 4 and p["n_nan"] == 1
    one = summarize([0.5])
    assert one["mean"] == 0.5 and math.isnan(one["std"])
    none = summarize([])
    assert math.isnan(none["mean"]) and none["n"] == 0
    with pytest.raises(ValueError, match="reduction"):
        summarize([1.0], reduction="median")  # type: ignore[arg-type]


def test_medical_accumulator_cycle():
    m = MedicalMetrics(tolerance=2.0)
    gt_a, pred_a = _square(32, 4, 4, 10), _square(32, 5, 4, 10)
    gt_b, pred_b = _square(32, 10, 10, 8), _square(32, 10, 10, 8)
    empty = np.zeros((32, 32), dtype=np.uint8)
    rec = m.update(pred_a, gt_a, spacing=(0.5, 0.5), case_id="a")
    assert rec[0]["case_id"] == "a" and rec[0]["spacing"] == (0.5, 0.5)
    m.update(pred_b, gt_b, case_id="b")
    m.update(empty, empty)  # default case id, both empty -> NaN under empty="nan"
    assert len(m) == 3 and m.case_ids == ["a", "b", "case00002"]
    rows = m.per_case()
    assert [r["case_id"] for r in rows] == ["a", "b", "case00002"]
    assert rows[0]["dice"] == pytest.approx(2 * 90 / 200)
    assert rows[0]["hd95"] == pytest.approx(0.5)  # one-row shift at 0.5 mm
    assert rows[1]["dice"] == 1.0 and rows[1]["hd95"] == 0.0
    assert math.isnan(rows[2]["dice"]) and math.isnan(rows[2]["hd95"])
    # per_case returns copies
    rows[0]["dice"] = -1
    assert m.per_case()[0]["dice"] != -1

    agg = m.aggregate()
    assert agg["protocol"] == "medical" and agg["num_cases"] == 3 and agg["reduction"] == "nanmean"
    assert agg["params"]["tolerance"] == 2.0 and agg["params"]["empty"] == "nan"
    dice = agg["metrics"]["dice"]
    assert dice["mean"] == pytest.approx((0.9 + 1.0) / 2) and dice["n"] == 2 and dice["n_nan"] == 1
    assert agg["per_class"]["1"]["dice"] == dice
    assert agg["distance_unit"].startswith("mixed")
    strict = m.aggregate(reduction="mean")
    assert math.isnan(strict["metrics"]["dice"]["mean"])
    assert strict["metrics"]["specificity"]["mean"] == pytest.approx(
        np.mean([r["specificity"] for r in m.per_case()])
    )
    m.reset()
    assert len(m) == 0 and m.per_case() == [] and m.aggregate()["num_cases"] == 0


def test_medical_accumulator_empty_policy_one_counts_both_empty_as_perfect():
    m = MedicalMetrics(empty="one", empty_distance="max")
    empty = np.zeros((16, 16), dtype=np.uint8)
    m.update(empty, empty, case_id="clear")
    m.update(_square(16, 2, 2, 4), empty, case_id="false-alarm")
    rows = {r["case_id"]: r for r in m.per_case()}
    assert rows["clear"]["dice"] == 1.0 and rows["clear"]["hd95"] == 0.0 and rows["clear"]["nsd"] == 1.0
    assert rows["false-alarm"]["dice"] == 0.0
    assert rows["false-alarm"]["hd95"] == pytest.approx(math.hypot(15, 15))
    assert m.aggregate()["metrics"]["dice"]["mean"] == 0.5


def test_multiclass_accumulator_reports_per_class():
    gt = np.zeros((16, 16), dtype=np.uint8)
    gt[2:6, 2:6] = 1
    gt[8:12, 8:12] = 2
    pred = gt.copy()
    pred[8:12, 8:10] = 0  # half of class 2 missed
    m = MedicalMetrics(num_classes=2)
    m.update(pred, gt, case_id="x")
    agg = m.aggregate()
    assert agg["per_class"]["1"]["dice"]["mean"] == 1.0
    assert agg["per_class"]["2"]["dice"]["mean"] == pytest.approx(2 * 8 / 24)
    assert agg["metrics"]["dice"]["n"] == 2  # overall statistics run over (case, class) records
    assert m.case_scores() == {"x": pytest.approx((1.0 + 2 / 3) / 2)}
    assert [r["class"] for r in m.per_case()] == [1, 2]


def test_update_validates_before_recording():
    m = MedicalMetrics()
    with pytest.raises(ValueError):
        m.update(np.zeros((4, 4)), np.zeros((5, 5), np.uint8), case_id="bad")
    assert len(m) == 0 and m.per_case() == []


def test_invalid_parameters_raise_at_construction():
    with pytest.raises(ValueError, match="threshold"):
        MedicalMetrics(threshold=1.5)
    with pytest.raises(ValueError, match="empty must be one of"):
        MedicalMetrics(empty="skip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty_distance"):
        MedicalMetrics(empty_distance="far")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_classes"):
        MedicalMetrics(num_classes=0)
    with pytest.raises(ValueError, match="specificity_rule"):
        SodMetrics(specificity_rule="matlab")  # type: ignore[arg-type]


def test_overlap_only_mode_skips_distances():
    m = MedicalMetrics(surface=False)
    m.update(_square(16, 2, 2, 4), _square(16, 2, 2, 4))
    assert "hd95" not in m.per_case()[0] and "hd95" not in m.aggregate()["metrics"]


def test_accumulator_equals_pure_function():
    rng = np.random.default_rng(1)
    m = MedicalMetrics(threshold=0.4, tolerance=1.5)
    for i in range(4):
        gt = (rng.random((24, 24)) > 0.7).astype(np.uint8)
        soft = np.clip(gt * 0.8 + rng.random((24, 24)) * 0.3, 0, 1)
        rec = m.update(soft, gt, spacing=0.8, case_id=str(i))[0]
        [ref] = medical_metrics(soft, gt, 0.8, threshold=0.4, tolerance=1.5)
        assert {k: rec[k] for k in ref} == ref
        assert rec["spacing"] == (0.8, 0.8)


def test_sod_accumulator_reset_and_curves():
    rng = np.random.default_rng(2)
    acc = SodMetrics()
    for i in range(3):
        gt = _square(32, 4 + i, 6, 12)
        acc.update((rng.random((32, 32)) * 255).astype(np.uint8), gt, case_id=f"c{i}")
    agg = acc.aggregate()
    assert len(agg["curves"]["threshold"]) == 256 and agg["curves"]["threshold"][-1] == 1.0
    assert agg["toolbox"]["max_dice"] == pytest.approx(max(agg["curves"]["dice"]))
    assert acc.case_scores().keys() == {"c0", "c1", "c2"}
    acc.reset()
    assert len(acc) == 0 and math.isnan(acc.aggregate()["toolbox"]["max_dice"])
