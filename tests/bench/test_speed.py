"""Issue 29's speed levers keep results exact, and bench/bench_speed.py runs end to end (tiny sizes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import binary_erosion, generate_binary_structure

from covseg.metrics.surface import surface_distances, surface_voxels

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("shape", [(37, 53), (12, 17, 9)])
def test_shift_erosion_surface_is_scipys_binary_erosion_surface(shape):
    rng = np.random.default_rng(len(shape))
    for density in (0.3, 0.7, 0.95):
        mask = rng.random(shape) < density
        mask[0] = True  # touches the image border: outside counts as background
        structure = generate_binary_structure(len(shape), 1)
        expected = mask & ~binary_erosion(mask, structure=structure, border_value=0)
        assert np.array_equal(surface_voxels(mask), expected)
    assert not surface_voxels(np.zeros(shape, bool)).any()


def test_surface_distances_match_brute_force():
    rng = np.random.default_rng(3)
    pred, gt = rng.random((40, 30)) < 0.2, rng.random((40, 30)) < 0.2
    d_pg, d_gp = surface_distances(pred, gt, spacing=(0.7, 1.3))

    def brute(a, b):
        pa = np.argwhere(surface_voxels(a)) * (0.7, 1.3)
        pb = np.argwhere(surface_voxels(b)) * (0.7, 1.3)
        return np.sqrt(((pa[:, None] - pb[None]) ** 2).sum(-1)).min(1).astype(np.float32)

    np.testing.assert_allclose(d_pg, brute(pred, gt), rtol=1e-6)
    np.testing.assert_allclose(d_gp, brute(gt, pred), rtol=1e-6)


@pytest.mark.slow
def test_bench_speed_quick_writes_every_goal(tmp_path):
    data = Path(os.environ.get("COVSEG_DATA", ROOT / ".." / "shared" / "data"))
    if not (data / "covid_semiseg_infnet").is_dir() or not (data / "qata_cov19_sgseg").is_dir():
        pytest.skip(f"real data not found at {data} (set COVSEG_DATA)")
    env = {**os.environ, "COVSEG_DATA": str(data), "COVSEG_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "bench" / "bench_speed.py"), "--quick", "--only", "ct,startup,evaluate", "--out", str(tmp_path)]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=1500)
    result = json.loads(next(tmp_path.glob("*-quick.json")).read_text())
    goals = result["goals"]
    assert {"ct_api_ratio", "evaluate_s", "help_s", "first_prediction_s"} <= {k for k, v in goals.items() if v["value"] is not None}
    assert goals["volume_ratio"]["value"] is None  # a part not run is reported as not measured, never as a number
    assert result["ct"]["mask_agreement_dice_engine_vs_torch"] >= 0.999
    assert result["ct"]["engines"]["covseg"] == "ExportedNetwork"
    assert result["evaluate"]["cases"] == 12 and result["ct"]["images"] == 6
    text = next(tmp_path.glob("*-quick.md")).read_text()
    assert "AVX2" in text and "load average" in text and "not measured" in text
