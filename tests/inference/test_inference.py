"""Prediction from a run folder: original-size restoration, NIfTI geometry, batches, postprocessing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from covseg.data.imageio import read_image, read_mask, read_volume, write_image
from covseg.inference.postprocess import keep_largest_components, remove_small_components
from covseg.inference.predictor import Predictor
from covseg.training.config import load_config
from covseg.training.trainer import build_trainer
from covseg.transforms.orientation import slice_spacing, slices_to_volume, volume_to_slices

from tests.helpers import phantom_dataset, tiny_config


@pytest.fixture(scope="module")
def trained_run(phantom_run) -> Path:
    return phantom_run[1]  # the session's shared run (conftest)


def _covseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "covseg.cli.main", *args], capture_output=True, text=True)


def test_predictions_have_the_original_size(trained_run, tmp_path):
    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    shapes = {"a": (77, 93), "b": (64, 64), "c": (150, 41)}
    for stem, shape in shapes.items():
        write_image(inputs / f"{stem}.png", rng.integers(0, 255, size=shape))
    write_image(inputs / "rgb.jpg", rng.integers(0, 255, size=(50, 70, 3)))
    out = tmp_path / "out"
    proc = _covseg("predict", "--model", str(trained_run), "--input", str(inputs), "--output", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    for stem, shape in {**shapes, "rgb": (50, 70)}.items():
        assert read_mask(out / "masks" / f"{stem}.png").shape == shape
        assert np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out / "probs" / f"{stem}.png")).shape == shape
        assert (out / "overlays" / f"{stem}.png").exists()
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 4


def test_bad_inputs_are_listed_and_the_batch_goes_on(trained_run, tmp_path):
    inputs = tmp_path / "in"
    write_image(inputs / "good.png", np.full((40, 40), 100))
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    proc = _covseg("predict", "--model", str(trained_run), "--input", str(inputs), "--output", str(out), "-q")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "broken.png" in proc.stderr and (out / "masks" / "good.png").exists()
    assert "broken.png" in (out / "failed.txt").read_text()
    strict = _covseg("predict", "--model", str(trained_run), "--input", str(inputs), "--output", str(tmp_path / "o2"), "--strict", "-q")
    assert strict.returncode == 2 and "broken.png" in strict.stderr and "Traceback" not in strict.stderr
    missing = _covseg("predict", "--model", str(tmp_path / "no_run"), "--input", str(inputs), "--output", str(out))
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_inputs_are_not_modified(trained_run, tmp_path):
    inputs = tmp_path / "in"
    write_image(inputs / "x.png", np.arange(48 * 48).reshape(48, 48) % 255)
    before = (inputs / "x.png").read_bytes()
    _covseg("predict", "--model", str(trained_run), "--input", str(inputs), "--output", str(inputs / "pred"), "-q")
    assert (inputs / "x.png").read_bytes() == before


@pytest.mark.parametrize("codes", [("R", "A", "S"), ("L", "P", "S"), ("L", "A", "I"), ("A", "R", "S")])
def test_slice_geometry_round_trip_and_radiological_view(codes):
    import nibabel.orientations as nio

    rng = np.random.default_rng(1)
    vol = rng.normal(size=(9, 7, 5)).astype(np.float32)
    affine = nio.inv_ornt_aff(nio.axcodes2ornt(codes), vol.shape)
    affine = np.linalg.inv(affine) @ np.diag([0.7, 0.8, 3.0, 1.0])  # voxel → world with these axis codes
    assert nib.aff2axcodes(affine) == codes
    slices = volume_to_slices(vol, affine)
    assert np.array_equal(slices_to_volume(slices, affine), vol)
    # RAS+ world: +x is the patient's right, +y anterior. Right-anterior shows at the image's left and top.
    world_to_vox = np.linalg.inv(affine)
    centre = np.array(vol.shape) / 2.0
    right_anterior = world_to_vox @ np.append(affine[:3, :3] @ centre + affine[:3, 3] + np.array([100.0, 100.0, 0.0]), 1)
    marker = np.zeros_like(vol)
    idx = tuple(int(np.clip(round(v), 0, s - 1)) for v, s in zip(right_anterior[:3], vol.shape))
    marker[idx] = 1
    _z, row, col = np.argwhere(volume_to_slices(marker, affine) > 0)[0]
    assert row == 0 and col == 0
    assert sorted(slice_spacing((0.7, 0.8, 3.0), affine)) in ([0.7, 0.8], [0.7, 3.0], [0.8, 3.0])


def test_nifti_prediction_keeps_geometry(trained_run, tmp_path, real_data):
    src = real_data / "ct3d_totalseg_example" / "images" / "example_ct_sm.nii.gz"
    out = tmp_path / "out"
    proc = _covseg("predict", "--model", str(trained_run), "--input", str(src), "--output", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    mask_img = nib.load(out / "masks" / "example_ct_sm.nii.gz")
    ref = nib.load(src)
    assert mask_img.shape == ref.shape
    assert np.allclose(mask_img.affine, ref.affine)
    probs, spacing, _ = read_volume(out / "probs" / "example_ct_sm.nii.gz")
    assert probs.shape == ref.shape and probs.min() >= 0.0 and probs.max() <= 1.0
    assert spacing == pytest.approx((3.0, 3.0, 3.0))
    assert (out / "overlays" / "example_ct_sm.png").exists()


def test_predictor_api_matches_cli_and_tta_is_symmetric(trained_run):
    pred = Predictor.from_run(trained_run)
    image = np.random.default_rng(3).integers(0, 255, size=(70, 90)).astype(np.float32)
    plain = pred.predict_image(image)
    tta = pred.predict_image(image, tta_flip=True)
    assert plain.probs.shape == tta.probs.shape == (70, 90)
    flipped = pred.predict_image(image[:, ::-1].copy(), tta_flip=True)
    assert np.allclose(flipped.probs[:, ::-1], tta.probs, atol=1e-5)


def test_postprocessing_components():
    m = np.zeros((20, 20), dtype=np.uint8)
    m[1:4, 1:4] = 1  # 9 px
    m[10:16, 10:16] = 1  # 36 px
    m[18, 18] = 2  # 1 px of class 2
    assert remove_small_components(m, 10).sum() == 36
    largest = keep_largest_components(m, 1)
    assert (largest == 1).sum() == 36 and (largest == 2).sum() == 1
    assert remove_small_components(m, 1) is m


def _cascade_config(data: Path, prior_run: Path, **over) -> dict:
    """A tiny multi-class U-Net taking ``prior_run``'s infection map as an extra channel."""
    return tiny_config(
        data,
        epochs=1,
        data__mask="multiclass",
        data__num_classes=3,
        data__prior_run=str(prior_run),
        model__name="unet_multiclass",
        model__params={"base_width": 8, "depth": 3, "prior_channel": True},
        loss__main="dice_ce",
        **over,
    )


