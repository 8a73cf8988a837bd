"""``SodMetrics(toolbox="matlab")`` against a line-by-line transliteration of Inf-Net's MATLAB toolbox.

The reference below follows ``EvaluationTool/main.m`` and ``Fmeasure_calu.m`` (Inf-Net),
``StructureMeasure.m`` / ``S_object.m`` / ``S_region.m`` (Fan et al., S-measure) and
``Enhancedmeasure.m`` (Fan et al., E-measure) statement by statement: pixel loops where MATLAB
builds matrices, 1-based index ranges, MATLAB's colon operator for ``1:-1/255:0``, ``round``
half away from zero, ``var``/``std``/``cov`` with N − 1, ``mean`` propagating NaN, ``max``
skipping it. It is slow and written for reading; covseg's implementation is vectorised. Both
must agree to 1e-12 on every case, including the ones where MATLAB returns NaN.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from covseg.metrics import SodMetrics
from covseg.metrics.sod_matlab import matlab_thresholds, prepare, s_measure

MATLAB_EPS = 2.0**-52


# ---------------------------------------------------------------------------- MATLAB built-ins
def colon(base: float, increment: float, limit: float) -> list[float]:
    """MATLAB's ``base:increment:limit``: the first half from ``base``, the second half back from ``limit``."""
    n = math.floor((limit - base) / increment + 1e-10)
    end = base + n * increment
    if abs(end - limit) < 2 * MATLAB_EPS * max(abs(base), abs(limit)):
        end = limit
    out = [0.0] * (n + 1)
    for k in range(n // 2 + 1):
        out[k] = base + k * increment
        out[n - k] = end - k * increment
    if n % 2 == 0:
        out[n // 2] = (base + end) / 2
    return out


def matlab_round(x: float) -> int:
    return math.floor(abs(x) + 0.5) * (1 if x >= 0 else -1)


def mean2(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def var(values) -> float:
    values = list(values)
    if not values:
        return float("nan")
    if len(values) == 1:
        return 0.0
    m = mean2(values)
    return sum((v - m) ** 2 for v in values) / (len(values) - 1)


def cov12(a, b) -> float:
    a, b = list(a), list(b)
    if not a:
        return float("nan")
    if len(a) == 1:
        return 0.0
    ma, mb = mean2(a), mean2(b)
    return sum((x - ma) * (y - mb) for x, y in zip(a, b)) / (len(a) - 1)


def matlab_max(values) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return max(finite) if finite else float("nan")


def mapminmax_row(values: list[float]) -> list[float]:
    lo, hi = min(values), max(values)
    if hi == lo:
        return list(values)
    gain = (1 - 0) / (hi - lo)
    return [(v - lo) * gain + 0 for v in values]


# ---------------------------------------------------------------------------- StructureMeasure.m
def object_score(pred_values: list[float]) -> float:
    if not pred_values:
        return 0.0
    x = mean2(pred_values)
    sigma_x = math.sqrt(var(pred_values))
    return 2.0 * x / (x**2 + 1.0 + sigma_x + MATLAB_EPS)


def s_object(pred, gt) -> float:
    rows, cols = len(gt), len(gt[0])
    fg = [pred[i][j] for j in range(cols) for i in range(rows) if gt[i][j]]
    bg = [1.0 - pred[i][j] for j in range(cols) for i in range(rows) if not gt[i][j]]
    u = mean2([float(gt[i][j]) for j in range(cols) for i in range(rows)])
    return u * object_score(fg) + (1 - u) * object_score(bg)


def ssim(pred_block, gt_block) -> float:
    pv = [v for col in pred_block for v in col]
    gv = [float(v) for col in gt_block for v in col]
    x, y = mean2(pv), mean2(gv)
    sigma_x2, sigma_y2, sigma_xy = var(pv), var(gv), cov12(pv, gv)
    alpha = 4 * x * y * sigma_xy
    beta = (x**2 + y**2) * (sigma_x2 + sigma_y2)
    if alpha != 0:  # NaN != 0 in MATLAB too
        return alpha / (beta + MATLAB_EPS)
    if alpha == 0 and beta == 0:
        return 1.0
    return 0.0


def block(matrix, r0: int, r1: int, c0: int, c1: int):
    """MATLAB ``M(r0:r1, c0:c1)`` (1-based, inclusive) as a list of columns."""
    return [[matrix[i - 1][j - 1] for i in range(r0, r1 + 1)] for j in range(c0, c1 + 1)]


def s_region(pred, gt) -> float:
    rows, cols = len(gt), len(gt[0])
    total = sum(gt[i][j] for i in range(rows) for j in range(cols))
    X = matlab_round(sum(sum(gt[i][j] for i in range(rows)) * (j + 1) for j in range(cols)) / total)
    Y = matlab_round(sum(sum(gt[i][j] for j in range(cols)) * (i + 1) for i in range(rows)) / total)
    area = cols * rows
    w1 = (X * Y) / area
    w2 = ((cols - X) * Y) / area
    w3 = (X * (rows - Y)) / area
    w4 = 1.0 - w1 - w2 - w3
    q1 = ssim(block(pred, 1, Y, 1, X), block(gt, 1, Y, 1, X))
    q2 = ssim(block(pred, 1, Y, X + 1, cols), block(gt, 1, Y, X + 1, cols))
    q3 = ssim(block(pred, Y + 1, rows, 1, X), block(gt, Y + 1, rows, 1, X))
    q4 = ssim(block(pred, Y + 1, rows, X + 1, cols), block(gt, Y + 1, rows, X + 1, cols))
    return w1 * q1 + w2 * q2 + w3 * q3 + w4 * q4


def structure_measure(pred, gt) -> float:
    rows, cols = len(gt), len(gt[0])
    y = mean2([float(gt[i][j]) for j in range(cols) for i in range(rows)])
    if y == 0:
        return 1.0 - mean2([pred[i][j] for j in range(cols) for i in range(rows)])
    if y == 1:
        return mean2([pred[i][j] for j in range(cols) for i in range(rows)])
    alpha = 0.5
    q = alpha * s_object(pred, gt) + (1 - alpha) * s_region(pred, gt)
    if q < 0:  # NaN < 0 is false in MATLAB too
        q = 0.0
    return q


# ---------------------------------------------------------------------------- Enhancedmeasure.m
def enhanced_measure(fm, gt) -> float:
    rows, cols = len(gt), len(gt[0])
    dfm = [[1.0 if fm[i][j] else 0.0 for j in range(cols)] for i in range(rows)]
    dgt = [[1.0 if gt[i][j] else 0.0 for j in range(cols)] for i in range(rows)]
    if sum(map(sum, dgt)) == 0:
        enhanced = [[1.0 - dfm[i][j] for j in range(cols)] for i in range(rows)]
    elif sum(1 - v for row in dgt for v in row) == 0:
        enhanced = dfm
    else:
        mu_fm = mean2([v for row in dfm for v in row])
        mu_gt = mean2([v for row in dgt for v in row])
        enhanced = []
        for i in range(rows):
            row = []
            for j in range(cols):
                a_fm, a_gt = dfm[i][j] - mu_fm, dgt[i][j] - mu_gt
                align = 2.0 * (a_gt * a_fm) / (a_gt * a_gt + a_fm * a_fm + MATLAB_EPS)
                row.append(((align + 1) ** 2) / 4)
            enhanced.append(row)
    return sum(v for row in enhanced for v in row) / (rows * cols - 1 + MATLAB_EPS)


# ---------------------------------------------------------------------------- Fmeasure_calu.m
def fmeasure_calu(smap, gtmap, threshold: float) -> tuple[float, float, float]:
    """(sensitivity, specificity, Dice) at ``threshold``."""
    threshold = min(threshold, 1)
    label3 = [[v >= threshold for v in row] for row in smap]
    num_rec = sum(v for row in label3 for v in row)
    num_no_rec = sum(not v for row in label3 for v in row)
    num_and = sum(a and b for ra, rb in zip(label3, gtmap) for a, b in zip(ra, rb))
    num_obj = sum(v for row in gtmap for v in row)
    num_pred = num_rec
    fn = num_obj - num_and
    fp = num_rec - num_and
    tn = num_no_rec - fn
    if num_and == 0:
        return 0.0, 0.0, 0.0
    recall = num_and / num_obj
    specif = tn / (tn + fp) if (tn + fp) else float("nan")  # MATLAB: 0/0 = NaN
    dice = 2 * num_and / (num_obj + num_pred)
    return recall, specif, dice


# ---------------------------------------------------------------------------- main.m
def main_m(resmaps: list[np.ndarray], gts: list[np.ndarray], e_inclusive: bool = False) -> dict[str, float]:
    """``main.m`` at commit fb3a03b (E-measure on ``resmap > threshold``) or, with ``e_inclusive``, at
    e723632 (``resmap >= threshold``); ``gts`` are the logical ground truths."""
    thresholds = colon(1, -1 / 255, 0)
    e_rows, sen_rows, spe_rows, dic_rows, sm, mae = [], [], [], [], [], []
    for raw, gt_arr in zip(resmaps, gts):
        gt = [[bool(v) for v in row] for row in gt_arr.tolist()]
        scale = 255.0 if raw.dtype == np.uint8 else 65535.0 if raw.dtype == np.uint16 else 1.0
        values = [v / scale for row in raw.tolist() for v in row]  # im2double, row by row
        rows, cols = raw.shape
        column_major = [values[i * cols + j] for j in range(cols) for i in range(rows)]
        normed = mapminmax_row(column_major)  # resmap(:)' is column-major
        resmap = [[normed[j * rows + i] for j in range(cols)] for i in range(rows)]
        sm.append(structure_measure(resmap, gt))
        e_row, sen_row, spe_row, dic_row = [], [], [], []
        for t in thresholds:
            sen, spe, dic = fmeasure_calu(resmap, gt, t)
            sen_row.append(sen)
            spe_row.append(spe)
            dic_row.append(dic)
            bi = [[(v >= t if e_inclusive else v > t) for v in row] for row in resmap]
            e_row.append(enhanced_measure(bi, gt))
        e_rows.append(e_row)
        sen_rows.append(sen_row)
        spe_rows.append(spe_row)
        dic_rows.append(dic_row)
        mae.append(mean2([abs(float(g) - p) for gr, pr in zip(gt, resmap) for g, p in zip(gr, pr)]))

    def column_mean(table):
        return [mean2(col) for col in zip(*table)]

    out = {"s_measure": mean2(sm), "mae": mean2(mae)}
    for name, table in (("e_measure", e_rows), ("dice", dic_rows), ("sensitivity", sen_rows), ("specificity", spe_rows)):
        col = column_mean(table)
        out[f"mean_{name}"] = mean2(col)
        out[f"max_{name}"] = matlab_max(col)
    out["per_image_s_measure"] = sm
    return out


# ---------------------------------------------------------------------------- the cases
def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def _cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    shape = (24, 30)
    g = _disk(shape, 11, 13, 6)
    soft = np.clip(g * 150 + rng.normal(60, 40, shape), 0, 255).astype(np.uint8)
    cases = {
        "uint8 soft map": (soft, g),
        "full 0..255 range, pixels exactly on levels": (rng.integers(0, 256, shape).astype(np.uint8), g),
        "uint16 map": ((soft.astype(np.uint16) * 257 + rng.integers(0, 200, shape)).astype(np.uint16), g),
        "constant map (mapminmax leaves it)": (np.full(shape, 200, np.uint8), g),
        "empty ground truth": (soft, np.zeros(shape, np.uint8)),
    }
    # Centroid at x.5 in 1-based coordinates with x even: MATLAB rounds up, numpy's half-to-even down.
    half = np.zeros((20, 20), np.uint8)
    half[6:10, 2:4] = 1  # columns 3 and 4 (1-based): mean 3.5, so MATLAB splits after column 4, pysodmetrics after 3
    cases["centroid on a half (round half away)"] = (
        np.clip(half * 170 + rng.normal(50, 30, half.shape), 0, 255).astype(np.uint8),
        half,
    )
    edge = np.zeros((16, 18), np.uint8)
    edge[5:9, 17] = 1  # ground truth on the last column: the right quadrants are empty
    cases["ground truth on the right edge (NaN)"] = (np.clip(edge * 200 + rng.normal(40, 20, edge.shape), 0, 255).astype(np.uint8), edge)
    cases["all-foreground ground truth (NaN specificity)"] = (soft, np.ones(shape, np.uint8))
    cases["inverted map (negative S-measure, clamped at 0)"] = (((1 - g) * 255).astype(np.uint8), g)
    return cases


CASES = _cases()


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12)


def test_thresholds_are_matlab_colon():
    ref = colon(1, -1 / 255, 0)
    ours = matlab_thresholds()
    assert len(ref) == 256 and ref[0] == 1 and ref[-1] == 0
    assert ours.tolist() == ref  # bit for bit
    assert (ours != np.arange(255, -1, -1) / 255).sum() > 0  # not the same numbers as k/255


@pytest.mark.parametrize("toolbox", ["matlab", "matlab-2020-11"])
@pytest.mark.parametrize("name", list(CASES))
def test_matlab_variant_matches_the_transliteration(name, toolbox):
    pred, gt = CASES[name]
    acc = SodMetrics(toolbox=toolbox)
    acc.update(pred, gt, case_id=name)
    ours = acc.aggregate()["toolbox"]
    ref = main_m([pred], [gt], e_inclusive=toolbox == "matlab-2020-11")
    for key in ("s_measure", "mae", *(f"{s}_{c}" for s in ("mean", "max") for c in ("e_measure", "dice", "sensitivity", "specificity"))):
        assert _same(ours[key], ref[key]), (name, key, ours[key], ref[key])


def test_matlab_data_set_numbers_follow_main_m_nan_rules():
    names = ["uint8 soft map", "full 0..255 range, pixels exactly on levels", "all-foreground ground truth (NaN specificity)"]
    preds, gts = zip(*(CASES[n] for n in names))
    acc = SodMetrics(toolbox="matlab")
    for p, g in zip(preds, gts):
        acc.update(p, g)
    ours, ref = acc.aggregate()["toolbox"], main_m(list(preds), list(gts))
    for key, value in ref.items():
        if key != "per_image_s_measure":
            assert _same(ours[key], value), key
    assert math.isnan(ours["mean_specificity"])  # mean propagates the NaN of the all-foreground image


def test_where_the_variants_differ():
    """The documented differences are real: NaN where MATLAB gives NaN, another centroid on a half."""
    pred, gt = CASES["ground truth on the right edge (NaN)"]
    default, matlab = SodMetrics(), SodMetrics(toolbox="matlab")
    default.update(pred, gt)
    matlab.update(pred, gt)
    assert math.isnan(matlab.per_case()[0]["s_measure"])
    assert 0 < default.per_case()[0]["s_measure"] <= 1  # the empty quadrant weighs 0 instead

    pred, gt = CASES["centroid on a half (round half away)"]
    default, matlab = SodMetrics(), SodMetrics(toolbox="matlab")
    default.update(pred, gt)
    matlab.update(pred, gt)
    assert default.per_case()[0]["s_measure"] != pytest.approx(matlab.per_case()[0]["s_measure"], abs=1e-9)


def test_matlab_variant_on_real_infnet_masks(real_data):
    """Six real Inf-Net ground-truth masks (every 8th pixel), each scored against a blurred, shifted copy of itself."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    masks = sorted((real_data / "covid_semiseg_infnet" / "train" / "masks").glob("*"))[:6]
    if not masks:
        pytest.skip("no Inf-Net masks under COVSEG_DATA")
    preds, gts = [], []
    for path in masks:
        g = (np.asarray(Image.open(path).convert("L")) > 128).astype(np.uint8)
        g = g[::8, ::8]  # the transliteration loops over pixels: keep it quick
        soft = gaussian_filter(np.roll(g.astype(float), 2, axis=1), 2.0)
        preds.append(np.round(soft / max(soft.max(), 1e-9) * 255).astype(np.uint8))
        gts.append(g)
    acc = SodMetrics(toolbox="matlab")
    for p, g in zip(preds, gts):
        acc.update(p, g)
    ours, ref = acc.aggregate()["toolbox"], main_m(preds, gts)
    for key, value in ref.items():
        if key != "per_image_s_measure":
            assert _same(ours[key], value), key


# ---------------------------------------------------------------------------- issue 25
def test_s_measure_is_clamped_at_zero_as_structure_measure_m():
    """An inverted map scores below 0 before the clamp; StructureMeasure.m returns 0 (``if (Q<0) Q=0;``)."""
    pred, gt = CASES["inverted map (negative S-measure, clamped at 0)"]
    p, g = prepare(pred, gt)
    unclamped = 0.5 * s_object(p.tolist(), g.tolist()) + 0.5 * s_region(p.tolist(), g.tolist())
    assert unclamped == pytest.approx(-0.1804786874, abs=1e-9)  # what covseg reported before
    acc = SodMetrics(toolbox="matlab")
    acc.update(pred, gt, case_id="inverted")
    assert acc.per_case()[0]["s_measure"] == 0.0
    assert acc.aggregate()["toolbox"]["s_measure"] == 0.0


def test_s_measure_clamp_only_where_the_toolbox_clamps():
    """No clamp in the empty / full ground-truth branches (never negative there) and NaN stays NaN."""
    assert s_measure(np.full((4, 4), 0.25), np.zeros((4, 4), bool)) == 0.75  # 1 - mean
    assert s_measure(np.full((4, 4), 0.25), np.ones((4, 4), bool)) == 0.25  # mean
    pred, gt = CASES["ground truth on the right edge (NaN)"]
    p, g = prepare(pred, gt)
    assert math.isnan(s_measure(1.0 - p, g))  # an inverted map with an empty quadrant: NaN, not 0


def test_two_toolbox_versions_differ_only_in_the_e_measure():
    """``matlab`` (fb3a03b, published numbers) binarises the E-measure at p > t, ``matlab-2020-11``
    (e723632) at p >= t: different where pixels lie on a threshold, identical otherwise."""
    pred, gt = CASES["full 0..255 range, pixels exactly on levels"]
    results = {}
    for toolbox in ("matlab", "matlab-2020-11"):
        acc = SodMetrics(toolbox=toolbox)
        acc.update(pred, gt)
        results[toolbox] = acc.aggregate()["toolbox"]
    old, new = results["matlab"], results["matlab-2020-11"]
    assert old["mean_e_measure"] == pytest.approx(main_m([pred], [gt])["mean_e_measure"], abs=1e-12)
    assert new["mean_e_measure"] == pytest.approx(main_m([pred], [gt], e_inclusive=True)["mean_e_measure"], abs=1e-12)
    assert abs(old["mean_e_measure"] - new["mean_e_measure"]) > 5e-5  # 8.7e-5 on this map
    for key in ("s_measure", "mae", "mean_dice", "max_dice", "mean_sensitivity", "mean_specificity"):
        assert old[key] == new[key], key


def test_toolbox_versions_are_named_by_commit():
    from covseg.metrics.sod_matlab import TOOLBOX_VERSIONS

    assert TOOLBOX_VERSIONS["matlab"].commit.startswith("fb3a03b") and not TOOLBOX_VERSIONS["matlab"].e_inclusive
    assert TOOLBOX_VERSIONS["matlab-2020-11"].commit.startswith("e723632") and TOOLBOX_VERSIONS["matlab-2020-11"].e_inclusive
    params = SodMetrics(toolbox="matlab-2020-11").params
    assert "e723632" in params["reference"] and "p >= t" in params["thresholds"]
    assert "fb3a03b" in SodMetrics(toolbox="matlab").params["reference"]


def imread_gt(stored: np.ndarray) -> list[list[bool]]:
    """``main.m``'s ground-truth lines: ``if ndims(gt)>2, gt = rgb2gray(gt)``; ``if ~islogical(gt), gt = gt(:,:,1) > 128``."""
    if stored.dtype == bool:
        return stored.tolist()
    if stored.ndim > 2:
        weights = (0.298936021293775, 0.587043074451121, 0.114020904255103)
        rows, cols = stored.shape[:2]
        grey = [[math.floor(sum(w * float(stored[i, j, c]) for c, w in enumerate(weights)) + 0.5) for j in range(cols)] for i in range(rows)]
        return [[v > 128 for v in row] for row in grey]
    return [[float(v) > 128 for v in row] for row in stored.tolist()]


@pytest.mark.parametrize(
    "stored, foreground",
    [
        (np.array([[0, 255], [255, 0]], np.uint8), 2),  # 0/255: the masks the toolbox was written for
        (np.array([[0, 1], [1, 0]], np.uint8), 0),  # 0/1: empty to the toolbox
        (np.array([[0, 128], [129, 0]], np.uint8), 1),  # > 128, not >= 128
        (np.array([[0, 1], [1, 0]], bool), 2),  # 1-bit (logical) files are kept
        (np.array([[0, 1], [2, 0]], np.uint16), 0),  # 16-bit label indices: raw values, not scaled
        (np.array([[0, 65535], [0, 0]], np.uint16), 1),
        (np.array([[[255, 0, 0], [255, 255, 255]], [[0, 0, 0], [0, 0, 255]]], np.uint8), 1),  # red: grey 76
        (np.array([[[128, 130, 128], [127, 129, 128]]], np.uint8), 1),  # rgb2gray rounds 129.17 / 128.41
    ],
)
def test_toolbox_ground_truth_reads_as_main_m(stored, foreground):
    from covseg.metrics.sod_matlab import toolbox_ground_truth

    g = toolbox_ground_truth(stored)
    assert g.dtype == bool and g.tolist() == imread_gt(stored)
    assert int(g.sum()) == foreground
