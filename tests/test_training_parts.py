"""The trainer's parts: one model call shared with the Segmenter."""

from __future__ import annotations

import pytest
import torch

from covseg.training.config import load_config
from covseg.training.trainer import build_trainer

from tests.helpers import phantom_dataset, tiny_config


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    data = phantom_dataset(root / "data", n=12, size=32)
    t = build_trainer(load_config(raw=tiny_config(data, size=32, epochs=1)), root / "run", quiet=True)
    t.setup()
    return t


def test_training_and_prediction_call_the_model_the_same_way(trainer):
    batch = trainer.make_batch(trainer.train_data, torch.arange(4), torch.Generator().manual_seed(0))
    model = trainer.model.eval()
    with torch.no_grad():
        trained = trainer.forward_train(model, batch, sync=False)["logits"]
        predicted = trainer.segmenter(model).forward(batch["image"], [{"text": None}] * 4)
    assert trained.shape == (4, 1, 32, 32)
    assert torch.equal(trained.float(), predicted)