def test_multiclass_cascade_with_binary_prior(trained_run, tmp_path):
    data = phantom_dataset(tmp_path / "data", n=12, size=64)
    cfg = _cascade_config(data, trained_run)
    run = tmp_path / "mc"
    build_trainer(load_config(raw=cfg), run, quiet=True).fit()
    pred = Predictor.from_run(run)
    assert pred.segmenter.adapter("prior") is not None
    out = pred.predict_image(np.full((50, 60), 80.0, dtype=np.float32))
    assert out.probs.shape == (3, 50, 60) and out.labels.max() <= 2
    assert np.allclose(out.probs.sum(axis=0), 1.0, atol=1e-5)
    assert json.loads((run / "splits.json").read_text())["prior"]["shared_training_cases"] == 0  # other data
    # A prior trained on the same training cases is recorded (and warned about): the cascade's trap.
    binary = tmp_path / "binary"
    build_trainer(load_config(raw=tiny_config(data, epochs=1)), binary, quiet=True).fit()
    cfg["data"]["prior_run"] = str(binary)
    build_trainer(load_config(raw=cfg), tmp_path / "mc_same", quiet=True).fit()
    shared = json.loads((tmp_path / "mc_same" / "splits.json").read_text())["prior"]["shared_training_cases"]
    assert shared == len(json.loads((binary / "splits.json").read_text())["train"]) > 0


