"""Weight averaging (``train.ema_decay``): the update rule, what checkpoints keep, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from covseg.training.averaging import WeightAverage, ema_decay_at
from covseg.training.config import load_config

from tests.helpers import phantom_dataset, tiny_config


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return phantom_dataset(tmp_path_factory.mktemp("phantoms") / "data", n=16, size=48)


def _ckpt(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def test_update_follows_the_warmed_up_ema_rule_and_copies_integer_buffers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    average = WeightAverage(model, decay=0.9)
    expected = {k: v.clone().float() for k, v in model.state_dict().items()}
    for step in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(2, 1, 8, 8))  # moves running stats and num_batches_tracked
        d = min(0.9, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            expected[k] = v.float() if not v.is_floating_point() else d * expected[k] + (1 - d) * v
        average.update(model)
    got = average.module.state_dict()
    for k, v in expected.items():
        assert torch.allclose(got[k].float(), v, atol=1e-6), k
    assert got["1.num_batches_tracked"].item() == 5
    assert average.updates == 5
    assert ema_decay_at(0.999, 0) == pytest.approx(0.1) and ema_decay_at(0.5, 1000) == 0.5
    with pytest.raises(ValueError):
        WeightAverage(model, decay=1.0)


def test_checkpoint_keeps_the_average_for_predict_and_raw_weights_for_resume(phantoms, tmp_path):
    from covseg.api import fit

    fit(load_config(raw=tiny_config(phantoms, size=48, epochs=2, train__ema_decay=0.8)), tmp_path / "ema", quiet=True)
    ckpt = _ckpt(tmp_path / "ema")
    assert ckpt["ema"]["updates"] == 2 * 3  # 12 training cases of 16 (4 folds), batch 4: 3 steps an epoch
    averaged, raw = ckpt["model_state"], ckpt["train_model_state"]
    assert averaged.keys() == raw.keys()
    assert any(not torch.equal(averaged[k], raw[k]) for k in raw if raw[k].is_floating_point())
    # without EMA the checkpoint holds only the trained weights, and they equal the EMA run's raw ones
    fit(load_config(raw=tiny_config(phantoms, size=48, epochs=2)), tmp_path / "plain", quiet=True)
    plain = _ckpt(tmp_path / "plain")
    assert "train_model_state" not in plain and "ema" not in plain
    assert all(torch.equal(plain["model_state"][k], raw[k]) for k in raw)
    # predict loads model_state: the average
    from covseg.inference.loading import load_predictor

    state = load_predictor(tmp_path / "ema", "last").model.state_dict()
    assert all(torch.equal(state[k].float(), averaged[k].float()) for k in averaged)


def test_a_resumed_ema_run_ends_where_an_uninterrupted_one_ends(phantoms, tmp_path):
    from covseg.api import fit

    cfg = tiny_config(phantoms, size=48, epochs=3, train__ema_decay=0.8)
    fit(load_config(raw=cfg), tmp_path / "full", quiet=True)
    fit(load_config(raw=cfg), tmp_path / "part", quiet=True, stop_after=1)
    fit(load_config(raw=cfg), tmp_path / "part", quiet=True, resume=True)
    full, part = _ckpt(tmp_path / "full"), _ckpt(tmp_path / "part")
    assert full["ema"] == part["ema"]
    for key in ("model_state", "train_model_state"):
        assert all(torch.allclose(full[key][k].float(), part[key][k].float(), atol=1e-6) for k in full[key]), key
