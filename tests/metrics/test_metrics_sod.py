"""The sod protocol against pysodmetrics (py_sod_metrics 1.6) on real masks, plus hand cases."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter, shift

from covseg.metrics import SodMetrics, prepare_sod_inputs, s_measure, sod_curves, sod_metrics
from covseg.metrics.sod import SOD_METRICS

psm = pytest.importorskip("py_sod_metrics")

TOL = 1e-6


def _soft_from_gt(gt: np.ndarray, seed: int) -> np.ndarray:
    """A deterministic, imperfect uint8 soft map: blurred, shifted, noisy, with a false blob."""
    rng = np.random.default_rng(seed)
    g = (gt > 0).astype(np.float64)
    soft = gaussian_filter(shift(g, (seed % 5 - 2, (seed * 3) % 7 - 3), order=0), 2.0 + seed % 4)
    soft = 0.85 * soft + 0.15 * rng.random(g.shape) * (seed % 3 != 0)
    h, w = g.shape
    soft[h // 8 : h // 8 + h // 10, w // 2 : w // 2 + w // 10] += 0.4 * (seed % 2)
    return np.clip(np.round(soft * 255), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def infnet_pairs(real_data):
    folder = real_data / "covid_semiseg_infnet" / "train" / "masks"
    paths = sorted(folder.glob("*.png"), key=lambda p: int(p.stem))
    assert len(paths) == 50
    pairs = []
    for i, p in enumerate(paths):
        gt = np.asarray(Image.open(p).convert("L"))
        pairs.append((p.stem, _soft_from_gt(gt, i), gt))
    return pairs


def _pysod_per_image(pred: np.ndarray, gt: np.ndarray) -> dict[str, object]:
    """Reference values of one image from fresh pysodmetrics objects."""
    s, e, w, m = psm.Smeasure(), psm.Emeasure(), psm.WeightedFmeasure(), psm.MAE()
    f = psm.FmeasureV2(
        metric_handlers={
            "dice": psm.DICEHandler(with_dynamic=True, with_adaptive=False),
            "sensitivity": psm.SensitivityHandler(with_dynamic=True, with_adaptive=False),
            "specificity": psm.SpecificityHandler(with_dynamic=True, with_adaptive=False),
        }
    )
    for metric in (s, e, w, m, f):
        metric.step(pred, gt)
    fr = f.get_results()
    # pysodmetrics curves run from threshold 255 down to 0; ours run upwards.
    return {
        "s_measure": s.get_results()["sm"],
        "weighted_f_measure": w.get_results()["wfm"],
        "mae": m.get_results()["mae"],
        "adaptive_e_measure": e.get_results()["em"]["adp"],
        "e_measure": e.get_results()["em"]["curve"][::-1],
        "dice": fr["dice"]["dynamic"][::-1],
        "sensitivity": fr["sensitivity"]["dynamic"][::-1],
        "specificity": fr["specificity"]["dynamic"][::-1],
    }


def test_per_image_values_match_pysodmetrics(infnet_pairs):
    for stem, pred, gt in infnet_pairs:
        ours = sod_metrics(pred, gt, return_curves=True)
        ref = _pysod_per_image(pred, gt)
        for key in ("s_measure", "weighted_f_measure", "mae", "adaptive_e_measure"):
            assert abs(ours[key] - ref[key]) <= TOL, (stem, key, ours[key], ref[key])
        for name in ("e_measure", "dice", "sensitivity", "specificity"):
            np.testing.assert_allclose(
                ours["curves"][name], ref[name], rtol=0, atol=TOL, err_msg=f"{stem} {name}"
            )
            assert abs(ours[f"mean_{name}"] - np.mean(ref[name])) <= TOL
            assert abs(ours[f"max_{name}"] - np.max(ref[name])) <= TOL


def test_dataset_numbers_match_pysodmetrics(infnet_pairs):
    s, e, w, m = psm.Smeasure(), psm.Emeasure(), psm.WeightedFmeasure(), psm.MAE()
    f = psm.FmeasureV2(
        metric_handlers={
            "dice": psm.DICEHandler(True, False),
            "sensitivity": psm.SensitivityHandler(True, False),
            "specificity": psm.SpecificityHandler(True, False),
        }
    )
    acc = SodMetrics()
    for stem, pred, gt in infnet_pairs:
        for metric in (s, e, w, m, f):
            metric.step(pred, gt)
        acc.update(pred, gt, case_id=stem)
    agg = acc.aggregate()
    tb = agg["toolbox"]
    em = e.get_results()["em"]
    fr = f.get_results()
    expected = {
        "s_measure": s.get_results()["sm"],
        "weighted_f_measure": w.get_results()["wfm"],
        "mae": m.get_results()["mae"],
        "adaptive_e_measure": em["adp"],
        "mean_e_measure": em["curve"].mean(),
        "max_e_measure": em["curve"].max(),
    }
    for name in ("dice", "sensitivity", "specificity"):
        expected[f"mean_{name}"] = fr[name]["dynamic"].mean()
        expected[f"max_{name}"] = fr[name]["dynamic"].max()
    for key, value in expected.items():
        assert abs(tb[key] - value) <= TOL, (key, tb[key], value)
    # The per-image mean of mean_dice is the toolbox's meanDic; the toolbox max is not a per-image mean.
    assert agg["metrics"]["mean_dice"]["mean"] == pytest.approx(tb["mean_dice"], abs=1e-12)
    assert agg["metrics"]["max_dice"]["mean"] > tb["max_dice"]
    assert agg["num_cases"] == 50 and agg["protocol"] == "sod"
    np.testing.assert_allclose(agg["curves"]["dice"], fr["dice"]["dynamic"][::-1], atol=TOL)


def test_float_soft_maps_match_pysodmetrics_without_its_normalisation(infnet_pairs):
    for _, pred_u8, gt in infnet_pairs[:10]:
        soft = gaussian_filter(pred_u8 / 255.0, 1.0)
        soft = (soft - soft.min()) / (soft.max() - soft.min())  # pysodmetrics normalize=False wants this
        ref_s, ref_e = psm.Smeasure(), psm.Emeasure()
        ref_s.step(soft, gt > 128, normalize=False)
        ref_e.step(soft, gt > 128, normalize=False)
        ours = sod_metrics(soft, gt, return_curves=True)
        assert abs(ours["s_measure"] - ref_s.get_results()["sm"]) <= TOL
        np.testing.assert_allclose(
            ours["curves"]["e_measure"], ref_e.get_results()["em"]["curve"][::-1], atol=TOL
        )


def test_empty_and_full_ground_truth_match_pysodmetrics():
    rng = np.random.default_rng(0)
    pred = (gaussian_filter(rng.random((64, 80)), 3) * 255).astype(np.uint8)
    for gt in (np.zeros((64, 80), np.uint8), np.full((64, 80), 255, np.uint8)):
        ours = sod_metrics(pred, gt, return_curves=True)
        ref = _pysod_per_image(pred, gt)
        for key in ("s_measure", "weighted_f_measure", "mae", "adaptive_e_measure"):
            assert abs(ours[key] - ref[key]) <= TOL, key
        for name in ("e_measure", "dice", "sensitivity", "specificity"):
            np.testing.assert_allclose(ours["curves"][name], ref[name], atol=TOL)
    p, g = prepare_sod_inputs(pred, np.zeros((64, 80), np.uint8))
    assert s_measure(p, g) == pytest.approx(1 - p.mean())


def test_thresholds_are_floor_255p_at_least_k():
    gt = np.array([[1, 1, 0, 0]], dtype=np.uint8)
    # After min-max: [1.0, 0.5, 0.25, 0.0] -> levels floor(255 p) = [255, 127, 63, 0]
    pred = np.array([[1.0, 0.5, 0.25, 0.0]])
    curves = sod_curves(*prepare_sod_inputs(pred, gt))
    sens = curves["sensitivity"]
    assert sens[0] == 1.0 and sens[127] == 1.0  # both gt pixels at levels >= 127
    assert sens[128] == 0.5 and sens[255] == 0.5  # only the 1.0 pixel
    spec = curves["specificity"]
    assert spec[0] == 0.0  # threshold 0: everything is foreground
    assert spec[1] == 0.5 and spec[63] == 0.5 and spec[64] == 1.0
    dice = curves["dice"]
    assert dice[63] == pytest.approx(2 * 2 / (2 * 2 + 1))  # TP=2, FP=1 (the 0.25 pixel, level 63)
    assert dice[64] == 1.0  # TP=2, FP=0
    assert dice[128] == pytest.approx(2 / 3)  # TP=1, FN=1


def test_infnet_specificity_rule_zeroes_where_no_true_positive():
    gt = np.zeros((4, 4), dtype=np.uint8)
    gt[0, 0] = 1
    pred = np.zeros((4, 4))
    pred[3, 3] = 1.0  # the maximum lies outside the object
    pred[0, 0] = 0.4
    py = sod_curves(*prepare_sod_inputs(pred, gt), specificity_rule="pysodmetrics")
    mat = sod_curves(*prepare_sod_inputs(pred, gt), specificity_rule="infnet")
    level = int(0.4 * 255)  # 102: above it only the false pixel is foreground (TP = 0)
    assert py["specificity"][200] == pytest.approx(14 / 15)
    assert mat["specificity"][200] == 0.0
    np.testing.assert_array_equal(mat["specificity"][: level + 1], py["specificity"][: level + 1])
    np.testing.assert_array_equal(mat["dice"], py["dice"])
    acc = SodMetrics(specificity_rule="infnet")
    acc.update(pred, gt)
    assert acc.aggregate()["params"]["specificity_rule"] == "infnet"


def test_inputs_must_be_2d_and_same_shape():
    with pytest.raises(ValueError, match="2D"):
        sod_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="differs"):
        sod_metrics(np.zeros((4, 4)), np.zeros((4, 5), np.uint8))


def test_torch_input_and_record_fields():
    torch = pytest.importorskip("torch")
    gt = torch.zeros(16, 16, dtype=torch.uint8)
    gt[4:10, 4:10] = 1
    pred = torch.from_numpy(gaussian_filter(gt.numpy().astype(np.float64), 1.5))
    rec = SodMetrics().update(pred, gt, case_id="a")
    assert rec["case_id"] == "a" and set(SOD_METRICS) <= set(rec)
    assert sod_metrics(pred.numpy(), gt.numpy()) == {k: rec[k] for k in SOD_METRICS}
