"""FLARE's NSD (``covseg.metrics.surface_area``): surfel areas against closed forms, surface Dice on
cases whose answer is known, agreement with DeepMind's ``surface_distance`` (FLARE's ``SurfaceDice.py``)
through stored reference values, and FLARE22's scoring rules in ``FlareMetrics``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from covseg.metrics import surface_area as sa
from covseg.metrics.flare import FLARE22_TOLERANCES_MM, FlareMetrics, flare_scores

REFERENCE = Path(__file__).parents[1] / "assets" / "nsd_reference.json"


def blob_pair(seed: int) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """The generator of ``bench/bench_nsd_reference.py`` (which wrote the stored values): keep them equal."""
    rng = np.random.default_rng(seed)
    ndim = 2 if seed % 3 == 0 else 3
    shape = tuple(int(n) for n in rng.integers(24, 65 if ndim == 2 else 41, ndim))
    spacing = tuple(float(s) for s in np.round(rng.uniform(0.4, 3.0, ndim), 3))
    field = gaussian_filter(rng.random(shape), rng.uniform(1.5, 3.0))
    gt = field > np.quantile(field, rng.uniform(0.5, 0.85))
    noisy = gaussian_filter(gt + rng.normal(0, 0.6, shape), rng.uniform(0.8, 1.5))
    return noisy > 0.5, gt, spacing


def box_area(size: tuple[int, ...], spacing: tuple[float, ...]) -> float:
    """Marching-cubes area (3D) or marching-squares length (2D) of a box of ``size`` voxels: flat faces between
    the outer voxel centres, edges cut by strips half a diagonal wide, corners by triangles."""
    if len(size) == 2:
        (a, b), (s0, s1) = size, spacing
        return 2 * ((a - 1) * s0 + (b - 1) * s1) + 2 * math.hypot(s0, s1)
    (a, b, c), (s0, s1, s2) = size, spacing
    lengths = ((a - 1) * s0, (b - 1) * s1, (c - 1) * s2)
    faces = 2 * (lengths[0] * lengths[1] + lengths[1] * lengths[2] + lengths[0] * lengths[2])
    edges = 2 * (
        lengths[2] * math.hypot(s0, s1) + lengths[1] * math.hypot(s0, s2) + lengths[0] * math.hypot(s1, s2)
    )
    corners = math.sqrt((s0 * s1) ** 2 + (s0 * s2) ** 2 + (s1 * s2) ** 2)  # 8 triangles of 1/8 of it
    return faces + edges + corners


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.3, 2.5), (0.7, 2.0)])
def test_surfel_areas_of_a_box_are_the_closed_form(spacing):
    size = (5, 7, 4)[: len(spacing)]
    mask = np.zeros((12, 12, 9)[: len(spacing)], bool)
    mask[tuple(slice(2, 2 + n) for n in size)] = True
    d = sa.surfel_distances(mask, mask, spacing)
    assert d.gt_areas.sum() == pytest.approx(box_area(size, spacing), rel=1e-12)
    assert d.pred_areas.sum() == pytest.approx(box_area(size, spacing), rel=1e-12)
    # a box touching the image border is closed by the background outside the image: same area
    edge = np.zeros_like(mask)
    edge[tuple(slice(0, n) for n in size)] = True
    assert sa.surfel_distances(edge, edge, spacing).gt_areas.sum() == pytest.approx(
        box_area(size, spacing), rel=1e-12
    )


def test_identical_masks_score_one_and_distance_zero():
    _, gt, spacing = blob_pair(4)
    d = sa.surfel_distances(gt, gt, spacing)
    assert sa.surface_dice(d, 0.0) == 1.0 and sa.robust_hausdorff(d, 95) == 0.0
    assert sa.average_surface_distances(d) == (0.0, 0.0)


def test_a_far_copy_gives_the_known_fraction():
    """The prediction is the ground-truth box plus a second box further than τ: the ground truth's surface and the
    matching half of the prediction's are at distance 0, the far box's surfels beyond τ, so NSD = 2A / (2A + B)."""
    spacing = (0.9, 1.2, 2.0)
    gt = np.zeros((40, 16, 12), bool)
    gt[2:8, 3:9, 2:7] = True
    pred = gt.copy()
    pred[20:30, 4:12, 3:9] = True
    a, b = box_area((6, 6, 5), spacing), box_area((10, 8, 6), spacing)
    assert sa.surfel_surface_dice(pred, gt, spacing, tolerance=3.0) == pytest.approx(
        2 * a / (2 * a + b), rel=1e-12
    )
    # moved further than τ along x (12 voxels × 0.9 mm > 3 mm from every gt surfel): nothing matches
    far = np.roll(gt, 12, axis=0)
    assert sa.surfel_surface_dice(far, gt, spacing, tolerance=3.0) == 0.0
    # moved by one voxel (0.9 mm): every surfel has its copy one step away, so τ = 0.9 mm catches all of them
    near = np.roll(gt, 1, axis=0)
    assert sa.surfel_surface_dice(near, gt, spacing, tolerance=0.9) == 1.0
    assert sa.surfel_surface_dice(near, gt, spacing, tolerance=0.5) < 1.0


def test_empty_masks_follow_the_library():
    gt = np.zeros((10, 10, 10), bool)
    gt[3:6, 3:6, 3:6] = True
    empty = np.zeros_like(gt)
    assert sa.surfel_surface_dice(empty, gt, (1.0, 1.0, 1.0)) == 0.0
    assert math.isnan(sa.surfel_surface_dice(empty, empty, (1.0, 1.0, 1.0)))
    d = sa.surfel_distances(empty, gt, (1.0, 1.0, 1.0))
    assert np.all(np.isinf(d.gt_to_pred)) and sa.robust_hausdorff(d) == math.inf
    with pytest.raises(ValueError, match="spacing"):
        sa.surfel_distances(gt, gt, (1.0, 1.0))
    with pytest.raises(ValueError, match="2D or 3D"):
        sa.surfel_distances(gt[0, 0], gt[0, 0])


def test_agrees_with_deepmind_surface_distance_on_stored_cases():
    """12 random blob pairs (2D and 3D, anisotropic spacing): surface Dice at 0.5 / 1 / 2 / 3 mm, the 95 % robust
    Hausdorff distance, both average surface distances and the surface areas equal the library's to 1e-9
    (values written by ``bench/bench_nsd_reference.py --write-test-data`` with the library at the stored commit)."""
    stored = json.loads(REFERENCE.read_text())
    assert len(stored["cases"]) == 12
    for case in stored["cases"]:
        pred, gt, spacing = blob_pair(case["seed"])
        assert (list(gt.shape), list(spacing)) == (case["shape"], case["spacing"])
        assert (int(gt.sum()), int(pred.sum())) == (case["gt_voxels"], case["pred_voxels"]), (
            "generator drifted"
        )
        ref = case["reference"]
        d = sa.surfel_distances(pred, gt, spacing)
        nsd = [sa.surface_dice(d, t) for t in stored["tolerances_mm"]]
        assert nsd == pytest.approx(ref["nsd"], abs=1e-9)
        assert sa.robust_hausdorff(d, 95) == pytest.approx(ref["hd95"], abs=1e-9)
        assert sa.average_surface_distances(d) == pytest.approx(
            (ref["asd_gt_to_pred"], ref["asd_pred_to_gt"]), abs=1e-9
        )
        assert (d.gt_areas.sum(), d.pred_areas.sum()) == pytest.approx(
            (ref["area_gt"], ref["area_pred"]), rel=1e-12
        )
    assert (
        0.6 < min(c["reference"]["nsd"][1] for c in stored["cases"]) < 0.95
    )  # the cases are not all trivial


def test_flare_metrics_crop_each_class_without_changing_the_scores():
    """Per-class bounding boxes (found in one pass) give the same DSC and NSD as whole-volume masks."""
    rng = np.random.default_rng(3)
    gt = np.zeros((40, 36, 20), np.uint8)
    gt[4:14, 5:15, 3:9] = 1
    gt[20:34, 8:30, 6:16] = 2
    gt[30:36, 2:6, 1:4] = 3
    pred = np.roll(gt, (1, -1, 0), axis=(0, 1, 2))
    pred[rng.random(gt.shape) < 0.02] = 3
    spacing = (0.8, 0.8, 2.5)
    recs = FlareMetrics(num_classes=3, tolerance=1.0).update(pred, gt, spacing)
    for rec in recs:
        c = rec["class"]
        assert rec["nsd"] == pytest.approx(
            sa.surfel_surface_dice(pred == c, gt == c, spacing, 1.0), abs=1e-12
        )
        assert rec["dice"] == pytest.approx(
            2 * np.sum((pred == c) & (gt == c)) / (np.sum(pred == c) + np.sum(gt == c))
        )
        assert (rec["gt_voxels"], rec["pred_voxels"]) == (int(np.sum(gt == c)), int(np.sum(pred == c)))
    voxel = FlareMetrics(num_classes=3, tolerance=1.0, nsd="voxel").update(pred, gt, spacing)
    assert [r["dice"] for r in voxel] == pytest.approx([r["dice"] for r in recs])
    assert any(abs(v["nsd"] - r["nsd"]) > 0.01 for v, r in zip(voxel, recs))  # the two NSDs differ


def test_flare22_rules():
    """FLARE22's script: τ per organ, both empty → 1, one empty → 0, DSC < 0.2 → NSD 0, aorta / IVC / esophagus
    on the ground truth's slices [z_min, z_max) only, 4 decimals."""
    spacing = (1.0, 1.0, 1.0)
    gt = np.zeros((20, 20, 16), bool)
    gt[5:12, 5:12, 3:9] = True  # slices 3..8
    longer = gt.copy()
    longer[5:12, 5:12, 8:14] = True  # the prediction runs on beyond the ground truth
    assert flare_scores(longer, gt, spacing, 2.0, flare22_class=5) == (1.0, 1.0)  # the aorta: slab [3, 8)
    dsc, nsd = flare_scores(longer, gt, spacing, 2.0, flare22_class=1)  # the liver: whole volume
    assert dsc == round(2 * 42 * 6 / (42 * 6 + 42 * 11), 4) and 0 < nsd < 1 and nsd == round(nsd, 4)
    tiny = np.zeros_like(gt)
    tiny[5, 5, 3] = True
    assert flare_scores(tiny, gt, spacing, 5.0, flare22_class=1) == (round(2 / 295, 4), 0.0)  # DSC < 0.2
    empty = np.zeros_like(gt)
    assert flare_scores(empty, empty, spacing, 2.0, flare22_class=9) == (1.0, 1.0)
    assert flare_scores(empty, gt, spacing, 2.0, flare22_class=9) == (0.0, 0.0)
    assert all(math.isnan(v) for v in flare_scores(empty, empty, spacing, 2.0))  # plain: the empty policy
    m = FlareMetrics(num_classes=13, tolerance="flare22")
    assert m.tolerances == {str(c): t for c, t in FLARE22_TOLERANCES_MM.items()} and m.tolerances["12"] == 7.0
    labels = np.where(gt, 1, 0).astype(np.uint8)
    recs = m.update(labels, labels, spacing)
    assert [(r["dice"], r["nsd"]) for r in recs] == [(1.0, 1.0)] * 13  # organs 2..13 absent from both: 1
    with pytest.raises(ValueError, match="13 organs"):
        FlareMetrics(num_classes=3, tolerance="flare22")


