"""``predict --lungs-only``: predictions outside the lungs of a CT volume in HU are set to background.

The model is a registered ``unet`` with its weights set by hand so its output is known: each voxel
is marked where its HU is above about 100 (dense: a lesion, a table, a blob on the table) and
nothing else, so every expected voxel count below is exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from covseg.api import predict
from covseg.cli.main import app, main
from covseg.data.imageio import write_image, write_volume
from covseg.errors import DataError
from covseg.inference.options import PredictOptions
from covseg.inference.postprocess import LUNG_MARGIN_MM
from covseg.inference.predictor import PostprocessOptions, Predictor
from covseg.models import build_model
from covseg.runs.checkpoint import save_checkpoint
from covseg.transforms.lungmask import dilate_mm, lung_mask

SPACING = (4.0, 4.0, 5.0)
AFFINE = np.diag([*SPACING, 1.0])
SHAPE = (48, 48, 20)  # RAS: x left→right, y posterior→anterior, z inferior→superior
LESION = (slice(12, 15), slice(24, 27), slice(9, 12))  # 27 voxels inside the left lung
TABLE = (slice(4, 44), slice(3, 6), slice(None))  # under the body, not touching it: 40 × 3 × 20
BLOB = (slice(20, 25), slice(6, 9), slice(6, 10))  # on the table, outside the body: 5 × 3 × 4
DENSE_HU = 200.0


def chest(lungs: bool = True) -> np.ndarray:
    """A body (40 HU) with two air-filled lungs (-850 HU), a dense lesion in the left lung, and a
    dense table with a dense blob on it outside the body; ``lungs=False``: the body has no lungs."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    vol = np.full(SHAPE, -1000.0, dtype=np.float32)
    vol[((x - 24) / 20) ** 2 + ((y - 26) / 14) ** 2 <= 1] = 40.0
    if lungs:
        for cx in (14, 34):
            vol[((x - cx) / 6) ** 2 + ((y - 26) / 8) ** 2 + ((z - 10) / 7) ** 2 <= 1] = -850.0
        vol[LESION] = DENSE_HU
    vol[TABLE] = DENSE_HU
    vol[BLOB] = DENSE_HU
    return vol


def dense_marker_run(run: Path, classes: int = 1) -> Path:
    """A run folder whose ``unet`` marks voxels denser than ~100 HU (class 2 of 3 when ``classes=3``).

    The 2D run sees slices through covseg's CT window (-1250, 250 HU → 0..255) normalised with mean
    0.5, std 0.25: HU 100 is 1.6, HU 40 is 1.44, HU 200 is 1.87. The first conv passes
    ``relu(x - 1.6)`` through the top skip connection, the deeper path is zero, and the head gives
    logit ``100 · relu(x - 1.6) - 5`` (three classes: background 5, class 2 ``100 · relu(x - 1.6)``).
    """
    init = {"in_channels": 1, "out_channels": classes, "base_width": 2, "depth": 1, "norm": "none"}
    model = build_model("unet", **init)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        (inc1, inc2), (up1, up2) = (model.inc[0][0], model.inc[1][0]), (model.ups[0][0][0], model.ups[0][1][0])
        inc1.weight[0, 0, 1, 1], inc1.bias[0] = 1.0, -1.6
        inc2.weight[0, 0, 1, 1] = 1.0
        up1.weight[0, 4, 1, 1] = 1.0  # the skip's channel 0 follows the 4 channels of the upsampled path
        up2.weight[0, 0, 1, 1] = 1.0
        if classes == 1:
            model.head.weight[0, 0], model.head.bias[0] = 100.0, -5.0
        else:
            model.head.weight[2, 0], model.head.bias[0] = 100.0, 5.0
    desc = {
        "format": 2, "name": "unet", "init_args": model.init_args, "num_classes": classes, "threshold": 0.5,
        "preprocessing": {"channels": 1, "size": list(SHAPE[:2]), "scale": 255.0, "mean": [0.5], "std": [0.25], "window": None},
        "inferer": {"name": "resize", "params": {"size": list(SHAPE[:2])}},
    }
    (run / "checkpoints").mkdir(parents=True)
    (run / "model.json").write_text(json.dumps(desc))
    save_checkpoint(run / "checkpoints" / "best.pt", {"model_spec": {"name": "unet", "init_args": model.init_args}, "model_state": model.state_dict()})
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return dense_marker_run(tmp_path_factory.mktemp("lungs_only") / "run")


