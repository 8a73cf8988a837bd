"""``predict --statistics`` (issue 28): per case and class volume / area, HU inside, lung shares and
components, in ``statistics/<stem>.json``, ``statistics.csv``, the API's rows and the app, all from
:func:`covseg.inference.statistics.case_statistics`.

The synthetic chest and the hand-set marker model come from ``tests/inference/test_lungs_only.py``: the model
marks every voxel denser than about 100 HU (the lesion in the patient's left lung, a table and a blob
on it), so every expected number below is exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from covseg.api import predict
from covseg.cli.main import app
from covseg.data.imageio import write_image, write_volume
from covseg.inference.statistics import case_statistics, class_names_for, count_components, split_lungs
from covseg.transforms.lungmask import lung_mask
from covseg.utils.outputs import read_csv
from covseg.viz.overlay import PRED_COLOUR

from tests.inference.test_lungs_only import AFFINE, LESION, SHAPE, chest, dense_marker_run

#: a sheared grid (a gantry tilt): voxels of 4 × 4 × 5 mm whose z axis leans 2 mm in x per slice.
#: |det| = 80 mm³ = 0.08 ml a voxel, where the product of the column lengths (4 · 4 · 5.385) says 0.0862
SHEARED = np.array([[4.0, 0.0, 2.0, 0.0], [0.0, 4.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
GGO = (slice(32, 35), slice(24, 27), slice(9, 11))  # 18 voxels inside the patient's right lung (x > 24)
LESION_HU = np.arange(101.0, 128.0).reshape(3, 3, 3)  # 27 distinct values: mean 114, p5 102.3, p50 114, p95 125.7


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return dense_marker_run(tmp_path_factory.mktemp("statistics") / "run")


def _two_class_case() -> tuple[np.ndarray, np.ndarray]:
    volume = chest()
    volume[LESION] = LESION_HU
    volume[GGO] = -500.0
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[LESION], labels[GGO] = 2, 1
    return volume, labels


def test_volume_statistics_are_exact_on_a_sheared_grid():
    volume, labels = _two_class_case()
    lungs = lung_mask(volume, SHEARED).astype(bool)
    assert lungs[LESION].all() and lungs[GGO].all()
    left, right = lungs.copy(), lungs.copy()
    left[24:], right[:24] = False, False  # RAS: voxel x below the middle is the patient's left
    assert left.sum() > 1000 and right.sum() > 1000
    stats = case_statistics(labels, affine=SHEARED, intensities=volume, space="hu", num_classes=3)
    assert stats["unit"] == "ml" and stats["unit_size"] == pytest.approx(0.08)  # |det|, not 0.0862
    assert stats["lungs_ml"] == {"left": pytest.approx(left.sum() * 0.08), "right": pytest.approx(right.sum() * 0.08)}
    ggo, cons, infection = (stats["classes"][k] for k in ("ground_glass_opacity", "consolidation", "infection"))
    assert (ggo["label"], ggo["voxels"], ggo["size"], ggo["components"]) == (1, 18, pytest.approx(1.44), 1)
    assert (cons["label"], cons["voxels"], cons["size"], cons["components"]) == (2, 27, pytest.approx(2.16), 1)
    assert (infection["label"], infection["voxels"], infection["size"], infection["components"]) == (None, 45, pytest.approx(3.6), 2)
    assert cons["hu"] == {"mean": 114.0, "p5": pytest.approx(102.3), "p50": 114.0, "p95": pytest.approx(125.7)}
    assert ggo["hu"] == {"mean": -500.0, "p5": -500.0, "p50": -500.0, "p95": -500.0}
    assert infection["hu"]["mean"] == pytest.approx((18 * -500 + 27 * 114) / 45, abs=1e-3)
    assert cons["lung_percent"] == {"left": pytest.approx(100 * 27 / left.sum(), abs=1e-3), "right": 0.0}
    assert ggo["lung_percent"] == {"left": 0.0, "right": pytest.approx(100 * 18 / right.sum(), abs=1e-3)}
    json.dumps(stats)  # JSON-ready as it is


def test_lungs_are_split_by_the_patients_side_whatever_the_voxel_order():
    lungs = np.zeros((10, 4, 4), dtype=bool)
    lungs[1:4], lungs[6:8] = True, True  # 48 voxels at low x, 32 at high x
    left, right = split_lungs(lungs, np.eye(4))
    assert (left.sum(), right.sum()) == (48, 32) and left[1:4].all() and right[6:8].all()
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])  # voxel x runs toward the patient's left (LAS storage)
    left, right = split_lungs(lungs, flipped)
    assert (left.sum(), right.sum()) == (32, 48) and left[6:8].all()
    one = np.zeros((10, 4, 4), dtype=bool)
    one[2:8] = True  # touching lungs: split at the centroid (x 4.5)
    left, right = split_lungs(one, np.eye(4))
    assert (left.sum(), right.sum()) == (48, 48) and right[5:8].all()


def test_class_names_follow_the_models_outputs():
    assert class_names_for(1) == class_names_for(2) == {1: "infection"}  # sigmoid, or a two-class softmax
    assert class_names_for(3) == {1: "ground_glass_opacity", 2: "consolidation"} and class_names_for(4)[3] == "class3"


def test_components_count_diagonal_neighbours():
    mask = np.zeros((6, 6, 6), dtype=bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True  # corner neighbours: one component
    mask[4, 4, 4] = True
    mask[0, 5, 0] = True
    assert count_components(mask) == 3 and count_components(mask[:, :, 0]) == 2 and count_components(mask & False) == 0


def test_2d_image_area_in_mm2_with_a_spacing_and_pixels_without(run, tmp_path):
    image = np.zeros((48, 48), dtype=np.uint8)
    image[5:9, 5:10] = 255  # 20 pixels
    image[30:33, 30:33] = 255  # 9 pixels
    write_image(tmp_path / "in" / "spaced.png", image, spacing=(0.5, 0.8))
    write_image(tmp_path / "in" / "plain.png", image)
    report = predict(run, tmp_path / "in", tmp_path / "out", overlays=False, device="cpu", statistics=True)
    stats = {Path(r["input"]).name: r["statistics"] for r in report.written}
    spaced, plain = stats["spaced.png"], stats["plain.png"]
    assert (spaced["unit"], spaced["unit_size"], plain["unit"], plain["unit_size"]) == ("mm2", 0.4, "pixels", 1.0)
    assert spaced["classes"]["infection"] == {"label": 1, "voxels": 29, "size": pytest.approx(11.6), "components": 2}
    assert plain["classes"]["infection"] == {"label": 1, "voxels": 29, "size": 29.0, "components": 2}
    assert json.loads((tmp_path / "out" / "statistics" / "spaced.json").read_text())["classes"] == spaced["classes"]
    assert not (tmp_path / "out" / "previews").exists()  # a preview per volume only


def test_a_bad_pixel_spacing_is_a_listed_one_line_failure(run, tmp_path):
    from PIL.PngImagePlugin import PngInfo

    for name, text in (("nan.png", "nan,1"), ("zero.png", "0,0.5"), ("negative.png", "-1,1")):
        info = PngInfo()
        info.add_text("covseg:spacing", text)
        (tmp_path / "in").mkdir(exist_ok=True)
        Image.fromarray(np.full((48, 48), 255, dtype=np.uint8)).save(tmp_path / "in" / name, pnginfo=info)
    write_image(tmp_path / "in" / "good.png", np.full((48, 48), 255, dtype=np.uint8), spacing=(1.0, 2.0))
    report = predict(run, tmp_path / "in", tmp_path / "out", overlays=False, device="cpu", statistics=True)
    assert [Path(r["input"]).name for r in report.written] == ["good.png"]
    assert report.written[0]["statistics"]["classes"]["infection"]["size"] == 48 * 48 * 2.0
    assert sorted(Path(p).name for p, _ in report.failed) == ["nan.png", "negative.png", "zero.png"]
    assert all("pixel spacing" in m and "not positive" in m and "\n" not in m for _, m in report.failed)
    assert "NaN" not in (tmp_path / "out" / "statistics.csv").read_text()


def test_cli_statistics_writes_json_table_and_preview_and_lists_a_bad_case(run, tmp_path):
    src = tmp_path / "in"
    write_volume(src / "chest.nii.gz", chest(), AFFINE, dtype="int16")
    image = np.zeros((48, 48), dtype=np.uint8)
    image[5:9, 5:10] = 255
    write_image(src / "slice.png", image, spacing=(0.5, 0.8))
    (src / "broken.nii.gz").write_bytes(b"not a nifti")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", "-m", str(run), "-i", str(src), "-o", str(out), "-q", "--device", "cpu", "--statistics"])
    assert result.exit_code == 1 and "broken.nii.gz" in result.output  # listed, the others written
    lungs = lung_mask(chest(), AFFINE).astype(bool)
    left = lungs.copy()
    left[24:] = False
    stats = json.loads((out / "statistics" / "chest.json").read_text())
    infection = stats["classes"]["infection"]
    assert stats["input"] == str(src / "chest.nii.gz") and stats["unit"] == "ml"
    assert (infection["voxels"], infection["size"], infection["components"]) == (27 + 2400 + 60, pytest.approx(2487 * 0.08), 2)
    assert infection["hu"] == {"mean": 200.0, "p5": 200.0, "p50": 200.0, "p95": 200.0}
    assert infection["lung_percent"] == {"left": pytest.approx(100 * 27 / left.sum(), abs=1e-3), "right": 0.0}
    rows = {row["case"]: row for row in read_csv(out / "statistics.csv")}
    assert set(rows) == {"chest", "slice"}
    assert rows["chest"]["unit"] == "ml" and float(rows["chest"]["size"]) == pytest.approx(198.96) and rows["chest"]["components"] == "2"
    assert float(rows["chest"]["left_lung_percent"]) == pytest.approx(100 * 27 / left.sum(), abs=1e-3)
    assert rows["slice"]["unit"] == "mm2" and float(rows["slice"]["size"]) == pytest.approx(8.0) and rows["slice"]["hu_mean"] == ""
    preview = np.asarray(Image.open(out / "previews" / "chest.png"))
    # axial 192 × 192 mm → 256 wide; coronal and sagittal 192 mm × 100 mm → 492 wide; 4-pixel gaps
    assert preview.shape == (256, 256 + 4 + 492 + 4 + 492, 3)
    for panel in (preview[:, :256], preview[:, 260:752], preview[:, 756:]):
        assert (panel == PRED_COLOUR).all(axis=-1).any()  # each view crosses the largest lesion's outline
    assert not (out / "previews" / "slice.png").exists()
    again = CliRunner().invoke(app, ["predict", "-m", str(run), "-i", str(src / "slice.png"), "-o", str(out), "-q", "--device", "cpu", "--statistics"])
    assert again.exit_code == 0, again.output
    assert {row["case"] for row in read_csv(out / "statistics.csv")} == {"chest", "slice"}  # the earlier case's rows stay


def test_app_shows_the_same_statistics_as_predict(run, tmp_path):
    from fastapi.testclient import TestClient

    from covseg.app import create_app

    src = tmp_path / "in"
    write_volume(src / "chest.nii.gz", chest(), AFFINE, dtype="int16")
    predict(run, src, tmp_path / "out", overlays=False, device="cpu", statistics=True)
    written = json.loads((tmp_path / "out" / "statistics" / "chest.json").read_text())
    assert not (tmp_path / "out" / "previews").exists()  # pictures off (--no-overlays): no preview either
    client = TestClient(create_app([run]), base_url="http://127.0.0.1:8765")
    resp = client.post("/api/segment", files={"file": ("chest.nii.gz", (src / "chest.nii.gz").read_bytes())}, data={"model": f"run0:{run.name}"})
    assert resp.status_code == 200, resp.text
    shown = resp.json()["statistics"]
    assert shown["classes"] == written["classes"] and shown["lungs_ml"] == written["lungs_ml"]
    assert shown["classes"]["infection"]["voxels"] == 2487 and shown["classes"]["infection"]["lung_percent"]["right"] == 0.0
    with_lungs = client.post("/api/segment", files={"file": ("chest.nii.gz", (src / "chest.nii.gz").read_bytes())},
                             data={"model": f"run0:{run.name}", "lungs_only": "true"}).json()  # fmt: skip
    assert with_lungs["statistics"]["classes"]["infection"]["voxels"] == 27 == with_lungs["infected_voxels"]

    bad = tmp_path / "bad.png"
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("covseg:spacing", "nan,1")
    Image.fromarray(np.full((48, 48), 255, dtype=np.uint8)).save(bad, pnginfo=info)
    refused = client.post("/api/segment", files={"file": ("scan<1>.png", bad.read_bytes())}, data={"model": f"run0:{run.name}"})
    assert refused.status_code == 400 and refused.json()["error"].startswith("scan<1>.png: pixel spacing (nan, 1.0)")
    image = client.post("/api/segment", files={"file": ("slice.png", _spaced_png(tmp_path))}, data={"model": f"run0:{run.name}"}).json()
    assert image["statistics"]["unit"] == "mm2" and image["statistics"]["classes"]["infection"]["size"] == pytest.approx(8.0)


def _spaced_png(folder: Path) -> bytes:
    image = np.zeros((48, 48), dtype=np.uint8)
    image[5:9, 5:10] = 255  # 20 pixels of 0.5 × 0.8 mm
    return write_image(folder / "spaced_upload.png", image, spacing=(0.5, 0.8)).read_bytes()

def test_real_ct_left_and_right_lung_match_totalsegmentators_lobes(real_data):
    """On the real CT, TotalSegmentator's left lobes (labels 10, 11) fill the left lung and none of the
    right, and its right lobes (12–14) the reverse: the side split follows the patient, not the array."""
    from covseg.data.imageio import read_volume

    folder = real_data / "ct3d_totalseg_example"
    volume, _, affine = read_volume(folder / "images" / "example_ct_sm.nii.gz")
    reference = read_volume(folder / "masks" / "example_ct_sm.nii.gz")[0]
    labels = np.zeros(reference.shape, dtype=np.uint8)
    labels[np.isin(reference, [10, 11])], labels[np.isin(reference, [12, 13, 14])] = 1, 2
    stats = case_statistics(labels, affine=affine, intensities=volume, space="hu", num_classes=3)
    left_lobes, right_lobes = stats["classes"]["ground_glass_opacity"], stats["classes"]["consolidation"]
    assert left_lobes["lung_percent"]["left"] > 95 and left_lobes["lung_percent"]["right"] == 0.0
    assert right_lobes["lung_percent"]["right"] > 95 and right_lobes["lung_percent"]["left"] == 0.0
    assert left_lobes["size"] == pytest.approx(int((labels == 1).sum()) * 0.027)  # 3 mm voxels
    assert -900 < right_lobes["hu"]["p50"] < -700  # aerated lung
