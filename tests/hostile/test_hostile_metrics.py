"""Issue 25, metrics: ``covseg evaluate --toolbox matlab`` against what Inf-Net's MATLAB toolbox does
with the same files, and ``per_case.csv`` keeping numbers as numbers.

* ground truth: ``main.m`` reads a mask file as ``gt(:,:,1) > 128``, so a 0/1 mask is empty to it;
  the matlab modes follow it (and say which cases it changed), the default variant does not;
* versions: ``matlab`` is ``main.m`` at fb3a03b (the published numbers), ``matlab-2020-11`` at
  e723632 (E-measure at ``>=``);
* ``per_case.csv``: a negative number is a number, not text behind the formula guard.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covseg.metrics import SodMetrics

from tests.helpers import run_cli

SIZE = 32



def _disk(cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


@pytest.fixture()
def folders(tmp_path: Path) -> dict:
    """Soft maps and three encodings of ground truth: 0/1 (empty to the toolbox), 0/255, 1-bit."""
    rng = np.random.default_rng(3)
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    masks = {"zero_one": _disk(14, 15, 7), "zero_255": _disk(17, 12, 6), "one_bit": _disk(12, 18, 5)}
    maps = {}
    for name, mask in masks.items():
        soft = np.clip(mask * 160 + rng.normal(50, 30, mask.shape), 0, 255).astype(np.uint8)
        Image.fromarray(soft).save(pred / f"{name}.png")
        maps[name] = soft
    Image.fromarray(masks["zero_one"]).save(gt / "zero_one.png")  # stored 0/1
    Image.fromarray(masks["zero_255"] * 255).save(gt / "zero_255.png")
    Image.fromarray(masks["one_bit"].astype(bool)).save(gt / "one_bit.png")  # mode "1": logical to MATLAB
    assert Image.open(gt / "one_bit.png").mode == "1"
    return {"pred": pred, "gt": gt, "out": tmp_path / "out", "masks": masks, "maps": maps}


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "per_case.csv").open(newline="") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def _reference(soft: np.ndarray, logical_gt: np.ndarray, toolbox: str) -> dict[str, float]:
    acc = SodMetrics(toolbox=toolbox)
    acc.update(soft, logical_gt.astype(bool))
    return acc.per_case()[0]


def test_matlab_mode_reads_ground_truth_as_main_m(folders, capsys):
    """A 0/1 mask is empty to the toolbox (gt > 128): scored so, and named in a note and in summary.json."""
    code = run_cli(["evaluate", "--pred", folders["pred"], "--gt", folders["gt"], "--out", folders["out"],
                    "--protocol", "sod", "--toolbox", "matlab", "--no-report"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = _rows(folders["out"])
    empty = np.zeros((SIZE, SIZE), bool)
    for name, gt in (("zero_one", empty), ("zero_255", folders["masks"]["zero_255"]), ("one_bit", folders["masks"]["one_bit"])):
        ref = _reference(folders["maps"][name], gt, "matlab")
        for key in ("s_measure", "mae", "mean_dice", "mean_e_measure"):
            assert float(rows[name][key]) == pytest.approx(ref[key], rel=1e-9, abs=1e-12), (name, key)
    # the empty-ground-truth branch of StructureMeasure.m: 1 - mean of the normalised map; no Dice at all
    p = folders["maps"]["zero_one"] / 255
    assert float(rows["zero_one"]["s_measure"]) == pytest.approx(1 - np.mean((p - p.min()) / (p.max() - p.min())), abs=1e-9)
    assert float(rows["zero_one"]["max_dice"]) == 0.0
    assert "1 ground-truth mask(s) read as the MATLAB toolbox reads them" in captured.out and "zero_one" in captured.out
    summary = json.loads((folders["out"] / "summary.json").read_text())
    assert summary["toolbox_ground_truth"]["cases"] == ["zero_one"]
    assert "> 128" in summary["params"]["gt"] and "fb3a03b" in summary["params"]["reference"]


def test_default_sod_variant_keeps_non_zero_foreground(folders, capsys):
    """The default (pysodmetrics) variant reads the same 0/1 mask as its foreground: no note, Dice > 0."""
    code = run_cli(["evaluate", "--pred", folders["pred"], "--gt", folders["gt"], "--out", folders["out"],
                    "--protocol", "sod", "--no-report"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = _rows(folders["out"])
    assert float(rows["zero_one"]["max_dice"]) > 0.8
    assert "read as the MATLAB toolbox" not in captured.out
    assert "toolbox_ground_truth" not in json.loads((folders["out"] / "summary.json").read_text())


def test_matlab_2020_11_is_the_later_main_m(folders, capsys):
    """``--toolbox matlab-2020-11``: E-measure at p >= t (commit e723632); the other numbers as ``matlab``."""
    code = run_cli(["evaluate", "--pred", folders["pred"], "--gt", folders["gt"], "--out", folders["out"],
                    "--protocol", "sod", "--toolbox", "matlab-2020-11", "--no-report"])
    assert code == 0, capsys.readouterr().err
    rows = _rows(folders["out"])
    gt = folders["masks"]["zero_255"]
    new, old = _reference(folders["maps"]["zero_255"], gt, "matlab-2020-11"), _reference(folders["maps"]["zero_255"], gt, "matlab")
    assert float(rows["zero_255"]["mean_e_measure"]) == pytest.approx(new["mean_e_measure"], rel=1e-9)
    assert new["mean_e_measure"] != pytest.approx(old["mean_e_measure"], rel=1e-9)
    assert float(rows["zero_255"]["s_measure"]) == pytest.approx(old["s_measure"], rel=1e-9)
    summary = json.loads((folders["out"] / "summary.json").read_text())
    assert summary["params"]["toolbox"] == "matlab-2020-11" and "e723632" in summary["params"]["reference"]


def test_toolbox_help_names_versions_and_ground_truth_rule():
    from typer.testing import CliRunner

    from covseg.cli.main import app

    result = CliRunner().invoke(app, ["evaluate", "--help"], env={"COLUMNS": "400", "TERM": "dumb"})
    text = " ".join(result.output.split())
    for words in ("fb3a03b", "e723632", "matlab-2020-11", "> 128", "a 0/1 mask is empty"):
        assert words in text, words


def test_inverted_map_scores_zero_not_negative(folders, capsys):
    """StructureMeasure.m clamps a negative S-measure at 0; per_case.csv shows 0, not -0.18."""
    inverted = ((1 - folders["masks"]["zero_255"]) * 255).astype(np.uint8)
    Image.fromarray(inverted).save(folders["pred"] / "zero_255.png")
    code = run_cli(["evaluate", "--pred", folders["pred"], "--gt", folders["gt"], "--out", folders["out"],
                    "--protocol", "sod", "--toolbox", "matlab", "--no-report"])
    assert code == 0, capsys.readouterr().err
    assert _rows(folders["out"])["zero_255"]["s_measure"] == "0"


def test_negative_metric_reads_back_as_a_number(tmp_path):
    """per_case.csv: a negative metric is written as a number; only text gets the formula guard."""
    from covseg.metrics.base import MetricAccumulator
    from covseg.metrics.evaluation import Case, EvaluationRun, write_outputs

    class SignedError(MetricAccumulator):
        protocol = "signed"
        metric_names = ("volume_error",)
        primary_metric = "volume_error"

        def update(self, pred, gt, spacing=None, case_id=None):
            record = {"case_id": self._next_case_id(case_id), "volume_error": float(np.sum(pred) - np.sum(gt)) / 100}
            self._records.append(record)
            return dict(record)

    acc = SignedError()
    acc.update(np.zeros(13), np.ones(13), case_id="-2+3")  # a name that looks like a formula
    acc.update(np.ones(2), np.zeros(2), case_id="b")
    acc.update(np.zeros(1), np.zeros(1), case_id="c")
    acc._records[2]["volume_error"] = np.float64("nan")
    run = EvaluationRun(accumulator=acc, cases=[Case(c, None, tmp_path / f"{c}.png") for c in ("-2+3", "b", "c")])
    write_outputs(run, tmp_path / "out")
    with (tmp_path / "out" / "per_case.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["volume_error"] for r in rows] == ["-0.13", "0.02", "nan"]
    assert float(rows[0]["volume_error"]) == -0.13 and math.isnan(float(rows[2]["volume_error"]))
    assert rows[0]["case_id"] == "'-2+3"  # text is still neutralised