def count(region) -> int:
    return int(np.ones(SHAPE, bool)[region].sum())


def test_the_marker_model_marks_the_lesion_and_the_dense_things_outside_the_body(run):
    pred = Predictor.from_run(run).predict_array(chest(), AFFINE)
    assert pred.labels.sum() == count(LESION) + count(TABLE) + count(BLOB) == 27 + 2400 + 60
    assert pred.labels[LESION].all() and pred.labels[BLOB].all() and pred.probs[BLOB].min() > 0.99


@pytest.mark.parametrize("margin", [0.0, LUNG_MARGIN_MM])
def test_lungs_only_keeps_the_lesion_and_drops_table_and_blob(run, margin):
    volume = chest()
    lungs = lung_mask(volume, AFFINE).astype(bool)
    assert lungs[LESION].all() and not lungs[BLOB].any() and 1500 < lungs.sum() < 3500  # two ellipsoids of ~1400 voxels
    plain = Predictor.from_run(run).predict_array(volume, AFFINE)
    pred = Predictor.from_run(run).predict_array(volume, AFFINE, PredictOptions(lungs_only=True, lung_margin_mm=margin))
    assert pred.labels.sum() == 27 and pred.labels[LESION].all()
    region = dilate_mm(lungs, AFFINE, margin)
    assert region.sum() > lungs.sum() if margin else region.sum() == lungs.sum()
    np.testing.assert_array_equal(pred.probs[region], plain.probs[region])  # inside: untouched
    assert not pred.probs[~region].any()  # outside: every soft value is 0
    np.testing.assert_array_equal(pred.meta["lung_mask"], lungs)


def test_multiclass_maps_outside_the_lungs_become_background_and_still_sum_to_one(tmp_path):
    predictor = Predictor.from_run(dense_marker_run(tmp_path / "run3", classes=3))
    pred = predictor.predict_array(chest(), AFFINE, PredictOptions(lungs_only=True))
    assert set(np.unique(pred.labels)) == {0, 2} and (pred.labels == 2).sum() == 27 and (pred.labels[LESION] == 2).all()
    outside = ~dilate_mm(pred.meta["lung_mask"], AFFINE, LUNG_MARGIN_MM)  # the default margin
    assert (pred.probs[0][outside] == 1).all() and not pred.probs[1:, outside].any()
    np.testing.assert_allclose(pred.probs.sum(axis=0), 1.0, atol=1e-5)


def test_dilate_mm_is_in_millimetres_per_axis():
    seed = np.zeros((9, 9, 9), dtype=bool)
    seed[4, 4, 4] = True
    affine = np.diag([2.0, 2.0, 5.0, 1.0])
    assert dilate_mm(seed, affine, 0.0).sum() == dilate_mm(seed, affine, 1.9).sum() == 1  # the nearest centre is 2 mm away
    grown = dilate_mm(seed, affine, 4.0)  # in-plane (2i)² + (2j)² <= 16: 13 voxels; the next slice is 5 mm away
    assert grown.sum() == 13 and grown[2, 4, 4] and not grown[4, 4, 3]
    grown = dilate_mm(seed, affine, 5.0)  # in-plane i² + j² <= 6.25: 21 voxels, and one above and below
    assert grown.sum() == 23 and grown[4, 4, 3] and not grown[5, 4, 3] and grown[2, 5, 4] and not grown[2, 6, 4]