def test_cascade_with_out_of_fold_priors(trained_run, tmp_path):
    """Nested-CV binary runs give each training case a prior from a run that never trained on it."""
    import torch

    from covseg.data import load_sample
    from covseg.errors import ConfigError
    from covseg.transforms.preprocess import resize_tensor

    data = phantom_dataset(tmp_path / "data", n=12, size=64)
    inner = []
    for k in range(2):
        run = tmp_path / f"inner{k}"
        build_trainer(load_config(raw=tiny_config(data, epochs=1, data__inner_folds=2, data__inner_fold=k)), run, quiet=True).fit()
        inner.append(run)
    splits = [json.loads((r / "splits.json").read_text()) for r in inner]
    outer_val = set(splits[0]["outer_val"])
    assert splits[0]["scheme"] == "nested_kfold" and outer_val == set(splits[1]["outer_val"])
    assert not outer_val & set(splits[0]["train"] + splits[0]["val"])  # the outer held-out cases are never read
    assert set(splits[0]["val"]) == set(splits[1]["train"]) and not set(splits[0]["val"]) & set(splits[1]["val"])

    cfg = _cascade_config(data, trained_run, data__prior_oof_runs=[str(r) for r in inner])
    trainer = build_trainer(load_config(raw=cfg), tmp_path / "mc", quiet=True)
    trainer.setup()
    prior = json.loads((tmp_path / "mc" / "splits.json").read_text())["prior"]
    assert prior["shared_training_cases"] == 0 and len(prior["oof_runs"]) == 2
    # Each training case's prior channel is the prediction of the inner run that held it out.
    for i, rec in enumerate(trainer.train_records):
        owner = inner[0] if rec.case_id in splits[0]["val"] else inner[1]
        probs = Predictor.from_run(owner, checkpoint="last").predict_array(load_sample(rec).image).probs
        expected = resize_tensor(torch.from_numpy(probs)[None, None], (64, 64))[0, 0]
        assert torch.allclose(trainer.train_data.images[i, -1], expected, atol=1e-5)
    # Validation cases use prior_run (as prediction does).
    rec = trainer.val_records[0]
    probs = Predictor.from_run(trained_run, checkpoint="last").predict_array(load_sample(rec).image).probs
    assert torch.allclose(trainer.val_inputs()[0][-1], torch.from_numpy(probs), atol=1e-5)  # at the case's own size

    cfg["data"]["prior_oof_runs"] = [str(inner[0])]  # half the training cases have no out-of-fold prior
    with pytest.raises(ConfigError, match="held out by none of the runs"):
        build_trainer(load_config(raw=cfg), tmp_path / "mc_missing", quiet=True).setup()


def test_ensemble_averages_members_of_different_sizes(trained_run, tmp_path):
    """Members keep their own preprocessing; the ensemble's map is the mean of theirs, in 2D and 3D."""
    from covseg.inference.ensemble import EnsemblePredictor

    data = phantom_dataset(tmp_path / "data", n=12, size=64)
    other = tmp_path / "other"  # another input size and seed: a different model
    build_trainer(load_config(raw=tiny_config(data, size=48, epochs=1, train__seed=5)), other, quiet=True).fit()
    members = [Predictor.from_run(trained_run), Predictor.from_run(other)]
    ensemble = EnsemblePredictor.from_runs([trained_run, other])
    image = np.random.default_rng(1).integers(0, 255, size=(70, 90)).astype(np.float32)
    probs = [m.predict_image(image, tta_flip=True).probs for m in members]
    assert not np.allclose(probs[0], probs[1], atol=1e-2)
    got = ensemble.predict_image(image, tta_flip=True)
    assert np.allclose(got.probs, (probs[0] + probs[1]) / 2, atol=1e-6)
    assert np.array_equal(got.labels, (got.probs > 0.5).astype(got.labels.dtype))
    volume = np.random.default_rng(2).uniform(-1000, 200, size=(40, 36, 5)).astype(np.float32)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    vol_probs = [m.predict_array(volume, affine).probs for m in members]
    got3d = ensemble.predict_array(volume, affine)
    assert got3d.probs.shape == volume.shape
    assert np.allclose(got3d.probs, (vol_probs[0] + vol_probs[1]) / 2, atol=1e-6)
    assert ensemble.run_dirs == [str(trained_run), str(other)]


