"""3D CT volumes: preprocessing and its way back, planning, stacks, 3D / 2.5D training, predict, cascade."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from covseg.data.imageio import read_volume, write_image, write_volume
from covseg.data.intensity import intensity_space
from covseg.data.synthetic3d import make_phantom_volume, write_phantom_volumes
from covseg.transforms.volume import (
    VolumePlan,
    prepare_labels,
    prepare_volume,
    restore_volume,
)

SMALL = (40, 40, 20)  # voxels of the fast phantoms
SMALL_SPACING = (8.0, 8.0, 12.0)


def _covseg(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "covseg.cli.main", *map(str, args)], capture_output=True, text=True)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


def volume_config(root: Path, cache: Path, epochs: int = 1, **over) -> dict:
    """A raw config training a small 3D MONAI UNet on phantom volumes (a few steps)."""
    cfg = {
        "name": "v3d",
        "data": {"root": str(root), "folds": 4, "fold": 0},
        "model": {"name": "monai_unet", "params": {"spatial_dims": 3, "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}},
        "loss": {"main": "dice_bce"},
        "optim": {"lr": 0.01},
        "train": {"epochs": epochs, "batch_size": 2, "threads": 1},
        "sampler": {"name": "patches", "batches_per_epoch": 2, "foreground_fraction": 0.5, "cache_dir": str(cache)},
    }
    for key, value in over.items():
        node = cfg
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return write_phantom_volumes(tmp_path_factory.mktemp("ph3d") / "data", 8, SMALL, SMALL_SPACING, seed=1)


@pytest.fixture(scope="module")
def run3d(phantoms, tmp_path_factory) -> Path:
    from covseg.api import fit
    from covseg.training.config import load_config

    out = tmp_path_factory.mktemp("run3d")
    fit(load_config(raw=volume_config(phantoms, out / "cache")), out / "run", quiet=True)
    return out / "run"


# ------------------------------------------------------------------------------ preprocessing, way back
def _permuted(volume: np.ndarray, affine: np.ndarray):
    """The same scan stored with axes permuted and flipped (another scanner's voxel order)."""
    import nibabel.orientations as nio

    ornt = np.array([[2, 1], [0, -1], [1, 1]], dtype=float)
    out = nio.apply_orientation(volume, ornt)
    return np.ascontiguousarray(out), affine @ nio.inv_ornt_aff(ornt, volume.shape)


def _oblique(affine: np.ndarray) -> np.ndarray:
    """A gantry-tilted, shifted acquisition of the same voxels: 15° about z, 10° about x, origin moved."""
    a, b = np.deg2rad(15.0), np.deg2rad(10.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0, 0], [np.sin(a), np.cos(a), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    rx = np.array([[1, 0, 0, 0], [0, np.cos(b), -np.sin(b), 0], [0, np.sin(b), np.cos(b), 0], [0, 0, 0, 1]])
    moved = rz @ rx @ affine
    moved[:3, 3] += (12.5, -40.0, 310.0)
    return moved


@pytest.mark.parametrize("stored", ["scanner", "permuted", "oblique"])
def test_labels_go_to_the_grid_and_back_to_the_input_geometry(stored):
    ph = make_phantom_volume(3, SMALL, SMALL_SPACING)
    image, labels, affine = ph.image, ph.infection, ph.affine
    if stored == "permuted":
        image, affine2 = _permuted(image, affine)
        labels, _ = _permuted(labels, affine)
        affine = affine2
    elif stored == "oblique":
        affine = _oblique(affine)
    plan = VolumePlan(spacing=(6.0, 6.0, 9.0), crop="body")
    x, geometry = prepare_volume(image, affine, plan, "hu")
    grid_labels = prepare_labels(labels, geometry)
    assert x.shape[1:] == grid_labels.shape and x.dtype == np.float32
    assert geometry.grid_shape == (53, 53, 27)  # 40·8/6, 40·8/6, 20·12/9
    assert geometry.box != tuple((0, n) for n in geometry.grid_shape)  # the air around the body is cut
    back = restore_volume(torch.from_numpy(grid_labels[None].astype(np.float32)), geometry)
    assert back.shape == (1, *labels.shape)
    assert dice(back[0] >= 0.5, labels) > 0.95
    # same scan, either storage: the same network input
    x_ref, _ = prepare_volume(ph.image, ph.affine, plan, "hu")
    np.testing.assert_allclose(x, x_ref, atol=1e-5)


def test_real_ct_round_trip_and_lung_window(real_data):
    from covseg.data.imageio import read_label_volume

    src = real_data / "ct3d_totalseg_example"
    volume, _spacing, affine = read_volume(src / "images" / "example_ct_sm.nii.gz")
    labels, _, _ = read_label_volume(src / "masks" / "example_ct_sm.nii.gz")
    lungs = np.isin(labels, [10, 11, 12, 13, 14]).astype(np.uint8)
    plan = VolumePlan(spacing=(2.0, 2.0, 2.0), normalise="none", crop="none")
    x, geometry = prepare_volume(volume, affine, plan, "hu")
    assert geometry.spacing == pytest.approx((2.0, 2.0, 2.0), rel=0.02)
    assert not geometry.display and x.min() >= 0.0 and x.max() <= 1.0  # HU through the lung window
    windowed = np.clip((volume + 1250.0) / 1500.0, 0, 1)
    assert abs(float(x.mean()) - float(windowed.mean())) < 0.01 and (windowed == 1).any() and (windowed < 0.2).any()
    plan = VolumePlan(spacing=(2.0, 2.0, 2.0), normalise="none")
    x, geometry = prepare_volume(volume, affine, plan, "hu")
    back = restore_volume(torch.from_numpy(prepare_labels(lungs, geometry)[None].astype(np.float32)), geometry)[0]
    assert back.shape == volume.shape and dice(back >= 0.5, lungs) > 0.9


def test_display_range_volumes_are_scaled_not_windowed_again():
    rng = np.random.default_rng(0)
    display = rng.integers(0, 256, size=(16, 16, 8)).astype(np.float32)
    assert intensity_space(display) == "display" and intensity_space(display - 1000.0) == "hu"
    x, geometry = prepare_volume(display, np.eye(4), VolumePlan(normalise="none", crop="none"), intensity_space(display))
    assert geometry.display
    np.testing.assert_allclose(x[0], display / 255.0, atol=1e-6)  # not clipped by a lung window


def test_plan_follows_nnunet_rules():
    from covseg.training.config import VolumeConfig
    from covseg.training.planning import dataset_fingerprint, make_plan, patch_size_for, target_spacing

    fp = {"spacings": [[0.7, 0.7, 5.0], [0.8, 0.8, 5.0], [0.7, 0.7, 1.0], [0.7, 0.7, 5.0], [0.8, 0.8, 2.5]]}
    spacing = target_spacing(fp)
    assert spacing[0] == pytest.approx(0.7) and spacing[2] == pytest.approx(np.percentile([5, 5, 1, 5, 2.5], 10))
    assert target_spacing({"spacings": [[1.0, 1.0, 2.0], [1.0, 1.0, 2.5]]})[2] == pytest.approx(2.25)  # isotropic enough: median
    patch = patch_size_for((300, 240, 90), (1.0, 1.0, 2.5), budget=64 * 64 * 48)
    assert all(p % 16 == 0 for p in patch) and np.prod(patch) <= 64 * 64 * 48
    cases = []
    for seed in range(3):
        ph = make_phantom_volume(seed, SMALL, SMALL_SPACING)
        from covseg.training.planning import case_fingerprint

        cases.append(case_fingerprint(ph.image, ph.affine, ph.infection, seed))
    fingerprint = dataset_fingerprint(cases)
    json.dumps(fingerprint)  # JSON-ready for plan.json
    assert fingerprint["median_spacing"] == pytest.approx(list(SMALL_SPACING))
    plan = make_plan(fingerprint, cases, VolumeConfig())
    assert plan.spacing == pytest.approx(SMALL_SPACING) and plan.window == (-1250.0, 250.0) and plan.crop == "body"
    assert 0.0 < plan.mean < 1.0 and plan.std > 0 and plan.patch_size == (32, 32, 16)  # within the 40×40×20 grid


# ---------------------------------------------------------------------------------------------- stacks
def test_stacked_slices_become_volumes_and_back(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "slices"
    slices = {name: rng.integers(0, 256, size=(n, 12, 9)).astype(np.uint8) for name, n in (("Data-1_a", 5), ("Data-1_b", 3))}
    for name, arr in slices.items():
        for k, sl in enumerate(arr, start=1):
            write_image(src / "images" / f"{name}_{k}.png", sl)
    proc = _covseg("data", "convert", src, tmp_path / "vol", "--stack", "--spacing", "0.7,0.7,5")
    assert proc.returncode == 0, proc.stderr
    vol, spacing, affine = read_volume(tmp_path / "vol" / "images" / "Data-1_a.nii.gz")
    assert vol.shape == (9, 12, 5) and spacing == pytest.approx((0.7, 0.7, 5.0))
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    back = _covseg("data", "convert", tmp_path / "vol", tmp_path / "back", "--to", "folder", "--window", "display")
    assert back.returncode == 0, back.stderr
    from covseg.data.imageio import read_image

    for k in range(5):  # the same slices, in the same order and orientation
        np.testing.assert_array_equal(read_image(tmp_path / "back" / "images" / f"Data-1_a_{k:03d}.png"), slices["Data-1_a"][k])
    (src / "images" / "Data-1_a_3.png").unlink()
    gap = _covseg("data", "convert", src, tmp_path / "vol2", "--stack")
    assert gap.returncode == 2 and "slice 3 is missing" in gap.stderr and "Traceback" not in gap.stderr


def test_real_unlabelled_slices_stack_into_a_volume(real_data, tmp_path):
    from covseg.data.stack import find_stacks
    from covseg.errors import DataError

    folder = real_data / "covid_semiseg_infnet" / "unlabeled" / "images"
    stacks = {s.name: s for s in find_stacks(folder)}
    assert len(stacks) == 20  # the README's 20 volumes
    smallest = min(stacks.values(), key=lambda s: len(s.files))
    assert smallest.numbers == list(range(1, len(smallest.files) + 1))
    with pytest.raises(DataError, match="--pad"):  # each slice has its own lung crop: sizes differ
        smallest.read_volume()
    volume, _, _ = find_stacks(folder, pad=True)[list(stacks).index(smallest.name)].read_volume()
    assert volume.shape[2] == len(smallest.files) and intensity_space(volume) == "display"


# ------------------------------------------------------------------------------------ samplers, inferers
def test_slab_layout_of_the_sampler_matches_the_slice_inferer(tmp_path):
    from covseg.engine.inferers import SliceInferer
    from covseg.training.cache import CaseCache
    from covseg.training.sampling import PatchSampler
    from covseg.transforms.augment import AugmentConfig

    image = np.arange(2 * 6 * 5 * 4, dtype=np.float32).reshape(2, 6, 5, 4)  # (C, X, Y, Z)
    label = np.zeros((6, 5, 4), np.uint8)
    label[:, :, 0] = 1
    rec = type("R", (), {"case_id": "c", "image": tmp_path / "c", "mask": None, "masks": {}})()
    cache = CaseCache.build([rec], lambda r: (image, label), {"t": 1}, 1, root=tmp_path / "cache")
    still = AugmentConfig(hflip=0, rotate_deg=0, scale=(1, 1), brightness=0, contrast=0, p_spatial=0)
    sampler = PatchSampler(cache, (6, 5), 1, still, 1.0, 1, context_slices=1)
    batch = sampler.batch(torch.tensor([0]), torch.Generator().manual_seed(0))  # forced onto z = 0
    seen = []
    SliceInferer(axis=2, context=1)(lambda x, c: seen.append(x.clone()) or x[:, :1], [torch.from_numpy(image)], batch_size=8)
    assert batch["image"].shape == (1, 6, 6, 5) and batch["mask"].shape == (1, 1, 6, 5)
    torch.testing.assert_close(batch["image"][0], seen[0][0])  # slice 0 with its neighbours (edge repeated)
    assert bool(batch["mask"].all())


def test_3d_augmentation_moves_image_and_labels_together():
    from covseg.transforms.augment import AugmentConfig
    from covseg.transforms.augment3d import apply_augmentation_3d, draw_augmentation_3d

    ph = make_phantom_volume(5, (32, 32, 16), (10.0, 10.0, 20.0))
    label = torch.from_numpy(ph.infection.astype(np.float32))[None, None].repeat(3, 1, 1, 1, 1)
    image = label.clone()  # an image equal to its label: any misalignment shows
    cfg = AugmentConfig(rotate3d_deg=(10, 10, 30), scale=(0.8, 1.2), brightness=0, contrast=0, p_spatial=1.0)
    draws = draw_augmentation_3d(tuple(image.shape), cfg, torch.Generator().manual_seed(0))
    again = draw_augmentation_3d(tuple(image.shape), cfg, torch.Generator().manual_seed(0))
    assert all(torch.equal(draws[k], again[k]) for k in draws)
    out, labels = apply_augmentation_3d(image, {"mask": label}, cfg, draws)
    assert not torch.equal(out, image)
    for b in range(3):
        assert dice(out[b, 0] >= 0.5, labels["mask"][b, 0]) > 0.9


# --------------------------------------------------------------------------------- training, prediction
@pytest.mark.slow  # trains run3d, then three `covseg predict` subprocesses: 26.6 CPU-s (2026-12-07)
def test_volume_run_describes_its_plan_and_predicts_in_each_input_geometry(run3d, phantoms, tmp_path):
    from tests.data.test_imageio import write_dicom_series

    desc = json.loads((run3d / "model.json").read_text())
    plan = json.loads((run3d / "plan.json").read_text())
    assert desc["volume"]["spacing"] == pytest.approx(list(SMALL_SPACING)) and desc["inferer"]["name"] == "sliding_window"
    assert plan["fingerprint"]["cases"] == 6 and plan["plan"] == desc["volume"]
    # a NIfTI file with an oblique, shifted affine, a DICOM series of the same voxels, and the scan cut into
    # slices NAME_<k>.png: each mask comes back in its input's geometry
    ph = make_phantom_volume(42, SMALL, SMALL_SPACING)
    inputs = tmp_path / "in"
    oblique = _oblique(ph.affine)
    write_volume(inputs / "scan.nii.gz", ph.image, oblique, dtype="int16")
    write_dicom_series(inputs / "series", ph.image.astype(np.float32), ph.affine)
    slices = tmp_path / "slices"
    display = np.clip((ph.image.astype(np.float32) + 1250) / 1500 * 255, 0, 255).astype(np.uint8)
    for k in range(display.shape[2]):
        write_image(slices / f"scan_{k + 1}.png", display[:, :, k].T)
    out = tmp_path / "out"
    expected = {"nifti": oblique, "series": ph.affine, "stack": np.diag([-8.0, -8.0, 12.0, 1.0])}  # stack: covseg's slice convention
    for source, kind in ((inputs / "scan.nii.gz", "nifti"), (inputs / "series", "series"), (slices, "stack")):
        proc = _covseg("predict", "-m", run3d, "-i", source, "-o", out / kind, "-q", "--stack-spacing", "8,8,12")
        assert proc.returncode == 0, proc.stderr
        name = "series" if kind == "series" else "scan"
        mask = nib.load(out / kind / "masks" / f"{name}.nii.gz")
        assert mask.shape == ph.image.shape and np.allclose(mask.affine, expected[kind], atol=1e-4), (kind, mask.affine)
        rows = (out / kind / "predictions.csv").read_text().splitlines()
        assert "peak_memory_mb" in rows[0] and len(rows) == 2
    a = nib.load(out / "nifti" / "probs" / "scan.nii.gz").get_fdata()
    b = nib.load(out / "series" / "probs" / "series.nii.gz").get_fdata()
    c = nib.load(out / "stack" / "probs" / "scan.nii.gz").get_fdata()
    assert a.std() > 0.01  # a map that varies, so the comparisons below can fail
    np.testing.assert_allclose(a, b, atol=0.01)  # the same voxels from NIfTI (tilted) or DICOM: the same map (uint8-scaled)
    assert np.abs(c - b).mean() < 0.05  # the same scan as 0..255 slices: scaled, not windowed, close to the HU map


@pytest.mark.slow  # needs run3d (trained for this file) and a `covseg predict` subprocess
def test_volume_run_refuses_2d_images_in_one_line(run3d, tmp_path):
    write_image(tmp_path / "in" / "slice.png", np.zeros((20, 20)))
    proc = _covseg("predict", "-m", run3d, "-i", tmp_path / "in" / "slice.png", "-o", tmp_path / "out", "-q")
    assert proc.returncode == 1 and "segments volumes" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow  # needs run3d (trained for this file)
def test_an_exported_volume_run_replays_its_plan(run3d, tmp_path):
    from covseg.inference.exported import export_run, load_exported
    from covseg.inference.predictor import Predictor

    export_run(run3d, "onnx", tmp_path / "onnx")
    ph = make_phantom_volume(8, SMALL, SMALL_SPACING)
    torch_probs = Predictor.from_run(run3d).predict_array(ph.image, ph.affine).probs
    onnx_probs = load_exported(tmp_path / "onnx", "onnx").predict_array(ph.image, ph.affine).probs
    assert onnx_probs.shape == ph.image.shape
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4)


@pytest.mark.slow  # needs run3d (trained for this file)
def test_flip_tta_over_chosen_axes_is_symmetric(run3d):
    from covseg.inference.options import PredictOptions
    from covseg.inference.predictor import Predictor

    predictor = Predictor.from_run(run3d)
    ph = make_phantom_volume(7, SMALL, SMALL_SPACING)
    tta = predictor.predict_array(ph.image, ph.affine, PredictOptions(tta_axes=(0, 1))).probs
    mirrored_affine = ph.affine @ np.array([[-1, 0, 0, SMALL[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    mirrored = predictor.predict_array(ph.image[::-1].copy(), mirrored_affine, PredictOptions(tta_axes=(0, 1))).probs
    np.testing.assert_allclose(mirrored[::-1], tta, atol=1e-4)  # same scan, stored mirrored: the same map


@pytest.mark.slow  # three `covseg train` subprocesses, one of them a full 2.5D training
def test_training_on_volumes_with_a_2d_model_is_25d_and_bad_volumes_are_one_line(phantoms, tmp_path):
    import yaml

    cfg = volume_config(phantoms, tmp_path / "cache", model={"name": "unet", "params": {"base_width": 4, "depth": 2}})
    cfg["preprocess"] = {"volume": {"context_slices": 1}}
    cfg["sampler"]["patch_size"] = [32, 32]
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = _covseg("train", "--config", path, "--output", tmp_path / "run", "-q")
    assert proc.returncode == 0, proc.stderr
    desc = json.loads((tmp_path / "run" / "model.json").read_text())
    assert desc["init_args"]["in_channels"] == 3 and desc["inferer"]["params"]["context"] == 1
    ph = make_phantom_volume(9, SMALL, SMALL_SPACING)
    from covseg.inference.predictor import Predictor

    pred = Predictor.from_run(tmp_path / "run").predict_array(ph.image, ph.affine)
    assert pred.labels.shape == ph.image.shape
    # a broken volume among the training cases: one line naming it, no traceback
    bad = tmp_path / "bad"
    write_phantom_volumes(bad, 4, SMALL, SMALL_SPACING, seed=2)
    (bad / "images" / "phantom3d_001.nii.gz").write_bytes(b"not a nifti")
    cfg["data"]["root"] = str(bad)
    path.write_text(yaml.safe_dump(cfg))
    proc = _covseg("train", "--config", path, "--output", tmp_path / "run_bad", "-q")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "phantom3d_001" in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1
    # a shipped 2D config whose model learns from edge maps: one line saying why, before any work
    proc = _covseg("train", "--config", "infnet_covid_semiseg", "--output", tmp_path / "run_infnet", "-q", f"data.root={phantoms}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "edge" in proc.stderr


def test_lung_mask_on_phantoms_and_real_ct(real_data, tmp_path):
    from covseg.data.imageio import read_label_volume
    from covseg.transforms.lungmask import lung_mask

    ph = make_phantom_volume(1)
    assert dice(lung_mask(ph.image, ph.affine), ph.lungs) > 0.95
    src = real_data / "ct3d_totalseg_example"
    proc = _covseg("lungmask", "-i", src / "images", "-o", tmp_path / "lungs", "-q")
    assert proc.returncode == 0, proc.stderr
    mask = nib.load(tmp_path / "lungs" / "example_ct_sm.nii.gz")
    labels, _, affine = read_label_volume(src / "masks" / "example_ct_sm.nii.gz")
    assert np.allclose(mask.affine, affine)
    assert dice(mask.get_fdata(), np.isin(labels, [10, 11, 12, 13, 14])) > 0.7  # lung bases at 3 mm; bowel gas is not lung


# ------------------------------------------------------------------------------------ coarse to fine
class _Coarse:
    """A stand-in coarse segmenter whose foreground is a known box of the input volume."""

    def __init__(self, box: tuple[slice, ...]) -> None:
        self.box = box

    def volume_probabilities(self, volume, affine, **_):
        probs = np.zeros(volume.shape, np.float32)
        probs[self.box] = 0.9
        return probs


class _Positive(torch.nn.Module):
    """A 'network' that calls every voxel it sees foreground."""

    spatial_dims = 3

    def forward(self, x):
        return torch.full((x.shape[0], 1, *x.shape[2:]), 10.0)


def test_the_fine_stage_segments_only_inside_the_coarse_region():
    from covseg.engine.cascade import CoarseStage
    from covseg.engine.inferers import SlidingWindowInferer
    from covseg.engine.segmenter import Segmenter
    from covseg.transforms.preprocess import Preprocessing

    ph = make_phantom_volume(4, SMALL, SMALL_SPACING)
    box = (slice(5, 15), slice(20, 30), slice(8, 12))
    plan = VolumePlan(spacing=(4.0, 4.0, 6.0), crop="body")  # the fine grid is finer than the input
    stage = CoarseStage(_Coarse(box), margin_mm=8.0)  # one input voxel in-plane
    fine = Segmenter(_Positive(), Preprocessing(size=None), 1, inferer=SlidingWindowInferer((16, 16, 16)), volume_plan=plan, cascade=stage)
    probs = fine.volume_probabilities(ph.image, ph.affine)
    assert probs.shape == ph.image.shape
    inside = probs >= 0.5
    grown = np.zeros_like(inside)
    grown[4:16, 19:31, 7:13] = True  # the box grown by 8 mm in-plane, 12 mm (one slice) along z
    assert inside[box].all() and not inside[~grown].any()
    empty = CoarseStage(_Coarse((slice(0, 0),) * 3))
    fine.cascade = empty
    assert not fine.volume_probabilities(ph.image, ph.affine).any()  # nothing found coarsely: nothing to refine


@pytest.mark.slow  # needs run3d and trains a second 3D run on top of it
def test_cascade_run_folder_predicts_on_its_own(run3d, phantoms, tmp_path):
    import shutil

    from covseg.api import fit
    from covseg.inference.predictor import Predictor
    from covseg.training.config import load_config

    coarse = tmp_path / "coarse_elsewhere"
    shutil.copytree(run3d, coarse)
    cfg = volume_config(phantoms, tmp_path / "cache", preprocess={"volume": {"coarse_run": str(coarse), "coarse_margin_mm": 16}})
    fit(load_config(raw=cfg), tmp_path / "fine", quiet=True)
    desc = json.loads((tmp_path / "fine" / "model.json").read_text())
    assert desc["cascade"]["run"] == "coarse" and (tmp_path / "fine" / "coarse" / "model.json").exists()
    shutil.rmtree(coarse)  # the fine run folder carries its coarse stage
    ph = make_phantom_volume(11, SMALL, SMALL_SPACING)
    pred = Predictor.from_run(tmp_path / "fine").predict_array(ph.image, ph.affine)
    assert pred.labels.shape == ph.image.shape


def test_volume_evaluation_reports_ml_per_class_and_three_slices(tmp_path):
    import csv

    from covseg.metrics.evaluation import case_display_arrays, evaluate_cases, make_accumulator, pair_cases

    gt = np.zeros((20, 22, 10), np.uint8)
    gt[5:15, 6:16, 3:7] = 1  # 400 voxels of 0.8 × 0.8 × 3 mm = 0.768 ml
    pred = np.zeros_like(gt)
    pred[5:15, 6:16, 4:9] = 1  # 500 voxels
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    write_volume(tmp_path / "gt" / "vol.nii.gz", gt, affine, dtype="uint8")
    write_volume(tmp_path / "pred" / "vol.nii.gz", pred, affine, dtype="uint8")
    out = tmp_path / "out"
    proc = _covseg("evaluate", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--out", out, "--tolerance", "2")
    assert proc.returncode == 0, proc.stderr
    row = next(csv.DictReader((out / "per_case.csv").open()))
    assert float(row["gt_ml"]) == pytest.approx(0.768) and float(row["pred_ml"]) == pytest.approx(0.96)
    assert float(row["dice"]) == pytest.approx(2 * 300 / 900) and float(row["nsd"]) > 0
    cases, _, _ = pair_cases(tmp_path / "pred", tmp_path / "gt")
    run = evaluate_cases(cases, make_accumulator("medical"))
    _, g, p, note = case_display_arrays(cases[0], run)
    assert g.shape == (22, 60) and p.shape == g.shape and "slices" in note  # three axial slices side by side


# ------------------------------------------------------------------------------ learning (slow)
# Run alone: pytest -m slow tests/integration/test_volumes.py (about 6 min on 2 busy cores; bench/results/volume/learning_tests.md).
def _best_val(run: Path, monitor: str = "dice") -> float:
    import csv

    rows = list(csv.DictReader((run / "history.csv").open()))
    return max(float(r[f"val_{monitor}"]) for r in rows if r.get(f"val_{monitor}"))


@pytest.mark.slow
def test_3d_unet_from_the_cli_reaches_dice_09_on_held_out_phantoms(tmp_path):
    """``covseg train --config unet3d_phantoms`` (the shipped config, unchanged but for the data) on 16
    phantoms (64×64×32 at 5×5×8 mm): the 4 cases of the held-out fold, predicted from the saved run
    folder as ``covseg predict`` does."""
    from covseg.data.imageio import read_label_volume
    from covseg.inference.predictor import Predictor

    data = write_phantom_volumes(tmp_path / "data", 16)
    proc = _covseg("train", "--config", "unet3d_phantoms", "--output", tmp_path / "run", "-q",
                   f"data.root={data}", f"sampler.cache_dir={tmp_path / 'cache'}", "train.threads=1")
    assert proc.returncode == 0, proc.stderr
    predictor = Predictor.from_run(tmp_path / "run", "last")
    held_out = json.loads((tmp_path / "run" / "splits.json").read_text())["val"]
    tp = pred_sum = gt_sum = 0
    per_case = []
    for case in held_out:
        volume, _, affine = read_volume(data / "images" / f"{case}.nii.gz")
        gt = read_label_volume(data / "labels" / f"{case}.nii.gz")[0] > 0
        pred = predictor.predict_array(volume, affine).labels > 0
        tp, pred_sum, gt_sum = tp + int((pred & gt).sum()), pred_sum + int(pred.sum()), gt_sum + int(gt.sum())
        per_case.append(dice(pred, gt))
    pooled = 2 * tp / (pred_sum + gt_sum)
    assert len(held_out) == 4 and pooled > 0.9, (pooled, per_case)  # every held-out voxel counted once
    assert np.mean(per_case) > 0.85, per_case  # small lesions weigh as much as large ones


@pytest.mark.slow
def test_3d_cps_from_the_cli_with_unlabelled_volumes_beats_the_two_labels_alone(tmp_path):
    """2 labelled + 8 unlabelled phantoms (48×48×24): ``covseg train --config cps3d_uif`` (CPS + CutMix +
    UIF) against ``--config unet3d_phantoms`` on the same 2 labels, same steps and network, both scored
    on the same 5 held-out phantoms (the other fold)."""
    lab = write_phantom_volumes(tmp_path / "lab", 10, (48, 48, 24), (6.67, 6.67, 10.67), seed=11)
    unl = write_phantom_volumes(tmp_path / "unl", 8, (48, 48, 24), (6.67, 6.67, 10.67), seed=12, labels=False)
    common = [
        f"data.root={lab}", "data.folds=2", "data.limit=2", f"sampler.cache_dir={tmp_path / 'cache'}", "train.threads=1",
        "train.epochs=60", "train.val_every=60", "train.batch_size=2", "model.params.channels=[8,16,32,64]",
        "model.params.num_res_units=1", "sampler.patch_size=[32,32,16]", "sampler.foreground_fraction=0.5",
        "sampler.batches_per_epoch=10",
    ]
    sup = _covseg("train", "--config", "unet3d_phantoms", "--output", tmp_path / "sup", "-q", *common)
    assert sup.returncode == 0, sup.stderr
    semi = [f"semi.unlabeled.root={unl}", "semi.cps.rampup_epochs=3", "semi.cps.cutmix=true", "semi.cps.uif.rescore_every=5"]
    cps = _covseg("train", "--config", "cps3d_uif", "--output", tmp_path / "cps", "-q", *common, *semi)
    assert cps.returncode == 0, cps.stderr
    scores = (tmp_path / "cps" / "uif_scores.csv").read_text().splitlines()
    assert len(scores) == 9 and sum(line.endswith(",1,55") for line in scores) == 6  # 8 volumes scored, 75 % kept
    held_out = json.loads((tmp_path / "cps" / "splits.json").read_text())["val"]
    assert held_out == json.loads((tmp_path / "sup" / "splits.json").read_text())["val"] and len(held_out) == 5
    semi_dice, sup_dice = _best_val(tmp_path / "cps"), _best_val(tmp_path / "sup")
    assert semi_dice > sup_dice + 0.02, (semi_dice, sup_dice)
