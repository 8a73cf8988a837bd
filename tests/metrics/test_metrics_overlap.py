"""Overlap metrics and input handling of the medical protocol, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covseg.metrics import (
    confusion_counts,
    dice,
    iou,
    medical_metrics,
    overlap_metrics,
    precision,
    sensitivity,
    specificity,
)
from covseg.metrics._arrays import guess_pred_type, prediction_labels, soft_map


def _masks_4x4() -> tuple[np.ndarray, np.ndarray]:
    # gt: 4 pixels; pred: 3 pixels, 2 of them inside gt  ->  TP=2, FP=1, FN=2, TN=11
    gt = np.zeros((4, 4), dtype=bool)
    gt[1, 1] = gt[1, 2] = gt[2, 1] = gt[2, 2] = True
    pred = np.zeros((4, 4), dtype=bool)
    pred[1, 1] = pred[1, 2] = pred[0, 3] = True
    return pred, gt


def test_confusion_counts_by_hand():
    pred, gt = _masks_4x4()
    assert confusion_counts(pred, gt) == {"tp": 2, "fp": 1, "fn": 2, "tn": 11}


def test_overlap_metrics_by_hand():
    pred, gt = _masks_4x4()
    m = overlap_metrics(pred, gt)
    assert m["dice"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))  # 4/7
    assert m["iou"] == pytest.approx(2 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["sensitivity"] == pytest.approx(1 / 2)
    assert m["specificity"] == pytest.approx(11 / 12)
    assert dice(pred, gt) == pytest.approx(4 / 7)
    assert iou(pred, gt) == pytest.approx(0.4)
    assert precision(pred, gt) == pytest.approx(2 / 3)
    assert sensitivity(pred, gt) == pytest.approx(0.5)
    assert specificity(pred, gt) == pytest.approx(11 / 12)


def test_dice_iou_relation_holds():
    rng = np.random.default_rng(3)
    for _ in range(5):
        pred, gt = rng.random((32, 32)) > 0.6, rng.random((32, 32)) > 0.5
        m = overlap_metrics(pred, gt)
        assert m["dice"] == pytest.approx(2 * m["iou"] / (1 + m["iou"]))


@pytest.mark.parametrize(("empty", "expected"), [("nan", math.nan), ("one", 1.0), ("zero", 0.0)])
def test_both_empty_follows_policy(empty, expected):
    z = np.zeros((8, 8), dtype=bool)
    m = overlap_metrics(z, z, empty=empty)
    for key in ("dice", "iou", "precision", "sensitivity"):
        if math.isnan(expected):
            assert math.isnan(m[key]), key
        else:
            assert m[key] == expected, key
    assert m["specificity"] == 1.0  # TN / (TN + FP) = 64 / 64 is defined


@pytest.mark.parametrize("empty", ["nan", "one", "zero"])
def test_one_side_empty(empty):
    z = np.zeros((8, 8), dtype=bool)
    some = z.copy()
    some[2:4, 2:5] = True
    policy = {"nan": math.nan, "one": 1.0, "zero": 0.0}[empty]
    # Empty prediction, non-empty gt: Dice and IoU are 0 (defined), precision is 0/0.
    m = overlap_metrics(z, some, empty=empty)
    assert m["dice"] == 0.0 and m["iou"] == 0.0 and m["sensitivity"] == 0.0
    assert m["precision"] == policy or (math.isnan(policy) and math.isnan(m["precision"]))
    # Empty gt, non-empty prediction: sensitivity is 0/0, specificity 58/64.
    m = overlap_metrics(some, z, empty=empty)
    assert m["dice"] == 0.0 and m["precision"] == 0.0
    assert m["sensitivity"] == policy or (math.isnan(policy) and math.isnan(m["sensitivity"]))
    assert m["specificity"] == pytest.approx(58 / 64)


def test_specificity_undefined_when_gt_fills_image():
    full = np.ones((4, 4), dtype=bool)
    assert math.isnan(overlap_metrics(full, full)["specificity"])
    assert overlap_metrics(full, full, empty="one")["specificity"] == 1.0


def test_unknown_policy_and_shape_mismatch_raise():
    pred, gt = _masks_4x4()
    with pytest.raises(ValueError, match="empty must be one of"):
        overlap_metrics(pred, gt, empty="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shapes differ"):
        overlap_metrics(pred, gt[:3])


# ----------------------------------------------------------------------------- medical inputs
def test_soft_map_threshold_is_inclusive_and_uint8_scaled():
    gt = np.zeros((2, 2), dtype=np.uint8)
    gt[0, 0] = 1
    soft = np.array([[0.5, 0.4999], [0.0, 0.0]])
    [row] = medical_metrics(soft, gt, surface=False)
    assert row["dice"] == 1.0  # 0.5 >= 0.5 is foreground, 0.4999 is not
    u8 = np.array([[128, 127], [0, 0]], dtype=np.uint8)  # 128/255 >= 0.5 > 127/255
    [row] = medical_metrics(u8, gt, surface=False)
    assert row["dice"] == 1.0
    [row] = medical_metrics(u8, gt, threshold=0.3, surface=False)
    assert row["pred_voxels"] == 2 and row["dice"] == pytest.approx(2 / 3)


def test_gt_0_255_and_binary_union_of_labels():
    gt255 = np.zeros((6, 6), dtype=np.uint8)
    gt255[1:3, 1:3] = 255
    pred = (gt255 > 0).astype(np.float32)
    assert medical_metrics(pred, gt255, surface=False)[0]["dice"] == 1.0
    multi = np.zeros((6, 6), dtype=np.uint8)
    multi[1:3, 1:3] = 1
    multi[4, 4] = 2
    # Binary task: every non-zero label is foreground.
    [row] = medical_metrics(multi > 0, multi, surface=False)
    assert row["gt_voxels"] == 5 and row["dice"] == 1.0


def test_multiclass_argmax_and_label_maps_per_class():
    gt = np.zeros((8, 8), dtype=np.uint8)
    gt[0:4, 0:4] = 1
    gt[4:8, 4:8] = 2
    probs = np.zeros((3, 8, 8), dtype=np.float32)
    probs[0] = 0.5
    probs[1, 0:4, 0:4] = 0.9  # class 1 right
    probs[2, 4:8, 4:6] = 0.9  # class 2: half of it
    rows = medical_metrics(probs, gt, num_classes=2, surface=False)
    assert [r["class"] for r in rows] == [1, 2]
    assert rows[0]["dice"] == 1.0
    assert rows[1]["dice"] == pytest.approx(2 * 8 / (8 + 16))
    labels = np.argmax(probs, axis=0).astype(np.uint8)
    assert medical_metrics(labels, gt, num_classes=2, surface=False) == rows
    too_high = labels.copy()
    too_high[0, 0] = 3
    with pytest.raises(ValueError, match="prediction has label 3 but num_classes=2"):
        medical_metrics(too_high, gt, num_classes=2, surface=False)


def test_gt_label_above_num_classes_is_refused():
    gt = np.zeros((4, 4), dtype=np.uint8)
    gt[0, 0] = 3
    with pytest.raises(ValueError, match="ground truth has label 3 but num_classes=2"):
        medical_metrics(gt.clip(0, 2), gt, num_classes=2, surface=False)


def test_channel_count_must_match_classes():
    gt = np.zeros((4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="expected num_classes \\+ 1 = 2"):
        medical_metrics(np.zeros((3, 4, 4)), gt, num_classes=1, surface=False)
    # A single channel is squeezed.
    assert medical_metrics(np.zeros((1, 4, 4)), gt, empty="one", surface=False)[0]["dice"] == 1.0


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    gt = torch.zeros(8, 8, dtype=torch.uint8)
    gt[2:5, 2:5] = 1
    pred = torch.zeros(8, 8, requires_grad=True)
    soft = pred + gt.float() * 0.9  # carries grad: must be detached, not refused
    [row] = medical_metrics(soft, gt)
    assert row["dice"] == 1.0 and row["hd95"] == 0.0


def test_auto_type_guessing_and_overrides():
    assert guess_pred_type(np.array([[0, 1]], dtype=np.uint8)) == "mask"
    assert guess_pred_type(np.array([[0, 255]], dtype=np.uint8)) == "soft"  # same result as a 0/255 mask
    assert guess_pred_type(np.array([[0.2, 0.7]])) == "soft"
    assert guess_pred_type(np.array([[0.0, 2.0]]), num_classes=2) == "mask"
    assert guess_pred_type(np.array([[0, 1, 2]], dtype=np.uint8), num_classes=2) == "mask"
    with pytest.raises(ValueError, match="logits"):
        guess_pred_type(np.array([[-3.2, 4.1]]))
    with pytest.raises(ValueError, match="channel axis"):
        guess_pred_type(np.array([[0.2, 0.7]]), num_classes=2)
    # A uint8 soft map that is only 0/1 reads as a mask unless told otherwise.
    tiny = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    assert prediction_labels(tiny, (2, 2)).sum() == 2
    assert prediction_labels(tiny, (2, 2), pred_type="soft").sum() == 0


def test_soft_map_scaling_and_range_checks():
    assert soft_map(np.array([0, 255], dtype=np.uint8)).tolist() == [0.0, 1.0]
    assert soft_map(np.array([0, 65535], dtype=np.uint16)).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        soft_map(np.array([0.0, 1.5]))
    with pytest.raises(ValueError, match="NaN"):
        soft_map(np.array([0.0, np.nan]))
