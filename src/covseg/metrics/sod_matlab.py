"""The ``sod`` protocol exactly as Inf-Net's MATLAB toolbox computes it (``toolbox="matlab"``).

The published COVID-SemiSeg numbers come from ``EvaluationTool/main.m`` of the Inf-Net repository
(github.com/DengPingFan/Inf-Net) with ``Fmeasure_calu.m``, Fan et al.'s ``StructureMeasure.m``
(``S_object``, ``S_region``) and ``Enhancedmeasure.m``. Two versions of ``main.m`` exist, and
covseg offers both (:data:`TOOLBOX_VERSIONS`):

* ``matlab`` – commit ``fb3a03b`` (2020-05-12), the one that committed
  ``EvaluateResults/LungInfection-Test-1_result.txt``, i.e. the published numbers; ``main.m``
  computes the same from ``f5a99a5`` (2020-05-03) to ``4a75db7`` (2020-06-28). E-measure at
  ``resmap > threshold``;
* ``matlab-2020-11`` – commit ``e723632`` (2020-11-21, unchanged since): E-measure at
  ``resmap >= threshold``. Everything else is the same (the helper ``.m`` files never changed).

Where it differs from pysodmetrics (covseg's default sod variant, see :mod:`covseg.metrics.sod`)
this module follows the MATLAB code:

* **ground truth** – ``main.m`` reads a mask file as ``gt(:,:,1) > 128`` (colour files through
  ``rgb2gray`` first; a 1-bit file is logical and kept as stored): a 0/1 or label-index mask is
  *empty* to the toolbox. :func:`toolbox_ground_truth` applies that rule to the stored values, and
  ``covseg evaluate --toolbox matlab`` applies it to every ground-truth image file (it names the
  cases where it differs from covseg's reading, foreground where non-zero). Arrays given to
  ``SodMetrics.update`` are the toolbox's logical ``gt`` already: foreground where non-zero;
* **preparation** – ``im2double`` by data type (``uint8`` / 255, ``uint16`` / 65535), then
  ``mapminmax(x, 0, 1)``, which computes ``(x − min) · (1 / (max − min))`` and leaves a constant
  map unchanged;
* **thresholds** – ``Thresholds = 1:-1/255:0`` built by MATLAB's colon operator: the first half
  as ``1 + k·(−1/255)``, the second half as ``0 − k·(−1/255)`` from the far end. These are not
  bit-identical to ``k/255``, so a pixel lying exactly on a level can fall on the other side;
* **Dice, sensitivity, specificity** (``Fmeasure_calu``: foreground where ``p >= t``): every value
  0 when TP = 0; otherwise specificity ``TN / (TN + FP)`` is NaN when the ground truth covers the
  whole image (0/0);
* **E-measure** at each threshold on ``p > t`` (``matlab``) or ``p >= t`` (``matlab-2020-11``);
* **S-measure** – the ground truth's centroid is ``round(mean of 1-based coordinates)`` with
  MATLAB's half-away-from-zero rounding (pysodmetrics rounds half to even); a quadrant that is
  empty (the centroid on the last row or column: ground truth touching the right or bottom edge)
  gives NaN, as in MATLAB (0 · NaN); a negative score is clamped to 0 (``if (Q<0) Q=0;``) when the
  ground truth is neither empty nor full, the only branch where ``StructureMeasure.m`` clamps
  (NaN stays NaN: ``NaN < 0`` is false);
* **data-set numbers** – curves averaged over images with ``mean`` (NaN propagates), then
  ``mean`` over thresholds (NaN propagates) and ``max`` over thresholds (MATLAB's ``max`` skips
  NaN); ``Sm`` and ``mae`` are plain means over images.

What is not reproduced: ``main.m`` resizes a prediction of the wrong size with ``imresize``
(bicubic) and writes it back over the file; covseg resizes bilinearly in memory. Weighted
F-measure and adaptive E-measure are not part of ``main.m``; per image they are computed as in
the default variant and left out of the data-set numbers.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from covseg.metrics._arrays import gt_labels, soft_map, to_numpy

EPS = float(np.spacing(1))
CURVES: tuple[str, ...] = ("e_measure", "dice", "sensitivity", "specificity")


class ToolboxVersion(NamedTuple):
    """One version of Inf-Net's ``EvaluationTool/main.m``: its commit, date and E-measure binarisation."""

    commit: str
    date: str
    e_inclusive: bool  # E-measure on resmap >= threshold (else resmap > threshold)

    @property
    def e_rule(self) -> str:
        return "resmap >= threshold" if self.e_inclusive else "resmap > threshold"


TOOLBOX_VERSIONS: dict[str, ToolboxVersion] = {
    "matlab": ToolboxVersion("fb3a03b5b2f70642fbf2a12cde9e5c41b5ebd28e", "2020-05-12", e_inclusive=False),
    "matlab-2020-11": ToolboxVersion("e72363255d3433c88bcb04dad74dc8c0170b3328", "2020-11-21", e_inclusive=True),
}
#: MATLAB ``rgb2gray`` weights (the first row of the inverse NTSC transform)
RGB2GRAY = (0.298936021293775, 0.587043074451121, 0.114020904255103)


