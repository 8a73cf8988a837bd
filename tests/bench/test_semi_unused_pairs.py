"""bench/semi_unused_pairs.py: folds gathered across result folders, paired by fold (hand-made results)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import semi_unused_pairs as pairs


def _write(root: Path, folder: str, variant: str, fold: int, dices: list[float], unused: bool = True) -> None:
    result = {"medical_records": [], "sod_records": []}
    if unused:
        result["unused_medical_records"] = [{"case_id": str(i), "dice": d} for i, d in enumerate(dices)]
        result["unused_sod_records"] = [{"case_id": str(i), "mean_dice": d - 0.1} for i, d in enumerate(dices)]
    path = root / folder / variant / f"fold{fold}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))


def test_folds_come_from_the_first_folder_with_unused_scores_and_pair_by_fold(tmp_path, monkeypatch):
    monkeypatch.setattr(pairs, "RESULTS", tmp_path)
    _write(tmp_path, "semi_rerun", "m_10", 0, [0.6, 0.8])
    _write(tmp_path, "semi_rerun", "m_10", 1, [0.9, 0.9], unused=False)  # no unused scores: the next folder's fold 1
    _write(tmp_path, "semi", "m_10", 1, [0.5, 0.5])
    _write(tmp_path, "semi", "m_10", 2, [0.7, 0.7])  # the baseline has no fold 2: left out of the pairing
    for fold, dices in ((0, [0.5, 0.7]), (1, [0.6, 0.6])):
        _write(tmp_path, "semi_rerun", "b_10", fold, dices)
    method = pairs.fold_records("m_10", ["semi_rerun", "semi"], range(3))
    base = pairs.fold_records("b_10", ["semi_rerun"], range(3))
    assert {f: name for f, (name, _) in method.items()} == {0: "semi_rerun", 1: "semi", 2: "semi"}
    lines = pairs.table(method, base, "m")
    assert lines[0].count("fold") == 3 and "pooled (60 slices)" in lines[0]  # folds 0 and 1 only
    assert lines[2] == "| Δ medical Dice | +10.0 | -10.0 | **+0.0** |"
    assert lines[3] == "| Δ sod mean Dice | +10.0 | -10.0 | **+0.0** |"
    assert "fold 0: semi_rerun, fold 1: semi" in lines[-1]