def test_ensemble_from_the_cli_and_mismatched_members(trained_run, tmp_path):
    data = phantom_dataset(tmp_path / "data", n=12, size=64)
    second = tmp_path / "second"
    build_trainer(load_config(raw=tiny_config(data, epochs=1, train__seed=3)), second, quiet=True).fit()
    inputs = tmp_path / "in"
    image = np.random.default_rng(4).integers(0, 255, size=(61, 75))
    write_image(inputs / "x.png", image)
    out = tmp_path / "out"
    proc = _covseg("predict", "-m", str(trained_run), "-m", str(second), "--input", str(inputs), "--output", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    x = read_image(inputs / "x.png")  # the image as the CLI reads it
    mean = (Predictor.from_run(trained_run).predict_image(x).probs + Predictor.from_run(second).predict_image(x).probs) / 2
    written = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out / "probs" / "x.png")).astype(float)
    assert np.abs(written - np.round(mean * 255)).max() <= 1
    multiclass = tmp_path / "mc"  # a 3-class model cannot be averaged with a binary one
    cfg = tiny_config(data, epochs=1, data__mask="multiclass", data__num_classes=3, model__name="unet_multiclass", loss__main="dice_ce")
    build_trainer(load_config(raw=cfg), multiclass, quiet=True).fit()
    bad = _covseg("predict", "-m", str(trained_run), "-m", str(multiclass), "--input", str(inputs), "--output", str(tmp_path / "o2"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert str(multiclass) in bad.stderr and "number of classes" in bad.stderr


def test_the_python_api_pseudo_labels_and_masks_lungs_in_one_call_each(trained_run, tmp_path):
    """``covseg.api.pseudo_label`` and ``covseg.api.lung_masks`` (what the CLI commands run) write the
    predictor's own labels and the classical lung mask; ``predict_batch`` equals one image at a time."""
    import csv
    import shutil

    from covseg.api import lung_masks, pseudo_label
    from covseg.data.imageio import write_volume
    from covseg.data.synthetic3d import make_phantom_volume
    from covseg.transforms.lungmask import lung_mask

    inputs = tmp_path / "in"
    inputs.mkdir()
    for src in sorted((trained_run.parent / "data" / "images").iterdir())[:2]:
        shutil.copy(src, inputs / src.name)
    report = pseudo_label(trained_run, inputs, tmp_path / "pseudo", device="cpu")
    assert len(report.written) == 2 and not report.failed
    pred = Predictor.from_run(trained_run, device="cpu")
    images = [read_image(p) for p in sorted(inputs.iterdir())]
    for path, image in zip(sorted(inputs.iterdir()), images):
        want = pred.predict_image(image).labels > 0
        np.testing.assert_array_equal(read_mask(tmp_path / "pseudo" / "masks" / f"{path.stem}.png") > 0, want)
    with open(tmp_path / "pseudo" / "confidence.csv") as f:
        assert sorted(row["case_id"] for row in csv.DictReader(f)) == sorted(p.stem for p in inputs.iterdir())
    batch = pred.predict_batch(images, batch_size=2).probs
    for image, probs in zip(images, batch):
        np.testing.assert_allclose(probs, pred.predict_image(image).probs, atol=1e-5)

    ph = make_phantom_volume(1)
    write_volume(tmp_path / "ct" / "case.nii.gz", ph.image, ph.affine)
    report = lung_masks(tmp_path / "ct", tmp_path / "lungs")
    assert len(report.written) == 1 and report.written[0]["lung_ml"] > 0
    got = nib.load(tmp_path / "lungs" / "case.nii.gz")
    np.testing.assert_array_equal(np.asarray(got.dataobj), lung_mask(ph.image, ph.affine))
    assert np.allclose(got.affine, ph.affine) and (tmp_path / "lungs" / "lungs.csv").exists()