def matlab_thresholds() -> np.ndarray:
    """``1:-1/255:0`` as MATLAB's colon operator builds it (256 values, descending)."""
    step, n = -1 / 255, 255  # (0 - 1) / step is exactly 255 and 1 + 255 * step exactly 0
    out = np.empty(n + 1)
    k = np.arange(n // 2 + 1)
    out[k] = 1 + k * step  # first half counted from the start
    out[n - k] = 0 - k * step  # second half counted back from the end
    return out


def im2double(pred: Any) -> np.ndarray:
    """MATLAB ``im2double`` of the map's first channel: integers scaled by their type's range."""
    p = to_numpy(pred)
    if p.dtype == np.uint8:
        return p / 255
    if p.dtype == np.uint16:
        return p / 65535
    return soft_map(p)  # bool, other integers, floats: the checks of the default variant


def mapminmax01(x: np.ndarray) -> np.ndarray:
    """MATLAB ``mapminmax(x, 0, 1)`` of one row: ``(x - min) * (1 / (max - min))``; constant rows unchanged."""
    lo, hi = float(x.min()), float(x.max())
    if hi == lo or not (np.isfinite(lo) and np.isfinite(hi)):
        return x.astype(np.float64)
    gain = 1 / (hi - lo)
    return (x - lo) * gain + 0


def rgb2gray(rgb: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2gray``: the weighted sum of R, G, B, rounded half away from zero back to an integer type."""
    grey = rgb[..., 0] * RGB2GRAY[0] + rgb[..., 1] * RGB2GRAY[1] + rgb[..., 2] * RGB2GRAY[2]
    if np.issubdtype(rgb.dtype, np.integer):
        top = np.iinfo(rgb.dtype).max
        return np.clip(np.floor(grey + 0.5), 0, top).astype(rgb.dtype)
    return grey


def toolbox_ground_truth(stored: Any) -> np.ndarray:
    """``main.m``'s logical ``gt`` from the values a mask file stores, as ``imread`` returns them.

    A logical (1-bit) image is kept as it is; a colour image goes through ``rgb2gray``; then
    ``gt(:,:,1) > 128`` on the raw values, whatever their type: a 0/255 mask gives its foreground,
    a 0/1 or label-index mask (palette indices included) gives an empty ground truth.
    """
    g = to_numpy(stored)
    if g.dtype == bool:
        return g
    if g.ndim == 3 and g.shape[-1] >= 3:
        g = rgb2gray(g[..., :3])
    elif g.ndim == 3:
        g = g[..., 0]
    return g > 128


def prepare(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    """The toolbox's soft map (double in [0, 1]) and logical ground truth, 2D and of the same shape."""
    p = im2double(pred)
    g = gt_labels(gt, 1).astype(bool)
    if p.ndim != 2 or p.shape != g.shape:
        raise ValueError(f"the sod protocol scores 2D maps of the ground truth's shape, got {p.shape} and {g.shape}")
    return mapminmax01(p), g


def _round_half_away(x: float) -> int:
    return int(np.floor(x + 0.5)) if x >= 0 else -int(np.floor(-x + 0.5))


def _object(values: np.ndarray) -> float:
    x = float(np.mean(values))
    sigma = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return 2.0 * x / (x**2 + 1.0 + sigma + EPS)


def _ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    if pred.size == 0:
        return float("nan")  # mean2 / var / cov of an empty region
    dgt = gt.astype(np.float64)
    x, y = float(np.mean(pred)), float(np.mean(dgt))
    n = pred.size
    sigma_x2 = float(np.var(pred, ddof=1)) if n > 1 else 0.0
    sigma_y2 = float(np.var(dgt, ddof=1)) if n > 1 else 0.0
    sigma_xy = float(np.sum((pred - x) * (dgt - y)) / (n - 1)) if n > 1 else 0.0
    alpha = 4 * x * y * sigma_xy
    beta = (x**2 + y**2) * (sigma_x2 + sigma_y2)
    if alpha != 0:
        return alpha / (beta + EPS)
    return 1.0 if beta == 0 else 0.0


def s_measure(pred: np.ndarray, gt: np.ndarray, alpha: float = 0.5) -> float:
    """``StructureMeasure.m`` on a prepared map and logical ground truth (NaN where MATLAB gives NaN)."""
    y = float(np.mean(gt))
    if y == 0:
        return float(1.0 - np.mean(pred))
    if y == 1:
        return float(np.mean(pred))
    s_obj = y * _object(pred[gt]) + (1 - y) * _object((1.0 - pred)[~gt])
    rows, cols = gt.shape
    total = float(gt.sum())
    cx = _round_half_away(float(np.sum(gt.sum(axis=0) * np.arange(1, cols + 1))) / total)
    cy = _round_half_away(float(np.sum(gt.sum(axis=1) * np.arange(1, rows + 1))) / total)
    area = rows * cols
    w1 = cx * cy / area
    w2 = (cols - cx) * cy / area
    w3 = cx * (rows - cy) / area
    w4 = 1.0 - w1 - w2 - w3
    boxes = (np.s_[:cy, :cx], np.s_[:cy, cx:], np.s_[cy:, :cx], np.s_[cy:, cx:])
    s_reg = sum(w * _ssim(pred[b], gt[b]) for w, b in zip((w1, w2, w3, w4), boxes))
    q = float(alpha * s_obj + (1 - alpha) * s_reg)
    return 0.0 if q < 0 else q  # StructureMeasure.m: if (Q<0) Q=0; (NaN passes: NaN < 0 is false)


def enhanced_measure(tp: np.ndarray, fp: np.ndarray, n_fg: int, size: int) -> np.ndarray:
    """``Enhancedmeasure.m`` from the counts of a binarised map: its per-pixel term takes four values only
    (foreground or not in the map × in the ground truth), so the sum is a weighted sum of four terms."""
    tp, fp = np.asarray(tp, dtype=np.float64), np.asarray(fp, dtype=np.float64)
    fm = tp + fp  # sum(dFM(:))
    if n_fg == 0:
        total = size - fm  # enhanced = 1 - dFM
    elif n_fg == size:
        total = fm  # enhanced = dFM
    else:
        mu_fm, mu_gt = fm / size, n_fg / size
        fn = n_fg - tp
        tn = size - fm - fn
        total = np.zeros_like(fm)
        for count, in_map, in_gt in ((tp, 1.0, 1.0), (fp, 1.0, 0.0), (fn, 0.0, 1.0), (tn, 0.0, 0.0)):
            a_fm, a_gt = in_map - mu_fm, in_gt - mu_gt
            align = 2.0 * (a_gt * a_fm) / (a_gt * a_gt + a_fm * a_fm + EPS)
            total = total + ((align + 1) ** 2) / 4 * count
    return total / (size - 1 + EPS)


def curves(pred: np.ndarray, gt: np.ndarray, e_inclusive: bool = False) -> dict[str, np.ndarray]:
    """E-measure, Dice, sensitivity, specificity at :func:`matlab_thresholds` (descending).

    Dice, sensitivity and specificity binarise at ``p >= t``; the E-measure at ``p > t``, or at
    ``p >= t`` with ``e_inclusive`` (``main.m`` from commit ``e723632``, November 2020).
    """
    t = matlab_thresholds()
    fg, bg = np.sort(pred[gt]), np.sort(pred[~gt])
    n_fg, n_bg, size = fg.size, bg.size, gt.size
    tp_ge = n_fg - np.searchsorted(fg, t, side="left")
    fp_ge = n_bg - np.searchsorted(bg, t, side="left")
    tp_gt = n_fg - np.searchsorted(fg, t, side="right")
    fp_gt = n_bg - np.searchsorted(bg, t, side="right")
    e = enhanced_measure(tp_ge, fp_ge, n_fg, size) if e_inclusive else enhanced_measure(tp_gt, fp_gt, n_fg, size)
    fn = n_fg - tp_ge
    tn = (size - (tp_ge + fp_ge)) - fn
    found = tp_ge > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        dice = np.where(found, 2 * tp_ge / (n_fg + tp_ge + fp_ge), 0.0)
        sens = np.where(found, tp_ge / max(n_fg, 1), 0.0)
        spec = np.where(found, tn / (tn + fp_ge).astype(np.float64), 0.0)
    return {"e_measure": e, "dice": dice, "sensitivity": sens, "specificity": spec}


def _nanmax(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.max()) if finite.size else float("nan")


def case_metrics(
    pred: Any, gt: Any, alpha: float = 0.5, toolbox: str = "matlab"
) -> tuple[dict[str, float], dict[str, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """One image as ``main.m`` of ``toolbox`` (a :data:`TOOLBOX_VERSIONS` key) scores it: scalars, the four
    curves (descending thresholds), the prepared inputs."""
    if toolbox not in TOOLBOX_VERSIONS:
        raise ValueError(f"toolbox must be one of {tuple(TOOLBOX_VERSIONS)}, got {toolbox!r}")
    p, g = prepare(pred, gt)
    c = curves(p, g, e_inclusive=TOOLBOX_VERSIONS[toolbox].e_inclusive)
    out = {"s_measure": s_measure(p, g, alpha), "mae": float(np.mean(np.abs(g.astype(np.float64) - p)))}
    for name in CURVES:
        out[f"mean_{name}"] = float(np.mean(c[name]))
        out[f"max_{name}"] = _nanmax(c[name])
    return out, c, (p, g)


def toolbox_numbers(records: list[dict[str, Any]], case_curves: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """The data-set line ``main.m`` prints: ``meanDic``, ``maxDic``, ``Sm``, ``meanEm``, ``mae``… (see the module docstring)."""
    nan = float("nan")
    out: dict[str, float] = {
        "s_measure": float(np.mean([r["s_measure"] for r in records])) if records else nan,
        "mae": float(np.mean([r["mae"] for r in records])) if records else nan,
    }
    for name in CURVES:
        column = np.mean([c[name] for c in case_curves], axis=0) if case_curves else np.full(256, nan)
        out[f"mean_{name}"] = float(np.mean(column))
        out[f"max_{name}"] = _nanmax(column)
    return out