def test_predict_api_writes_restricted_masks_lung_volume_and_lists_a_volume_without_lungs(run, tmp_path):
    src = tmp_path / "in"
    write_volume(src / "chest.nii.gz", chest(), AFFINE, dtype="int16")
    write_volume(src / "no_lungs.nii.gz", chest(lungs=False), AFFINE, dtype="int16")
    report = predict(run, src, tmp_path / "out", overlays=False, device="cpu", lungs_only=True, lung_margin_mm=0.0, save_lung_mask=True)
    assert [Path(r["input"]).name for r in report.written] == ["chest.nii.gz"]
    [(failed, reason)] = report.failed
    assert failed.endswith("no_lungs.nii.gz") and "found no lungs" in reason and "\n" not in reason
    import nibabel as nib

    mask = np.asarray(nib.load(tmp_path / "out" / "masks" / "chest.nii.gz").dataobj)
    lungs = np.asarray(nib.load(tmp_path / "out" / "lungs" / "chest.nii.gz").dataobj)
    assert mask.sum() == 27 and mask[LESION].all()
    np.testing.assert_array_equal(lungs, lung_mask(chest(), AFFINE))
    row = report.written[0]
    voxel_ml = np.prod(SPACING) / 1000.0
    assert row["foreground_ml"] == pytest.approx(27 * voxel_ml) and row["lung_ml"] == pytest.approx(lungs.sum() * voxel_ml)
    csv = (tmp_path / "out" / "predictions.csv").read_text().splitlines()
    header = csv[0].split(",")
    values = dict(zip(header, csv[1].split(",")))
    assert float(values["foreground_ml"]) == pytest.approx(27 * 0.08) and float(values["lung_ml"]) == pytest.approx(lungs.sum() * 0.08)
    assert float(values["infected_percent_of_lungs"]) == pytest.approx(100 * 27 / lungs.sum())
    assert "no_lungs.nii.gz: --lungs-only found no lungs" in (tmp_path / "out" / "failed.txt").read_text()
    with pytest.raises(DataError, match=r"no_lungs\.nii\.gz: --lungs-only found no lungs"):  # --strict: stops, naming the file
        predict(run, src / "no_lungs.nii.gz", tmp_path / "strict", overlays=False, device="cpu", lungs_only=True, strict=True)


def test_2d_input_is_one_line_error_and_skipped_in_a_folder(run, tmp_path):
    image = tmp_path / "slice.png"
    write_image(image, np.full((48, 48), 128, dtype=np.uint8))
    with pytest.raises(DataError, match=r"--lungs-only needs a CT volume in HU") as err:
        predict(run, image, tmp_path / "a", overlays=False, device="cpu", lungs_only=True)
    assert "slice.png" in str(err.value) and "\n" not in str(err.value)
    mixed = tmp_path / "mixed"
    write_image(mixed / "slice.png", np.full((48, 48), 128, dtype=np.uint8))
    write_volume(mixed / "chest.nii.gz", chest(), AFFINE, dtype="int16")
    report = predict(run, mixed, tmp_path / "b", overlays=False, device="cpu", lungs_only=True)
    assert len(report.written) == 1 and report.failed[0][0].endswith("slice.png") and "needs a CT volume in HU" in report.failed[0][1]
    with pytest.raises(DataError, match="this is a 2D image"):
        Predictor.from_run(run).predict_image(np.zeros((48, 48)), post=PostprocessOptions(lungs_only=True))


