"""Semi-supervised baselines on phantoms: the mean teacher (EMA teacher kept, exact resume) and
Semi-Inf-Net with soft pseudo labels."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from covseg.errors import ConfigError
from covseg.training.config import load_config
from covseg.training.semi.mean_teacher import consistency_loss, input_noise
from covseg.training.trainer import build_trainer

from tests.helpers import phantom_dataset, tiny_config


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    return phantom_dataset(tmp_path_factory.mktemp("mt") / "labelled", n=16, size=48, seed=5)


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory) -> Path:
    return phantom_dataset(tmp_path_factory.mktemp("mt_u") / "unlabelled", n=20, size=48, seed=6) / "images"


def _config(labelled: Path, unlabelled: Path, epochs: int, **mean_teacher) -> dict:
    cfg = tiny_config(labelled, size=48, epochs=epochs, optim__lr=5e-3)
    cfg["trainer"] = "mean_teacher"
    cfg["semi"] = {
        "unlabeled": {"root": str(unlabelled.parent), "split": None},
        "mean_teacher": {"rampup_epochs": 0, **mean_teacher},
    }
    return cfg


def _history(run: Path) -> list[dict[str, str]]:
    with (run / "history.csv").open() as f:
        return list(csv.DictReader(f))


def test_consistency_loss_and_noise():
    a = torch.zeros(2, 1, 4, 4)
    assert consistency_loss(a, a) == 0.0
    assert consistency_loss(a, torch.full_like(a, 40.0)) == pytest.approx(0.25)  # (0.5 - 1)^2
    k = torch.zeros(1, 3, 2, 2)
    far = k.clone()
    far[:, 0] = 40.0  # softmax (1/3, 1/3, 1/3) against (1, 0, 0)
    assert consistency_loss(k, far) == pytest.approx(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 3)
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(64, 1, 8, 8)
    noisy = input_noise(x, 0.1, g)
    assert noisy.abs().max() <= 0.2 + 1e-7 and 0.07 < float(noisy.std()) < 0.1
    assert input_noise(x, 0.0, g) is x


@pytest.mark.slow
def test_mean_teacher_teacher_learns_the_phantoms(labelled, unlabelled, tmp_path):
    run = tmp_path / "mt"
    build_trainer(
        load_config(raw=_config(labelled, unlabelled, epochs=20, weight=1.0, decay=0.9)), run, quiet=True
    ).fit()
    hist = _history(run)
    assert all(float(r["train_unlabeled_used"]) == 20 and float(r["train_consistency"]) > 0 for r in hist)
    assert float(hist[-1]["val_dice"]) > 0.5, hist[-1]  # validation scores the teacher
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    teacher, student = ckpt["model_state"], ckpt["train_model_state"]
    assert not all(torch.equal(teacher[k], student[k]) for k in teacher if teacher[k].is_floating_point())
    assert ckpt["ema"]["decay"] == 0.9 and ckpt["ema"]["updates"] == 20 * 3  # 12 training slices, batch 4


def test_mean_teacher_resumes_exactly(labelled, unlabelled, tmp_path):
    cfg = _config(labelled, unlabelled, epochs=3, weight=1.0, decay=0.9)
    full, part = tmp_path / "full", tmp_path / "part"
    build_trainer(load_config(raw=cfg), full, quiet=True).fit()
    build_trainer(load_config(raw=cfg), part, quiet=True).fit(stop_after=2)
    build_trainer(load_config(raw=cfg), part, resume=True, quiet=True).fit()
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(part / "checkpoints" / "last.pt", weights_only=False)
    for key in ("model_state", "train_model_state"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert _history(part)[-1]["val_dice"] == _history(full)[-1]["val_dice"]


def test_teacher_decay_and_weight_average_must_agree(labelled, unlabelled, tmp_path):
    cfg = _config(labelled, unlabelled, epochs=1, decay=0.99)
    cfg["train"]["ema_decay"] = 0.9
    with pytest.raises(ConfigError, match="disagree"):
        build_trainer(load_config(raw=cfg), tmp_path / "bad", quiet=True).fit()


def test_semi_infnet_soft_pseudo_labels(labelled, unlabelled, tmp_path):
    cfg = tiny_config(labelled, size=48, epochs=1)
    cfg["trainer"] = "semi_infnet"
    schedule = {
        "group_size": 5,
        "max_groups": 2,
        "initial_epochs": 1,
        "epochs_per_group": 1,
        "pretrain_epochs": 1,
        "finetune_epochs": 1,
    }
    cfg["semi"] = {
        "unlabeled": {"root": str(unlabelled.parent), "split": None},
        "semi_infnet": {**schedule, "soft_labels": True},
    }
    full = tmp_path / "soft"
    build_trainer(load_config(raw=cfg), full, quiet=True).fit()
    ckpt = torch.load(full / "checkpoints" / "last.pt", weights_only=False)
    pool = ckpt["pool_masks"]
    assert pool.dtype == torch.float16 and pool.shape[0] == 10
    assert float(pool.min()) >= 0.0 and float(pool.max()) <= 1.0
    assert ((pool > 0.01) & (pool < 0.99)).any()  # probabilities, not 0/1 masks
    part = tmp_path / "part"
    build_trainer(load_config(raw=cfg), part, quiet=True).fit(stop_after=2)
    build_trainer(load_config(raw=cfg), part, resume=True, quiet=True).fit()
    resumed = torch.load(part / "checkpoints" / "last.pt", weights_only=False)
    assert torch.equal(resumed["pool_masks"], pool)
    assert all(torch.equal(ckpt["model_state"][k], resumed["model_state"][k]) for k in ckpt["model_state"])
    multi = tiny_config(labelled, size=48, epochs=1)
    multi["trainer"] = "semi_infnet"
    multi["data"]["num_classes"] = 3
    multi["semi"] = {
        "unlabeled": {"root": str(unlabelled.parent), "split": None},
        "semi_infnet": {**schedule, "soft_labels": True},
    }
    with pytest.raises(ConfigError, match="soft_labels"):
        build_trainer(load_config(raw=multi), tmp_path / "multi", quiet=True).fit()
