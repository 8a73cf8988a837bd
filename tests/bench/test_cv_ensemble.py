"""bench/bench_cv_ensemble.py's pairing, pooling and honesty checks (no models: hand-made fold results)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import bench_cv_ensemble as ens


def _fold(dices: list[float], maes: list[float], start: int = 0) -> dict:
    cases = [str(start + i) for i in range(len(dices))]
    medical = [{"case_id": c, "class": 1, "dice": d + 0.01} for c, d in zip(cases, dices)]
    sod = [
        {"case_id": c, "mae": m, **{k: d for k in ens.SOD if k != "mae"}}
        for c, d, m in zip(cases, dices, maes)
    ]
    return {"medical_records": medical, "sod_records": sod}


def test_lever_names_round_trip():
    for members in (("a",), ("a", "b"), ("a", "b", "c")):
        for tta in (False, True):
            assert ens.parse_lever(ens.lever_name(members, tta)) == (members, tta)
    assert ens.levers_for(["a", "b"], [("a", "b")]) == ["a", "a__tta", "b", "b__tta", "a+b", "a+b__tta"]


def test_pool_averages_every_slice_of_every_fold():
    pooled = ens.pool([_fold([0.5, 0.7], [0.1, 0.2]), _fold([0.9], [0.0], start=2)])
    assert pooled["mean_dice"] == pytest.approx(0.7)
    assert pooled["dice@0.5"] == pytest.approx(0.71)
    assert pooled["mae"] == pytest.approx(0.1)


def test_paired_deltas_use_only_shared_folds_and_count_gains_by_direction():
    lever = {
        0: {"mean_dice": 0.70, "mae": 0.05},
        1: {"mean_dice": 0.60, "mae": 0.09},
        3: {"mean_dice": 0.9, "mae": 0.0},
    }
    base = {
        0: {"mean_dice": 0.65, "mae": 0.06},
        1: {"mean_dice": 0.62, "mae": 0.08},
        2: {"mean_dice": 0.5, "mae": 0.1},
    }
    dice = ens.paired_deltas(lever, base, "mean_dice")
    assert dice["folds"] == 2 and dice["better"] == 1
    assert dice["per_fold"] == pytest.approx({0: 0.05, 1: -0.02})
    mae = ens.paired_deltas(lever, base, "mae")
    # lower MAE is the gain
    assert mae["better"] == 1 and mae["per_fold"] == pytest.approx({0: -0.01, 1: 0.01})


def test_reproduction_gap_is_the_largest_per_case_difference():
    a, b = _fold([0.5, 0.7], [0.1, 0.2]), _fold([0.5, 0.7], [0.1, 0.2])
    assert ens.reproduction_gap(a, b) == 0.0
    b["sod_records"][1]["s_measure"] += 3e-4
    assert ens.reproduction_gap(a, b) == pytest.approx(3e-4)
    b["sod_records"][1]["case_id"] = "other"
    assert ens.reproduction_gap(a, b) == float("inf")


def test_complete_folds_read_the_bench_result_files(tmp_path):
    (tmp_path / "v").mkdir()
    for k in (0, 2):
        (tmp_path / "v" / f"fold{k}.json").write_text("{}")
    assert ens.complete_folds(tmp_path, "v", [0, 1, 2, 3]) == [0, 2]


def _run(tmp_path: Path, name: str, train: list[str], val: list[str]) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "splits.json").write_text(json.dumps({"train": train, "val": val}))
    return d


def test_ensembles_refuse_members_that_trained_on_held_out_slices(tmp_path):
    a = _run(tmp_path, "a", ["1", "2"], ["3"])
    b = _run(tmp_path, "b", ["1", "2", "neg_0"], ["3"])  # extra training-only cases are fine
    ens.check_members_honest([a, b])
    leaked = _run(tmp_path, "c", ["1", "3"], ["3"])
    with pytest.raises(SystemExit, match="trained on slices that the fold holds out"):
        ens.check_members_honest([a, leaked])
    other = _run(tmp_path, "d", ["1", "3"], ["2"])
    with pytest.raises(SystemExit, match="holds out other slices"):
        ens.check_members_honest([a, other])