def test_cli_lungs_only(run, tmp_path, capsys):
    src = tmp_path / "in"
    write_volume(src / "chest.nii.gz", chest(), AFFINE, dtype="int16")
    write_volume(src / "flat.nii.gz", chest(lungs=False), AFFINE, dtype="int16")
    def args(out: str, *extra: str) -> list[str]:
        return ["predict", "-m", str(run), "-i", str(src), "-o", str(tmp_path / out), "-q", "--no-overlays", "--device", "cpu", *extra]

    result = CliRunner().invoke(app, args("out", "--lungs-only", "--save-lung-mask"))
    assert result.exit_code == 1, result.output  # one volume failed: listed, the other predicted
    assert "1 failed" in result.output and "flat.nii.gz: --lungs-only found no lungs" in result.output
    import nibabel as nib

    assert np.asarray(nib.load(tmp_path / "out" / "masks" / "chest.nii.gz").dataobj).sum() == 27
    assert (tmp_path / "out" / "lungs" / "chest.nii.gz").is_file()
    plain = CliRunner().invoke(app, args("plain"))
    assert plain.exit_code == 0 and np.asarray(nib.load(tmp_path / "plain" / "masks" / "chest.nii.gz").dataobj).sum() == 2487
    for bad, message in ((["--save-lung-mask"], "--save-lung-mask: needs --lungs-only"), (["--lungs-only", "--lung-margin", "-1"], "--lung-margin")):
        with pytest.raises(SystemExit) as exit_:
            main(args("bad", *bad))
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert f"(default {LUNG_MARGIN_MM:g};" in " ".join(CliRunner().invoke(app, ["predict", "--help"], env={"COLUMNS": "300"}).output.split())
    image = tmp_path / "slice.png"
    write_image(image, np.full((48, 48), 128, dtype=np.uint8))
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "-m", str(run), "-i", str(image), "-o", str(tmp_path / "x"), "-q", "--lungs-only"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "slice.png" in err and "--lungs-only needs a CT volume in HU" in err


def test_hu_slices_and_display_volumes(run, tmp_path):
    """Signed 16-bit TIFF slices ``NAME_<k>`` in HU are stacked into a volume (a 2D run too) and restricted;
    a volume of 0..255 display values is listed: it is not HU."""
    import tifffile

    src = tmp_path / "in"
    src.mkdir()
    volume = chest()
    for k in range(SHAPE[2]):
        tifffile.imwrite(src / f"chest_{k:02d}.tif", volume[:, :, k].T.astype(np.int16))
    write_volume(src / "display.nii.gz", np.clip(volume + 1000, 0, 255), AFFINE, dtype="uint8")
    report = predict(run, src, tmp_path / "out", overlays=False, device="cpu", lungs_only=True, stack_spacing=SPACING)
    assert [Path(r["input"]).name for r in report.written] == ["chest"], report.failed
    assert report.failed[0][0].endswith("display.nii.gz") and "0..255 display values" in report.failed[0][1]
    import nibabel as nib

    assert np.asarray(nib.load(tmp_path / "out" / "masks" / "chest.nii.gz").dataobj).sum() == 27


def test_app_lungs_only_switch(run, tmp_path):
    """The web app's "lungs only" box does what --lungs-only does and reports the share of the lungs."""
    from fastapi.testclient import TestClient

    from covseg.app import create_app

    client = TestClient(create_app([run]), base_url="http://127.0.0.1:8765")
    write_volume(tmp_path / "chest.nii.gz", chest(), AFFINE, dtype="int16")
    upload = {"file": ("chest.nii.gz", (tmp_path / "chest.nii.gz").read_bytes())}
    plain = client.post("/api/segment", files=upload, data={"model": f"run0:{run.name}"}).json()
    assert plain["infected_voxels"] == 27 + 2400 + 60 and "lung_ml" not in plain
    resp = client.post("/api/segment", files=upload, data={"model": f"run0:{run.name}", "lungs_only": "true"})
    assert resp.status_code == 200, resp.text
    info, lungs = resp.json(), int(lung_mask(chest(), AFFINE).sum())
    assert info["infected_voxels"] == 27 and info["lung_ml"] == pytest.approx(lungs * np.prod(SPACING) / 1000, abs=1e-3)
    assert info["infected_percent_of_lungs"] == pytest.approx(100 * 27 / lungs, abs=1e-3)
    write_image(tmp_path / "slice.png", np.zeros((48, 48), np.uint8))
    flat = client.post("/api/segment", files={"file": ("slice.png", (tmp_path / "slice.png").read_bytes())},
                       data={"model": f"run0:{run.name}", "lungs_only": "true"})  # fmt: skip
    assert flat.status_code == 400 and "slice.png: --lungs-only needs a CT volume" in flat.text and "\n" not in flat.json()["error"]
