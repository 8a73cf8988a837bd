"""Semi-Inf-Net's published schedule (``configs/semi_infnet_paper.yaml``) on phantoms: rounds, pool, relabelling, resume."""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import pytest
import torch

from covseg.training.config import load_config, resolve_config_path
from covseg.training.semi.common import hard_targets
from covseg.training.trainer import build_trainer

from tests.helpers import phantom_dataset, tiny_config


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    return phantom_dataset(tmp_path_factory.mktemp("sip") / "labelled", n=12, size=48, seed=5)


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory) -> Path:
    return phantom_dataset(tmp_path_factory.mktemp("sip_u") / "unlabelled", n=15, size=48, seed=6)


def _paper_like(labelled: Path, unlabelled: Path, **semi) -> dict:
    """The published schedule's settings (hybrid rounds, fresh Adam at 3x, own batch size) at phantom scale."""
    cfg = tiny_config(
        labelled, size=48, epochs=1, data__folds=3, schedule={"name": "constant", "warmup_epochs": 0}
    )
    cfg["trainer"] = "semi_infnet"
    cfg["optim"] = {"name": "adam", "lr": 1e-3, "weight_decay": 0.0}
    cfg["semi"] = {
        "unlabeled": {"root": str(unlabelled), "split": None},
        "semi_infnet": {
            "group_size": 5,
            "initial_epochs": 1,
            "epochs_per_group": 2,
            "round_data": "hybrid",
            "fresh_optimizer_per_group": True,
            "group_lr_scale": 3.0,
            "group_batch_size": 2,
            "pretrain_data": "hybrid",
            "pretrain_epochs": 1,
            "finetune_epochs": 1,
            "finetune_lr_scale": 1.0,
            **semi,
        },
    }
    return cfg


def _pool(run: Path) -> list[float]:
    with (run / "history.csv").open() as f:
        return [float(r["train_pool"]) for r in csv.DictReader(f)]


def test_rounds_add_five_slices_labelled_by_the_current_model(labelled, unlabelled, tmp_path):
    trainer = build_trainer(load_config(raw=_paper_like(labelled, unlabelled)), tmp_path / "run", quiet=True)
    snapshots: list[dict[str, torch.Tensor]] = []
    steps: list[tuple[int, int, int, float]] = []  # (epoch, batch size, optimiser id, lr) of every step
    label, step = trainer.pseudo_label, trainer.training_step

    def spy_label(indices):
        snapshots.append(copy.deepcopy(trainer.model.state_dict()))
        return label(indices)

    def spy_step(batch, epoch, i, gen):
        steps.append(
            (epoch, batch["image"].shape[0], id(trainer.optimizer), trainer.optimizer.param_groups[0]["lr"])
        )
        return step(batch, epoch, i, gen)

    trainer.pseudo_label, trainer.training_step = spy_label, spy_step
    trainer.fit()
    n_lab, n_unl = len(trainer.train_data), len(trainer.unlabeled)
    assert (n_lab, n_unl) == (8, 15)
    assert [len(g) for g in trainer.groups] == [5, 5, 5]  # 15 / 5 rounds, until every slice is labelled
    assert sorted(torch.cat(trainer.groups).tolist()) == list(range(15))
    assert _pool(tmp_path / "run") == [
        0,
        5,
        5,
        10,
        10,
        15,
        15,
        15,
        15,
    ]  # labelled start, 3 rounds x 2, pretrain, fine-tune

    # Each round's 5 labels are the predictions of the model as it was when the round began.
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert len(snapshots) == 3
    assert any(not torch.equal(snapshots[0][k], snapshots[1][k]) for k in snapshots[0])  # trained in between
    model = trainer.new_model().eval()
    for g, weights in enumerate(snapshots):
        model.load_state_dict(weights)
        with torch.inference_mode():
            expected = hard_targets(model(trainer.as_input(trainer.unlabeled.images[trainer.groups[g]]))).to(
                torch.uint8
            )
        assert torch.equal(ckpt["pool_masks"][5 * g : 5 * g + 5], expected)

    # Hybrid rounds: labelled + pool as one set in batches of 2, so epochs grow by 5 slices a round;
    # every round a new optimiser at 3x the base rate; the labelled start and the last stages at batch 4.
    per_epoch = {e: [s for s in steps if s[0] == e] for e in range(9)}
    for g in range(3):
        for e in (1 + 2 * g, 2 + 2 * g):
            assert len(per_epoch[e]) == math.ceil((n_lab + 5 * (g + 1)) / 2)
            assert {s[1] for s in per_epoch[e]} == {2}
            assert all(s[3] == pytest.approx(3e-3) for s in per_epoch[e])
        assert len({s[2] for s in per_epoch[1 + 2 * g] + per_epoch[2 + 2 * g]}) == 1
    assert len({per_epoch[e][0][2] for e in (1, 3, 5)}) == 3  # fresh each round
    assert len(per_epoch[7]) == math.ceil((n_lab + 15) / 4)  # pretrain on labelled + pool
    assert len(per_epoch[8]) == math.ceil(n_lab / 4)  # fine-tune on the labels
    assert all(s[3] == pytest.approx(1e-3) for s in per_epoch[7] + per_epoch[8])


def test_resume_mid_schedule_is_exact_with_soft_labels_and_multiscale(labelled, unlabelled, tmp_path):
    cfg = _paper_like(labelled, unlabelled, soft_labels=True, max_groups=2)
    cfg["train"]["multiscale_rates"] = [0.75, 1.0, 1.25]
    build_trainer(load_config(raw=cfg), tmp_path / "full", quiet=True).fit()
    part = tmp_path / "part"
    build_trainer(load_config(raw=cfg), part, quiet=True).fit(stop_after=2)  # cut inside round 1
    build_trainer(load_config(raw=cfg), part, resume=True, quiet=True).fit(
        stop_after=1
    )  # cut at a round's start
    build_trainer(load_config(raw=cfg), part, resume=True, quiet=True).fit()
    wf = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=False)
    wp = torch.load(part / "checkpoints" / "last.pt", weights_only=False)
    assert wf["pool_index"] == wp["pool_index"] and len(wf["pool_index"]) == 10
    assert wf["pool_masks"].dtype == torch.float16 and torch.equal(wf["pool_masks"], wp["pool_masks"])
    assert float(((wf["pool_masks"] > 0) & (wf["pool_masks"] < 1)).float().mean()) > 0  # soft targets
    assert all(torch.equal(wf["model_state"][k], wp["model_state"][k]) for k in wf["model_state"])
    assert _pool(tmp_path / "full") == _pool(part)


def test_the_paper_config_expresses_the_published_schedule(monkeypatch):
    monkeypatch.setenv("COVSEG_DATA", "/nonexistent")
    cfg = load_config(resolve_config_path("semi_infnet_paper"))
    s = cfg.semi.semi_infnet
    rounds = math.ceil(1600 / s.group_size)
    assert rounds == 320 and s.max_groups is None
    assert s.initial_epochs + rounds * s.epochs_per_group + s.pretrain_epochs + s.finetune_epochs == 3030
    assert (s.round_data, s.pretrain_data, s.fresh_optimizer_per_group) == ("hybrid", "hybrid", True)
    assert cfg.optim.lr * s.group_lr_scale == pytest.approx(3e-4) and s.group_batch_size == 16
    assert cfg.train.multiscale_rates == [0.75, 1.0, 1.25] and cfg.train.batch_size == 24
