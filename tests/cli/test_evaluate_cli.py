"""``covseg evaluate`` end to end on temporary folders (and one real-data run)."""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter, shift

from covseg.metrics import MedicalMetrics, SodMetrics, surface_metrics

SIZE = 48


def run_cli(args: list[str]) -> int:
    """Run ``covseg`` in-process and return its exit code."""
    from covseg.cli.main import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def _disk(cy: int, cx: int, r: int, size: int = SIZE) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def _soft(mask: np.ndarray, dy: int, dx: int, sigma: float = 1.5) -> np.ndarray:
    return gaussian_filter(shift(mask.astype(np.float64), (dy, dx), order=0), sigma)


def _save_png(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    im = Image.fromarray(arr)
    if mode == "P":
        im = im.convert("P")
    im.save(path)


def _tree_digest(*folders: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture()
def folders(tmp_path: Path) -> dict[str, Path]:
    """A dataset folder (images/ + masks/) and a prediction folder with good and bad files."""
    ds, pred = tmp_path / "ds", tmp_path / "pred"
    (ds / "masks").mkdir(parents=True)
    (ds / "images").mkdir()
    pred.mkdir()
    rng = np.random.default_rng(0)
    gts = {
        "c0": np.zeros((SIZE, SIZE), np.uint8),  # empty slice
        "c1": _disk(20, 22, 9),
        "c2": _disk(28, 26, 11),
        "c3": _disk(24, 20, 7),
        "c4": _disk(22, 24, 10),
        "c5": _disk(25, 25, 8),
        "c6": _disk(18, 30, 6),
    }
    for stem, g in gts.items():
        _save_png(ds / "masks" / f"{stem}.png", g * 255)
        _save_png(ds / "images" / f"{stem}.png", (rng.random((SIZE, SIZE)) * 120 + 60).astype(np.uint8))
    _save_png(pred / "c0.png", np.zeros((SIZE, SIZE), np.uint8))
    _save_png(pred / "c1.png", np.round(_soft(gts["c1"], 1, 0) * 255).astype(np.uint8))  # uint8 soft map
    np.save(pred / "c2.npy", _soft(gts["c2"], 0, 2))  # float soft map
    _save_png(pred / "c3.png", np.roll(gts["c3"], 1, axis=0), mode="P")  # palette mask 0/1
    small = np.asarray(Image.fromarray((gts["c4"] * 255).astype(np.uint8)).resize((24, 24), Image.BILINEAR))
    _save_png(pred / "c4.png", small)  # half-size soft map: resized to the gt
    (pred / "c5.png").write_bytes(b"not a png")  # unreadable
    _save_png(pred / "extra.png", gts["c1"] * 255)  # no ground truth
    (pred / ".hidden.png").write_bytes(b"ignored")  # hidden files are not inputs
    # c6 has no prediction
    return {"ds": ds, "pred": pred, "gts": gts, "out": tmp_path / "out"}  # type: ignore[dict-item]


def test_medical_end_to_end(folders, capsys):
    ds, pred, out = folders["ds"], folders["pred"], folders["out"]
    before = _tree_digest(ds, pred)
    code = run_cli(
        ["evaluate", "--pred", pred, "--gt", ds, "--out", out, "--spacing", "0.5", "--tolerance", "1"]
    )
    captured = capsys.readouterr()
    assert code == 1, captured.err  # c5 unreadable and c6 without prediction: scored the rest, exit 1
    assert "2 ground-truth case(s) not scored" in captured.err
    assert _tree_digest(ds, pred) == before  # inputs untouched, nothing added
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "per_case.csv",
        "report.html",
        "summary.json",
    ]

    # Bad cases: one line each, naming the file, and listed at the end.
    for name, problem in (
        ("c5.png", "unreadable image"),
        ("extra.png", "no ground truth"),
        ("c6.png", "no prediction"),
    ):
        assert re.search(rf"{re.escape(name)}: {problem}", captured.err + captured.out), name
    assert "Traceback" not in captured.err

    rows = (out / "per_case.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert header[:4] == ["case_id", "class", "dice", "iou"] and "hd95" in header and "resized_from" in header
    table = {r.split(",")[0]: dict(zip(header, r.split(","))) for r in rows[1:]}
    assert sorted(table) == ["c0", "c1", "c2", "c3", "c4"]
    assert table["c4"]["resized_from"] == "24x24" and table["c1"]["resized_from"] == ""
    assert table["c0"]["dice"] == "nan" and table["c0"]["spacing"] == "0.5x0.5"

    # The numbers are the accumulator's on the same arrays, at 0.5 mm.
    gts = folders["gts"]
    ref = MedicalMetrics(tolerance=1.0)
    ref.update(np.asarray(Image.open(pred / "c1.png")), gts["c1"], spacing=0.5, case_id="c1")
    ref.update(np.load(pred / "c2.npy"), gts["c2"], spacing=0.5, case_id="c2")
    ref.update(np.roll(gts["c3"], 1, axis=0), gts["c3"], spacing=0.5, case_id="c3")
    for rec in ref.per_case():
        for key in ("dice", "iou", "precision", "sensitivity", "specificity", "hd95", "assd", "nsd"):
            assert float(table[rec["case_id"]][key]) == pytest.approx(rec[key], rel=1e-9), (
                rec["case_id"],
                key,
            )
    assert float(table["c3"]["hd95"]) == pytest.approx(0.5)  # a one-pixel shift at 0.5 mm
    assert float(table["c4"]["dice"]) > 0.9  # resizing back to 48x48 restores the disk

    summary = json.loads((out / "summary.json").read_text(), parse_constant=_no_constants)
    assert summary["protocol"] == "medical" and summary["num_cases"] == 5 and summary["num_bad"] == 3
    assert summary["params"]["threshold"] == 0.5 and summary["params"]["empty"] == "nan"
    assert summary["metrics"]["dice"]["n"] == 4 and summary["metrics"]["dice"]["n_nan"] == 1
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(
        np.mean([float(table[c]["dice"]) for c in ("c1", "c2", "c3", "c4")])
    )
    assert {Path(b["path"]).name for b in summary["bad_cases"]} == {"c5.png", "extra.png", "c6.png"}
    assert summary["resized_cases"] == {"c4": [24, 24]}
    assert summary["spacing_source"].startswith("--spacing")
    for pkg in ("covseg", "numpy", "torch", "monai"):
        assert pkg in summary["versions"]
    assert summary["versions"]["covseg"]

    html = (out / "report.html").read_text(encoding="utf-8")
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{100,}"', html)) >= 4  # overlays
    assert html.count('class="histogram"') == 1 and 'class="bar"' in html  # the per-case histogram, inline SVG
    assert "Worst cases" in html and "Best cases" in html and "c5.png" in html
    assert "resized from 24x24" in html
    assert not re.search(r'src="(?!data:)', html)  # nothing external


def _no_constants(name: str) -> None:
    raise AssertionError(f"summary.json holds {name}, which is not JSON")


def test_strict_stops_at_first_bad_case(folders, capsys):
    code = run_cli(
        ["evaluate", "--pred", folders["pred"], "--gt", folders["ds"], "--out", folders["out"], "--strict"]
    )
    err = capsys.readouterr().err
    assert code != 0
    assert re.search(r"(c6\.png|extra\.png|c5\.png): ", err) and "Traceback" not in err
    assert not folders["out"].exists()  # nothing written


def test_strict_fails_on_unreadable_prediction(folders, capsys):
    pred = folders["pred"]
    for name in ("extra.png",):
        (pred / name).unlink()
    masks = folders["ds"] / "masks"
    (masks / "c6.png").unlink()
    code = run_cli(["evaluate", "--pred", pred, "--gt", folders["ds"], "--out", folders["out"], "--strict"])
    err = capsys.readouterr().err
    assert code != 0 and "c5.png: unreadable image" in err
    # Without --strict the same folders score the rest and list the bad file (exit 1: a case went unscored).
    assert run_cli(["evaluate", "--pred", pred, "--gt", folders["ds"], "--out", folders["out"]]) == 1
    summary = json.loads((folders["out"] / "summary.json").read_text())
    assert [Path(b["path"]).name for b in summary["bad_cases"]] == ["c5.png"]


def test_no_scorable_case_exits_non_zero(tmp_path, capsys):
    pred, gt = tmp_path / "p", tmp_path / "g"
    pred.mkdir()
    gt.mkdir()
    (pred / "a.png").write_bytes(b"broken")
    _save_png(gt / "a.png", _disk(10, 10, 4) * 255)
    code = run_cli(["evaluate", "--pred", pred, "--gt", gt, "--out", tmp_path / "o"])
    err = capsys.readouterr().err
    assert code != 0 and "no case could be scored" in err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["num_cases"] == 0 and summary["num_bad"] == 1
    assert run_cli(["evaluate", "--pred", tmp_path / "missing", "--gt", gt, "--out", tmp_path / "o"]) != 0
    assert "prediction folder not found" in capsys.readouterr().err


def test_output_folder_may_not_be_an_input(folders, capsys):
    code = run_cli(["evaluate", "--pred", folders["pred"], "--gt", folders["ds"], "--out", folders["pred"]])
    assert code != 0 and "output folder is an input folder" in capsys.readouterr().err


def test_outputs_are_written_atomically(folders, monkeypatch):
    from covseg.metrics import evaluation

    args = [
        "evaluate",
        "--pred",
        folders["pred"],
        "--gt",
        folders["ds"],
        "--out",
        folders["out"],
        "--no-report",
    ]
    assert run_cli(args) == 1  # scored, with unscored cases listed
    first = (folders["out"] / "per_case.csv").read_bytes()

    def broken(rows):
        raise RuntimeError("disk full while formatting")

    monkeypatch.setattr(evaluation, "csv_text", broken)
    assert run_cli([*args, "--threshold", "0.9"]) == 3  # an unexpected error: one line, no traceback
    assert (folders["out"] / "per_case.csv").read_bytes() == first  # old file intact
    leftovers = [p.name for p in folders["out"].iterdir() if p.name.startswith(".")]
    assert leftovers == [".covseg-output"]  # the temporary files were removed; the marker stays


def test_sod_protocol_matches_accumulator(folders):
    ds, pred, out = folders["ds"], folders["pred"], folders["out"]
    assert run_cli(["evaluate", "--pred", pred, "--gt", ds, "--out", out, "--protocol", "sod"]) == 1  # c5, c6 unscored
    summary = json.loads((out / "summary.json").read_text())
    gts = folders["gts"]
    ref = SodMetrics()
    ref.update(np.zeros((SIZE, SIZE), np.uint8), gts["c0"], case_id="c0")
    ref.update(np.asarray(Image.open(pred / "c1.png")), gts["c1"] * 255, case_id="c1")
    ref.update(np.load(pred / "c2.npy"), gts["c2"], case_id="c2")
    ref.update(np.roll(gts["c3"], 1, axis=0).astype(bool), gts["c3"], case_id="c3")
    small = np.asarray(Image.open(pred / "c4.png")) / 255
    resized = np.asarray(
        Image.fromarray(small.astype(np.float32), mode="F").resize((SIZE, SIZE), Image.BILINEAR)
    )
    ref.update(np.clip(resized, 0, 1), gts["c4"], case_id="c4")
    expected = ref.aggregate()["toolbox"]
    for key, value in expected.items():
        assert summary["toolbox"][key] == pytest.approx(value, abs=1e-9), key
    assert summary["params"]["specificity_rule"] == "pysodmetrics"
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Mean over images at each of the 256 thresholds" in html


def test_nifti_volumes_use_header_spacing(tmp_path):
    nib = pytest.importorskip("nibabel")
    from covseg.data.imageio import write_volume

    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    gt = np.zeros((20, 22, 10), np.uint8)
    gt[5:15, 6:16, 3:7] = 1
    prob = np.zeros(gt.shape, np.float32)
    prob[5:15, 6:16, 4:8] = 0.8  # shifted by one slice (3 mm)
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    write_volume(gt_dir / "vol.nii.gz", gt, affine, dtype="uint8")
    write_volume(pred_dir / "vol.nii.gz", prob, affine, dtype="float32")
    write_volume(pred_dir / "bad.nii.gz", prob[:, :, :8], affine, dtype="float32")
    write_volume(gt_dir / "bad.nii.gz", gt, affine, dtype="uint8")
    out = tmp_path / "out"
    assert run_cli(["evaluate", "--pred", pred_dir, "--gt", gt_dir, "--out", out]) == 1  # bad.nii.gz unscored
    summary = json.loads((out / "summary.json").read_text())
    expected = surface_metrics(prob >= 0.5, gt > 0, (0.8, 0.8, 3.0))
    assert summary["metrics"]["hd95"]["mean"] == pytest.approx(expected["hd95"], rel=1e-9)
    assert summary["metrics"]["hd95"]["mean"] == pytest.approx(3.0)
    assert summary["spacing_source"].startswith("ground-truth file metadata")
    [bad] = summary["bad_cases"]
    assert bad["path"].endswith("bad.nii.gz") and "not resampled" in bad["problem"]
    # --spacing overrides the header
    assert run_cli(["evaluate", "--pred", pred_dir, "--gt", gt_dir, "--out", out, "--spacing", "1,1,1"]) == 1
    assert json.loads((out / "summary.json").read_text())["metrics"]["hd95"]["mean"] == pytest.approx(1.0)
    assert nib is not None


def test_multiclass_label_maps(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    gt = np.zeros((32, 32), np.uint8)
    gt[4:12, 4:12] = 1
    gt[16:28, 16:28] = 2
    pred = gt.copy()
    pred[16:28, 16:22] = 0
    Image.fromarray(gt).save(gt_dir / "m.png")  # small integers: a class-index mask
    Image.fromarray(pred).convert("P").save(pred_dir / "m.png")
    out = tmp_path / "out"
    assert run_cli(["evaluate", "--pred", pred_dir, "--gt", gt_dir, "--out", out, "--num-classes", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_class"]["1"]["dice"]["mean"] == 1.0
    assert summary["per_class"]["2"]["dice"]["mean"] == pytest.approx(2 * 72 / (72 + 144))
    assert len((out / "per_case.csv").read_text().splitlines()) == 3  # header + one row per class


def test_bad_option_values_are_refused(folders, capsys):
    base = ["evaluate", "--pred", folders["pred"], "--gt", folders["ds"], "--out", folders["out"]]
    assert run_cli([*base, "--protocol", "dice"]) != 0
    assert run_cli([*base, "--spacing", "0.5,abc"]) != 0
    assert run_cli([*base, "--empty-distance", "far"]) != 0
    assert run_cli([*base, "--protocol", "sod", "--num-classes", "2"]) != 0
    assert run_cli([*base, "--num-classes", "0"]) != 0
    assert run_cli([*base, "--threshold", "1.5"]) != 0
    assert "Traceback" not in capsys.readouterr().err


def test_command_module_imports_stay_light():
    code = (
        "import sys, covseg.cli.evaluate_cmd; "
        "heavy = [m for m in ('numpy', 'scipy', 'torch', 'monai', 'matplotlib') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_real_data_ct100_run(real_data, tmp_path):
    """All 52 JCS slices (512², one empty) against perturbed soft-map predictions."""
    ds = real_data / "covid19_ct100_jcs"
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    gts = {}
    for i, path in enumerate(sorted((ds / "masks").glob("*.png"))):
        g = (np.asarray(Image.open(path)) > 0).astype(np.uint8)
        gts[path.stem] = g
        soft = _soft(g, i % 3 - 1, (i * 2) % 5 - 2, sigma=2.0 + i % 3)
        Image.fromarray(np.round(soft * 255).astype(np.uint8)).save(pred_dir / path.name)
    assert len(gts) == 52
    out = tmp_path / "out"
    before = _tree_digest(pred_dir)
    assert run_cli(["evaluate", "--pred", pred_dir, "--gt", ds, "--out", out, "--spacing", "0.7"]) == 0
    assert _tree_digest(pred_dir) == before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_cases"] == 52 and summary["num_bad"] == 0
    dice = summary["metrics"]["dice"]
    assert dice["n"] == 51 and dice["n_nan"] == 1  # slice 0048 is empty and predicted empty
    ref = MedicalMetrics()
    for stem, g in gts.items():
        ref.update(np.asarray(Image.open(pred_dir / f"{stem}.png")), g, spacing=0.7, case_id=stem)
    agg = ref.aggregate()
    for key in ("dice", "hd95", "assd", "nsd"):
        assert summary["metrics"][key]["mean"] == pytest.approx(agg["metrics"][key]["mean"], rel=1e-12)
    assert 0.5 < dice["mean"] < 1.0
    rows = {r["case_id"]: r for r in ref.per_case()}
    assert math.isnan(rows["0048"]["dice"])
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "0048" in html  # listed as not ranked


@pytest.mark.parametrize("soft_maps", [True, False], ids=["probs", "masks-only"])
def test_a_predict_output_folder_is_read_as_its_predictions(tmp_path, capsys, soft_maps):
    """``--pred OUT`` on what ``covseg predict -o OUT`` wrote (probs/, masks/, predictions.csv) reads
    OUT/probs, or OUT/masks when the run wrote no soft maps; it found nothing before (issue 28)."""
    ds, out = tmp_path / "ds", tmp_path / "predicted"
    (ds / "masks").mkdir(parents=True)
    (out / "masks").mkdir(parents=True)
    gt = _disk(24, 24, 9)
    _save_png(ds / "masks" / "c1.png", gt * 255)
    _save_png(out / "masks" / "c1.png", np.roll(gt, 2, axis=1) * 255)  # a shifted mask
    if soft_maps:
        (out / "probs").mkdir()
        _save_png(out / "probs" / "c1.png", (gt * 255).astype(np.uint8))  # the exact soft map
    (out / "predictions.csv").write_text("image,mask\nc1.png,masks/c1.png\n")
    code = run_cli(["evaluate", "--pred", out, "--gt", ds, "--out", tmp_path / "eval"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert ("probs" if soft_maps else "masks") in err
    dice = json.loads((tmp_path / "eval" / "summary.json").read_text())["metrics"]["dice"]["mean"]
    expected = 1.0 if soft_maps else 2 * (gt & np.roll(gt, 2, axis=1)).sum() / (2 * gt.sum())
    assert dice == pytest.approx(expected, abs=1e-6)