def test_cli_tolerance_flare22_gives_flare22s_table(tmp_path, capsys):
    """``covseg evaluate --protocol flare --num-classes 13 --tolerance flare22``: the per-organ τ and rules, the same
    numbers as ``FlareMetrics(tolerance="flare22")``; the option is refused in one line elsewhere."""
    from covseg.data.imageio import write_volume

    from tests.helpers import run_cli

    spacing = (1.5, 1.5, 2.0)
    gt = np.zeros((32, 32, 20), np.uint8)
    for c in range(1, 14):
        if c != 8:  # the left adrenal gland is absent from both: scored 1
            gt[2 + 2 * c : 4 + 2 * c, 4 : 8 + c, 3 : 8 + c % 5] = c
    pred = np.roll(gt, 1, axis=1)
    affine = np.diag([*spacing, 1.0])
    write_volume(tmp_path / "gt" / "case.nii.gz", gt, affine, dtype="uint8")
    write_volume(tmp_path / "pred" / "case.nii.gz", pred, affine, dtype="uint8")
    base = [
        "evaluate",
        "--pred",
        tmp_path / "pred",
        "--gt",
        tmp_path / "gt",
        "--no-report",
        "--tolerance",
        "flare22",
    ]
    assert run_cli([*base, "--protocol", "flare", "--num-classes", "13", "--out", tmp_path / "e"]) == 0
    assert "FLARE table: NSD at FLARE22's per-organ τ" in capsys.readouterr().out
    table = json.loads((tmp_path / "e" / "summary.json").read_text())["flare"]
    assert (
        table["tolerance_mm"] == "flare22"
        and table["tolerances_mm"]["12"] == 7.0
        and table["nsd"] == "surfel"
    )
    expected = FlareMetrics(num_classes=13, tolerance="flare22").update(pred, gt, spacing)
    (row,) = table["cases"]
    assert [(row[f"dsc_{c}"], row[f"nsd_{c}"]) for c in range(1, 14)] == [
        (r["dice"], r["nsd"]) for r in expected
    ]
    assert row["dsc_8"] == row["nsd_8"] == 1.0 and 0 < row["dsc_1"] < 1
    for extra in (["--protocol", "medical"], ["--protocol", "flare", "--num-classes", "3"]):
        assert run_cli([*base, *extra, "--out", tmp_path / "x"]) != 0
        err = capsys.readouterr().err
        assert (
            "--tolerance flare22: FLARE22's per-organ tolerances need --protocol flare --num-classes 13"
            in err
        )
        assert "Traceback" not in err
