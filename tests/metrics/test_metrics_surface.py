"""HD95, ASSD and NSD: MONAI's own functions are the reference; hand cases pin the definitions."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.ndimage import binary_erosion, gaussian_filter
from scipy.spatial.distance import cdist

from covseg.metrics import medical_metrics, surface_distances, surface_metrics
from covseg.metrics.surface import image_diagonal, mask_edges


def _blob(shape: tuple[int, ...], seed: int, fraction: float = 0.35, sigma: float = 3.0) -> np.ndarray:
    field = gaussian_filter(np.random.default_rng(seed).random(shape), sigma)
    return field > np.quantile(field, 1 - fraction)


def _monai(pred: np.ndarray, gt: np.ndarray, spacing, tolerance: float) -> dict[str, float]:
    torch = pytest.importorskip("torch")
    metrics = pytest.importorskip("monai.metrics")

    def onehot(m: np.ndarray):
        return torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))

    p, g = onehot(pred), onehot(gt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "hd95": metrics.compute_hausdorff_distance(
                p, g, percentile=95, directed=False, spacing=spacing
            ).item(),
            "hd": metrics.compute_hausdorff_distance(p, g, spacing=spacing).item(),
            "assd": metrics.compute_average_surface_distance(p, g, symmetric=True, spacing=spacing).item(),
            "nsd": metrics.compute_surface_dice(
                p, g, [tolerance], spacing=spacing, use_subvoxels=False
            ).item(),
        }


CASES = [
    ((96, 112), None, 1.0),
    ((96, 112), (0.7, 0.7), 1.5),
    ((80, 128), (0.6, 1.4), 2.0),  # anisotropic 2D
    ((40, 48, 24), (0.8, 0.8, 3.0), 3.0),  # anisotropic 3D (CT-like slice thickness)
    ((32, 32, 32), None, 1.0),
]


@pytest.mark.parametrize(("shape", "spacing", "tolerance"), CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_monai(shape, spacing, tolerance, seed):
    pred, gt = _blob(shape, 2 * seed + 10), _blob(shape, 2 * seed + 11)
    ours = surface_metrics(pred, gt, spacing, tolerance=tolerance)
    ref = _monai(pred, gt, spacing, tolerance)
    # MONAI works in float32; agreement is to float32 precision.
    assert ours["hd95"] == pytest.approx(ref["hd95"], rel=1e-6, abs=1e-6)
    assert ours["assd"] == pytest.approx(ref["assd"], rel=1e-6, abs=1e-6)
    assert ours["nsd"] == pytest.approx(ref["nsd"], rel=1e-6, abs=1e-7)
    ours_max = surface_metrics(pred, gt, spacing, percentile=100)["hd95"]
    assert ours_max == pytest.approx(ref["hd"], rel=1e-6)


def test_matches_monai_when_masks_touch_the_border():
    gt = np.zeros((40, 40), dtype=bool)
    gt[0:15, 0:20] = True  # touches two image borders: border pixels are surface pixels
    pred = np.zeros((40, 40), dtype=bool)
    pred[0:18, 3:25] = True
    ours = surface_metrics(pred, gt, (1.0, 2.0), tolerance=2.0)
    ref = _monai(pred, gt, (1.0, 2.0), 2.0)
    for key in ("hd95", "assd", "nsd"):
        assert ours[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-7)


def _uncropped_distances(pred, gt, spacing):
    """Brute force on the full image: erosion edges and all pairwise distances."""

    def edges(m):
        return m & ~binary_erosion(m, border_value=0)

    scale = np.asarray(spacing, dtype=np.float64)
    ep, eg = np.argwhere(edges(pred)) * scale, np.argwhere(edges(gt)) * scale
    return cdist(ep, eg).min(axis=1).astype(np.float32), cdist(eg, ep).min(axis=1).astype(np.float32)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.5, 1.7)])
def test_cropping_changes_nothing(spacing):
    pred, gt = np.zeros((128, 128), dtype=bool), np.zeros((128, 128), dtype=bool)
    pred[60:75, 40:70] = True
    gt[62:80, 45:66] = True
    gt[90, 90] = True  # an isolated voxel far away
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    r_pg, r_gp = _uncropped_distances(pred, gt, spacing)
    np.testing.assert_array_equal(np.sort(d_pg), np.sort(r_pg))
    np.testing.assert_array_equal(np.sort(d_gp), np.sort(r_gp))
    edges_pred, _ = mask_edges(pred, gt)
    # Rows 60..90 and columns 40..90 hold the union; one voxel of margin on each side.
    assert edges_pred.shape == (90 - 60 + 1 + 2, 90 - 40 + 1 + 2)


def test_single_voxels_by_hand():
    a = np.zeros((5, 5), dtype=bool)
    b = np.zeros((5, 5), dtype=bool)
    a[0, 0] = True
    b[2, 0] = True
    m = surface_metrics(a, b, (1.5, 1.0), tolerance=3.0)
    assert m == {"hd95": 3.0, "assd": 3.0, "nsd": 1.0}
    assert surface_metrics(a, b, (1.5, 1.0), tolerance=2.9)["nsd"] == 0.0


def test_hd95_is_the_max_of_directed_percentiles_not_the_pooled_percentile():
    gt = np.zeros((64, 64), dtype=bool)
    gt[20:40, 20:40] = True
    pred = gt.copy()
    pred[29:31, 40:60] = True  # a long spur: many prediction surface voxels far from gt
    d_pg, d_gp = surface_distances(pred, gt)
    directed = max(np.quantile(d_pg.astype(np.float64), 0.95), np.quantile(d_gp.astype(np.float64), 0.95))
    pooled = np.quantile(np.concatenate([d_pg, d_gp]).astype(np.float64), 0.95)
    ours = surface_metrics(pred, gt)["hd95"]
    assert ours == pytest.approx(directed)
    assert abs(directed - pooled) > 1.0  # the two definitions differ clearly here
    assert ours == pytest.approx(_monai(pred, gt, None, 1.0)["hd95"], rel=1e-6)
    assert surface_metrics(pred, gt)["assd"] == pytest.approx(
        np.concatenate([d_pg, d_gp]).astype(np.float64).mean()
    )


def test_one_side_empty():
    z = np.zeros((10, 20), dtype=bool)
    some = z.copy()
    some[3:5, 4:9] = True
    for a, b in ((z, some), (some, z)):
        nan = surface_metrics(a, b, (2.0, 1.0))
        assert math.isnan(nan["hd95"]) and math.isnan(nan["assd"]) and nan["nsd"] == 0.0
        worst = surface_metrics(a, b, (2.0, 1.0), empty_distance="max")
        assert worst["hd95"] == worst["assd"] == pytest.approx(math.hypot(9 * 2.0, 19 * 1.0))
        fixed = surface_metrics(a, b, (2.0, 1.0), empty_distance=100.0)
        assert fixed["hd95"] == fixed["assd"] == 100.0
    # MONAI 1.6 gives inf for ASSD and the plain HD (and NaN for HD95: torch.quantile of all-inf
    # distances); empty_distance=inf reproduces the inf.
    ref = _monai(z, some, None, 1.0)
    ours = surface_metrics(z, some, None, empty_distance=float("inf"))
    assert math.isinf(ref["assd"]) and math.isinf(ref["hd"]) and math.isnan(ref["hd95"])
    assert math.isinf(ours["hd95"]) and math.isinf(ours["assd"])
    assert ours["nsd"] == ref["nsd"] == 0.0


@pytest.mark.parametrize(
    ("empty", "empty_distance", "expected"),
    [
        ("nan", "max", (math.nan, math.nan, math.nan)),
        ("one", "nan", (0.0, 0.0, 1.0)),
        ("zero", "max", ("diag", "diag", 0.0)),
        ("zero", "nan", (math.nan, math.nan, 0.0)),
    ],
)
def test_both_empty_follows_policy(empty, empty_distance, expected):
    z = np.zeros((7, 9, 3), dtype=bool)
    spacing = (1.0, 1.0, 2.5)
    m = surface_metrics(z, z, spacing, empty=empty, empty_distance=empty_distance)
    diag = image_diagonal(z.shape, spacing)
    for key, want in zip(("hd95", "assd", "nsd"), expected):
        want = diag if want == "diag" else want
        assert (math.isnan(m[key]) and math.isnan(want)) or m[key] == pytest.approx(want), key


def test_image_diagonal():
    assert image_diagonal((11, 21)) == pytest.approx(math.hypot(10, 20))
    assert image_diagonal((5, 5, 3), (1, 1, 2)) == pytest.approx(math.sqrt(16 + 16 + 16))


def test_medical_metrics_use_spacing_in_3d():
    gt = _blob((24, 28, 12), 5)
    pred = np.roll(gt, 1, axis=2)
    iso = medical_metrics(pred, gt)[0]
    aniso = medical_metrics(pred, gt, spacing=(0.8, 0.8, 3.0))[0]
    assert aniso["dice"] == iso["dice"]
    assert aniso["hd95"] > iso["hd95"]  # the shift is along the 3 mm axis
    ref = _monai(pred, gt, (0.8, 0.8, 3.0), 1.0)
    assert aniso["hd95"] == pytest.approx(ref["hd95"], rel=1e-6)
    with pytest.raises(ValueError, match="spacing has 2 values for a 3D image"):
        medical_metrics(pred, gt, spacing=(1.0, 1.0))


def test_invalid_arguments():
    a = _blob((16, 16), 1)
    with pytest.raises(ValueError, match="tolerance"):
        surface_metrics(a, a, tolerance=-1)
    with pytest.raises(ValueError, match="percentile"):
        surface_metrics(a, a, percentile=101)
    with pytest.raises(ValueError, match="empty_distance"):
        surface_metrics(a, a, empty_distance="huge")  # type: ignore[arg-type]
