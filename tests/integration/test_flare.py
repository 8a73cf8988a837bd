"""FLARE22 (SemiSeg-CSSN's data): the folder layout, multi-class 3D training and prediction on a tiny
FLARE-like phantom folder, the unlabelled volumes in 3D CPS, and FLARE's table from ``covseg evaluate``."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from covseg.data.imageio import write_volume

from tests.helpers import run_cli

SHAPE = (32, 32, 24)
SPACING = (3.0, 3.0, 4.0)
ORGANS = {1: ("liver", 60.0), 2: ("kidney", 220.0), 3: ("spleen", 140.0)}  # label: (name, HU)


def _covseg(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "covseg.cli.main", *map(str, args)], capture_output=True, text=True)


def flare_phantom(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An abdomen-like HU volume and its organ label map (0 background, 1 liver, 2 kidneys, 3 spleen),
    organs moved and resized by ``seed``."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")

    def ellipsoid(centre, radii):
        return sum(((a - c) / r) ** 2 for a, c, r in zip((x, y, z), centre, radii)) <= 1.0

    jitter = lambda s: rng.uniform(-s, s)  # noqa: E731
    body = ellipsoid((16, 16, 12), (14, 12, 30))
    labels = np.zeros(SHAPE, np.uint8)
    labels[ellipsoid((11 + jitter(1.5), 13 + jitter(1.5), 12 + jitter(2)), (6 + jitter(1), 6 + jitter(1), 7 + jitter(1)))] = 1
    for cx in (8.0, 24.0):  # two kidneys
        labels[ellipsoid((cx + jitter(1), 23 + jitter(1), 12 + jitter(2)), (3.5, 3.5, 5.0))] = 2
    labels[ellipsoid((23 + jitter(1.5), 11 + jitter(1.5), 12 + jitter(2)), (5 + jitter(0.5), 5 + jitter(0.5), 6))] = 3
    labels[~body] = 0
    hu = np.where(body, -40.0, -1000.0).astype(np.float32)
    for label, (_, value) in ORGANS.items():
        hu[labels == label] = value
    hu += rng.normal(0, 10, SHAPE).astype(np.float32)
    return hu, labels


def write_flare_folder(root: Path, train: int = 6, unlabelled: int = 3, validation: int = 2) -> Path:
    """A tiny FLARE22-like folder: ``train_images/*_0000.nii.gz`` + ``train_mask/``, ``trainu_images/``,
    ``validation_images/`` + ``validation_mask/``."""
    affine = np.diag([*SPACING, 1.0])
    for split, images, masks, n, offset in (
        ("Tr", "train_images", "train_mask", train, 0),
        ("Unlabeled", "trainu_images", None, unlabelled, 100),
        ("Ts", "validation_images", "validation_mask", validation, 200),
    ):
        for i in range(n):
            hu, labels = flare_phantom(offset + i)
            case = f"FLARE22_{split}_{i + 1:04d}"
            write_volume(root / images / f"{case}_0000.nii.gz", hu, affine, dtype="int16")
            if masks:
                write_volume(root / masks / f"{case}.nii.gz", labels, affine, dtype="uint8")
    return root


@pytest.fixture(scope="module")
def flare_root(tmp_path_factory) -> Path:
    return write_flare_folder(tmp_path_factory.mktemp("flare") / "FLARE22")


def test_flare_layout_is_detected_with_its_splits(flare_root, tmp_path):
    from covseg.data import detect_layout, list_splits, open_dataset

    assert detect_layout(flare_root) == "flare"
    assert list_splits(flare_root) == ["train", "validation"]  # the labelled splits; unlabelled on request
    both = open_dataset(flare_root)
    assert both.layout == "flare" and both.volumetric and len(both.records) == 8
    assert all(r.mask is not None for r in both.records)
    train = open_dataset(flare_root, split="train")
    assert [r.case_id for r in train.records] == [f"FLARE22_Tr_{i:04d}" for i in range(1, 7)]
    assert all(r.mask.name == f"{r.case_id}.nii.gz" and r.image.name == f"{r.case_id}_0000.nii.gz" for r in train.records)
    for name in ("unlabelled", "unlabeled", "trainu"):
        unl = open_dataset(flare_root, split=name)
        assert len(unl.records) == 3 and all(r.mask is None for r in unl.records) and not unl.findings
    # a FLARE folder without train_mask/ is no FLARE folder; an unknown split is one line
    bare = write_flare_folder(tmp_path / "bare", train=1, unlabelled=0, validation=0)
    for f in (bare / "train_mask").iterdir():
        f.unlink()
    (bare / "train_mask").rmdir()
    assert detect_layout(bare) != "flare"
    proc = _covseg("data", "check", flare_root, "--split", "test")
    assert proc.returncode != 0 and "no split 'test'" in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


def test_flare_table_dsc_nsd_per_class_with_predict_timings(tmp_path, capsys):
    """``covseg evaluate --protocol flare``: DSC and NSD per organ (NSD by surfel area, FLARE's script:
    ``covseg.metrics.surface_area``, checked against DeepMind's library in test_metrics_surface_area.py;
    MONAI's voxel-count ``compute_surface_dice`` differs from it), seconds and peak memory read from
    predict's ``predictions.csv``; the predictions keep FLARE's input names (``case_0000``) and pair with
    ``case``'s ground truth."""
    import torch
    from monai.metrics import compute_dice, compute_surface_dice

    from covseg.metrics.surface_area import surfel_surface_dice

    affine = np.diag([*SPACING, 1.0])
    pred_dir, gt_dir = tmp_path / "pred" / "masks", tmp_path / "gt"
    truths, preds = [], []
    for i in range(2):
        _, gt = flare_phantom(300 + i)
        _, other = flare_phantom(400 + i)  # moved organs: every class is partly right
        pred = np.where(np.random.default_rng(i).random(SHAPE) < 0.5, gt, other).astype(np.uint8)
        write_volume(gt_dir / f"case{i}.nii.gz", gt, affine, dtype="uint8")
        write_volume(pred_dir / f"case{i}_0000.nii.gz", pred, affine, dtype="uint8")
        truths.append(gt)
        preds.append(pred)
    rows = ["input,mask,seconds,cpu_seconds,peak_memory_mb,model",
            "in/case0_0000.nii.gz,masks/case0_0000.nii.gz,1.5,2.0,812.3,run",
            "in/case1_0000.nii.gz,masks/case1_0000.nii.gz,2.5,3.0,900.1,run"]
    (tmp_path / "pred" / "predictions.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "eval"
    code = run_cli(["evaluate", "--pred", pred_dir, "--gt", gt_dir, "--protocol", "flare", "--num-classes", "3",
                    "--out", out, "--no-report"])
    assert code == 0
    assert "FLARE table: NSD at 1 mm (by surface area, as FLARE's script)" in capsys.readouterr().out
    table = json.loads((out / "summary.json").read_text())["flare"]
    assert table["timed_cases"] == 2 and table["tolerance_mm"] == 1.0 and table["nsd"] == "surfel"
    one_hot = lambda a: torch.nn.functional.one_hot(torch.from_numpy(a).long(), 4).permute(3, 0, 1, 2)[None]  # noqa: E731
    for i, row in enumerate(table["cases"]):
        p, g = one_hot(preds[i]), one_hot(truths[i])
        nsd = compute_surface_dice(p, g, class_thresholds=[1.0] * 3, include_background=False, spacing=list(SPACING))[0]
        dsc = compute_dice(p, g, include_background=False)[0]
        assert row["case_id"] == f"case{i}"
        for c in range(1, 4):
            assert row[f"nsd_{c}"] == pytest.approx(surfel_surface_dice(preds[i] == c, truths[i] == c, SPACING, 1.0), abs=1e-12)
            assert abs(row[f"nsd_{c}"] - float(nsd[c - 1])) > 1e-3  # not MONAI's voxel count
            assert row[f"dsc_{c}"] == pytest.approx(float(dsc[c - 1]), abs=1e-6)
            assert 0.2 < row[f"dsc_{c}"] < 0.95
        assert row["mean_dsc"] == pytest.approx(float(dsc.mean()), abs=1e-6)
    assert [r["seconds"] for r in table["cases"]] == [1.5, 2.5]
    assert [r["peak_memory_mb"] for r in table["cases"]] == [812.3, 900.1]
    assert table["mean"]["seconds"] == pytest.approx(2.0)
    per_case = list(csv.DictReader((out / "per_case.csv").open()))
    assert len(per_case) == 6 and {"dice", "nsd", "seconds", "peak_memory_mb"} <= set(per_case[0])
    assert "hd95" not in per_case[0]
    # bad timings are one line, and --timings belongs to the flare protocol
    bad = tmp_path / "bad.csv"
    bad.write_text("input,mask,seconds\nin/case0_0000.nii.gz,masks/case0_0000.nii.gz,fast\n")
    base = ["evaluate", "--pred", pred_dir, "--gt", gt_dir, "--num-classes", "3", "--no-report", "--timings", bad]
    assert run_cli([*base, "--protocol", "flare", "--out", tmp_path / "e2"]) != 0
    assert "row 2: seconds / peak memory are not numbers" in capsys.readouterr().err
    assert run_cli([*base, "--out", tmp_path / "e3"]) != 0
    err = capsys.readouterr().err
    assert "--timings: only the flare protocol" in err and "Traceback" not in err


def test_nsd_by_hand_at_the_flare_tolerance():
    """Two 4×4×4 cubes shifted by one voxel along x. Each has 56 surface voxels (64 minus the 2×2×2 core).
    A ground-truth surface voxel lies on the prediction's surface (distance 0) when x ∈ {3, 4, 5} and it is on
    the y/z rim: 3 × 12 = 36. The 16 on the x = 2 face are one x-step from the prediction's x = 3 face; the 4
    inside the x = 5 face are one x-step or one y/z-step from the prediction's surface. Likewise for the
    prediction. So with 1 mm voxels NSD@1mm = 1 and NSD@0.5mm = 72/112; with 2 mm along x the x = 2 face
    (and its mirror) are 2 mm away: NSD@1mm = (40 + 40)/112."""
    from covseg.metrics import FlareMetrics

    gt = np.zeros((10, 8, 8), np.uint8)
    pred = np.zeros_like(gt)
    gt[2:6, 2:6, 2:6] = 1
    pred[3:7, 2:6, 2:6] = 1
    iso = (1.0, 1.0, 1.0)
    (rec,) = FlareMetrics(num_classes=1, tolerance=1.0, nsd="voxel").update(pred, gt, spacing=iso)
    assert rec["dice"] == pytest.approx(2 * 48 / 128) and rec["nsd"] == pytest.approx(1.0)
    (half,) = FlareMetrics(num_classes=1, tolerance=0.5, nsd="voxel").update(pred, gt, spacing=iso)
    assert half["nsd"] == pytest.approx(72 / 112)
    (aniso,) = FlareMetrics(num_classes=1, tolerance=1.0, nsd="voxel").update(pred, gt, spacing=(2.0, 1.0, 1.0))
    assert aniso["nsd"] == pytest.approx(80 / 112)
    # by surfel area (the default, FLARE's): every surfel has its copy one x-step away, so NSD@1mm = 1 too
    (surfel,) = FlareMetrics(num_classes=1, tolerance=1.0).update(pred, gt, spacing=iso)
    assert surfel["dice"] == rec["dice"] and surfel["nsd"] == 1.0


def flare_config(root: Path, out: Path, epochs: int, **extra) -> dict:
    """A small multi-class 3D MONAI U-Net on the FLARE folder: train split to train, validation split to validate."""
    return {
        "name": "flare3d",
        "data": {"root": str(root), "split": "train", "val_root": str(root), "val_split": "validation", "num_classes": 4},
        "preprocess": {"volume": {"window": [-160, 240]}},  # an abdominal window (the default is the lung window)
        "model": {"name": "monai_unet", "params": {"spatial_dims": 3, "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}},
        "loss": {"main": "dice_ce"},
        "optim": {"lr": 0.01},
        "train": {"epochs": epochs, "batch_size": 2, "threads": 1, "val_every": epochs},
        "sampler": {"name": "patches", "batches_per_epoch": 8, "foreground_fraction": 0.5, "cache_dir": str(out / "cache")},
        **extra,
    }


@pytest.mark.slow
def test_flare_folder_trains_a_multiclass_3d_model_that_predicts_and_scores_each_organ(flare_root, tmp_path):
    """40 epochs × 8 patches of 6 labelled phantoms (3 organs), then ``covseg predict`` on the 2 validation
    volumes and ``covseg evaluate --protocol flare`` on its output folder: every organ's DSC > 0.5, and the
    table carries predict's seconds and peak memory for both cases."""
    from covseg.api import fit
    from covseg.training.config import load_config

    fit(load_config(raw=flare_config(flare_root, tmp_path, 40)), tmp_path / "run", quiet=True)
    desc = json.loads((tmp_path / "run" / "model.json").read_text())
    assert desc["init_args"]["out_channels"] == 4 and desc["num_classes"] == 4
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert len(splits["train"]) == 6 and len(splits["val"]) == 2
    proc = _covseg("predict", "-m", tmp_path / "run", "-i", flare_root / "validation_images", "-o", tmp_path / "pred", "-q")
    assert proc.returncode == 0, proc.stderr
    proc = _covseg("evaluate", "--pred", tmp_path / "pred", "--gt", flare_root / "validation_mask", "--protocol", "flare",
                   "--num-classes", "3", "--out", tmp_path / "eval", "--no-report")
    assert proc.returncode == 0, proc.stderr
    table = json.loads((tmp_path / "eval" / "summary.json").read_text())["flare"]
    assert [r["case_id"] for r in table["cases"]] == ["FLARE22_Ts_0001", "FLARE22_Ts_0002"]
    # measured (2-core EPYC, loaded): DSC 0.93 / 0.68 / 0.62 (liver / kidneys / spleen); all-background scores 0
    assert all(table["per_class"][str(c)]["dsc"] > 0.5 for c in (1, 2, 3)), table["per_class"]
    assert table["mean"]["mean_dsc"] > 0.65 and table["per_class"]["1"]["nsd"] > 0.4, table["per_class"]
    assert table["timed_cases"] == 2 and all(r["seconds"] > 0 and r["peak_memory_mb"] > 50 for r in table["cases"])


@pytest.mark.slow
def test_trainu_images_feed_3d_cps(flare_root, tmp_path):
    """``semi.unlabeled: {root: FLARE folder, split: unlabelled}``: CPS on volumes reads the 3 trainu volumes
    (scored by UIF), never the labelled or validation ones."""
    from covseg.api import fit
    from covseg.training.config import load_config

    semi = {"unlabeled": {"root": str(flare_root), "split": "unlabelled"},
            "cps": {"weight": 1.0, "rampup_epochs": 1, "uif": {"enabled": True, "keep_fraction": 0.67, "rescore_every": 1}}}
    cfg = flare_config(flare_root, tmp_path, 2, trainer="cps", semi=semi)
    cfg["sampler"]["batches_per_epoch"] = 2
    fit(load_config(raw=cfg), tmp_path / "run", quiet=True)
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert splits["unlabeled"]["cases"] == 3 and splits["unlabeled"]["split"] == "unlabelled"
    scored = list(csv.DictReader((tmp_path / "run" / "uif_scores.csv").open()))
    assert sorted({r["case_id"] for r in scored}) == [f"FLARE22_Unlabeled_{i:04d}" for i in (1, 2, 3)]
    assert all(0 < float(r["uncertainty"]) < 1 for r in scored)
