"""A new file format and a new semi-supervised method are each one file: a toy of each, registered
from this test file with no covseg module touched, is read by ``covseg.data``, predicted by
``covseg predict``, paired by ``covseg evaluate`` and trained from the config."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from covseg.data.formats import FileFormat, register_format, suffixes
from covseg.data.imageio import IMAGE_SUFFIXES, read_image, read_mask, write_mask
from covseg.errors import DataError
from covseg.registry import FILE_FORMATS, TRAINERS
from covseg.training.config import load_config
from covseg.training.trainer import Trainer, build_trainer

from tests.helpers import phantom_dataset, run_cli, tiny_config

OLD_RUN = Path(__file__).resolve().parents[1] / "assets" / "run_v0_1"  # a saved 32x32 run that predicts in milliseconds


# ------------------------------------------------------------------------------------ a toy format
def write_toy(path: Path, arr: np.ndarray) -> Path:
    """The toy format: a text file, ``toy H W`` then one line of numbers per row."""
    arr = np.asarray(arr, dtype=np.float64)
    rows = "\n".join(" ".join(repr(float(v)) for v in row) for row in arr)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"toy {arr.shape[0]} {arr.shape[1]}\n{rows}\n", encoding="utf-8")
    return path


def read_toy(path: Path) -> np.ndarray:
    """Read a toy file; a bad one is one line naming the file."""
    try:
        head, *rows = Path(path).read_text(encoding="utf-8").splitlines()
        magic, h, w = head.split()
        arr = np.array([[float(v) for v in r.split()] for r in rows], dtype=np.float32)
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable toy file ({type(exc).__name__})", Path(path)) from None
    if magic != "toy" or arr.shape != (int(h), int(w)):
        raise DataError("not a toy file", Path(path))
    return arr


@pytest.fixture
def toy_format():
    register_format(FileFormat("toy", (".toy",), "image", read_toy, write=write_toy, description="toy text arrays"))
    yield
    FILE_FORMATS.unregister("toy")


def test_the_suffix_lists_are_derived_from_the_registry_and_agree():
    from covseg.data.layouts import FILE_SUFFIXES as LAYOUT_SUFFIXES
    from covseg.metrics.evaluation import FILE_SUFFIXES, VOLUME_SUFFIXES

    assert IMAGE_SUFFIXES == (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
    assert VOLUME_SUFFIXES == (".nii", ".nii.gz")
    assert (*IMAGE_SUFFIXES, ".npy", ".nii", ".nii.gz") == FILE_SUFFIXES
    assert (*IMAGE_SUFFIXES, ".dcm") == LAYOUT_SUFFIXES
    assert set(suffixes()) == {*IMAGE_SUFFIXES, ".npy", ".dcm", ".nii", ".nii.gz"}
    with pytest.raises(ValueError, match="already 'png'"):
        register_format(FileFormat("png2", (".png",), "image", read_toy))


def test_covseg_data_reads_a_registered_format(tmp_path, toy_format):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 17)).astype(np.float32)
    mask = (rng.random((12, 17)) > 0.5).astype(np.float32)
    assert ".toy" in suffixes("image") and ".toy" in suffixes(listed=True)
    np.testing.assert_array_equal(read_image(write_toy(tmp_path / "a.toy", image)), image)
    np.testing.assert_array_equal(read_image(tmp_path / "a.toy", channels=3), np.repeat(image[..., None], 3, -1))
    np.testing.assert_array_equal(read_mask(write_toy(tmp_path / "m.toy", mask)), mask.astype(np.uint8))
    (tmp_path / "bad.toy").write_text("toy 2 2\n1 2\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"not a toy file"):
        read_image(tmp_path / "bad.toy")


def _per_case(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_predict_takes_a_registered_format(tmp_path, toy_format, capsys):
    image = np.load(OLD_RUN / "probe_image.npy")
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    write_toy(tmp_path / "in_toy" / "a.toy", image)
    (tmp_path / "in_npy").mkdir()
    np.save(tmp_path / "in_npy" / "a.npy", image)
    for name in ("toy", "npy"):
        code = run_cli(["predict", "-m", run, "-i", tmp_path / f"in_{name}", "-o", tmp_path / f"out_{name}", "-q", "--device", "cpu"])
        assert code == 0, capsys.readouterr().err
    # the toy file is predicted exactly as the same array given as .npy
    for sub in ("masks", "probs"):
        assert (tmp_path / "out_toy" / sub / "a.png").read_bytes() == (tmp_path / "out_npy" / sub / "a.png").read_bytes()



def test_evaluate_pairs_a_registered_format(tmp_path, toy_format, capsys):
    yy, xx = np.mgrid[:40, :40]
    pred = (yy - 18) ** 2 + (xx - 20) ** 2 <= 64
    gt = np.roll(pred, 3, axis=1)
    write_toy(tmp_path / "pred_toy" / "a.toy", pred)
    write_mask(tmp_path / "pred_png" / "a.png", pred.astype(np.uint8))
    write_toy(tmp_path / "gt_toy" / "a.toy", gt)
    write_mask(tmp_path / "gt_png" / "a.png", gt.astype(np.uint8))
    for name in ("toy", "png"):
        code = run_cli(["evaluate", "--pred", tmp_path / f"pred_{name}", "--gt", tmp_path / f"gt_{name}", "--out", tmp_path / f"ev_{name}"])
        assert code == 0, capsys.readouterr().err
    rows = _per_case(tmp_path / "ev_toy" / "per_case.csv")
    assert [(r["case_id"], r["pred_file"], r["gt_file"]) for r in rows] == [("a", "a.toy", "a.toy")]
    files = ("pred_file", "gt_file")
    same = [{k: v for k, v in r.items() if k not in files} for r in _per_case(tmp_path / "ev_png" / "per_case.csv")]
    assert [{k: v for k, v in r.items() if k not in files} for r in rows] == same  # scored as the same masks in PNG
    dice = 2 * (pred & gt).sum() / (pred.sum() + gt.sum())
    assert 0 < dice < 1 and float(rows[0]["dice"]) == pytest.approx(dice, rel=1e-9)


# ---------------------------------------------------------------------- a toy semi-supervised method
class FlipConsistencyTrainer(Trainer):
    """Toy semi-supervised method: the supervised loss plus ``extra.flip_weight`` times the squared
    difference between the prediction of a batch and the mirrored prediction of the mirrored batch
    (a consistency term that needs no labels)."""

    consistency: list[float] = []

    def training_step(self, batch, epoch, step, aux_generator):
        loss, parts = super().training_step(batch, epoch, step, aux_generator)
        plain = self.forward_train(self.model, {"image": batch["image"]})["logits"]
        mirrored = self.forward_train(self.model, {"image": batch["image"].flip(-1)})["logits"]
        term = ((torch.sigmoid(plain) - torch.sigmoid(mirrored).flip(-1)) ** 2).mean()
        FlipConsistencyTrainer.consistency.append(float(term.detach()))
        return loss + float(self.cfg.extra["flip_weight"]) * term, {**parts, "consistency": float(term.detach())}


@pytest.fixture
def toy_trainer():
    TRAINERS.register("toy_flip", FlipConsistencyTrainer)
    FlipConsistencyTrainer.consistency = []
    yield
    TRAINERS.unregister("toy_flip")


def _one_epoch(tmp_path: Path, data: Path, name: str, **raw_extra) -> tuple[Trainer, dict[str, float]]:
    raw = tiny_config(data, size=32, epochs=1, train__batch_size=4, **raw_extra)
    trainer = build_trainer(load_config(raw=raw), tmp_path / name, quiet=True)
    trainer.setup()
    trainer.start_epoch = 0
    return trainer, trainer.train_epoch(0, lambda info: None)


def test_a_toy_semi_supervised_method_trains_one_epoch_from_the_config(tmp_path, toy_trainer):
    data = phantom_dataset(tmp_path / "data", n=12, size=32)
    base, _ = _one_epoch(tmp_path, data, "supervised")
    off, _ = _one_epoch(tmp_path, data, "off", trainer="toy_flip", extra={"flip_weight": 0.0})
    assert isinstance(off, FlipConsistencyTrainer)
    assert len(FlipConsistencyTrainer.consistency) == off.steps_per_epoch
    # weight 0: the hook adds nothing, so the weights are the supervised trainer's, bit for bit
    for (name, a), b in zip(base.model.named_parameters(), off.model.parameters()):
        assert torch.equal(a, b), name
    on, parts = _one_epoch(tmp_path, data, "on", trainer="toy_flip", extra={"flip_weight": 5.0})
    assert parts["consistency"] > 0 and np.isfinite(parts["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(base.model.parameters(), on.model.parameters()))
