"""The trainer's parts: one model call shared with the Segmenter, model.json only through RunDescription."""

from __future__ import annotations

import json

import pytest
import torch

from covseg.errors import CovsegError
from covseg.runs.description import RunDescription
from covseg.runs.folder import RunFolder
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


def test_model_json_is_the_run_description_written_by_it(trainer):
    path = trainer.run.path / "model.json"
    written = json.loads(path.read_text())
    expected = RunDescription.from_dict(trainer.model_description())
    assert RunDescription.read(path) == expected
    assert written["name"] == "unet" and written["num_classes"] == 1 and written["format"] == 2
    assert written["init_args"] == trainer.model.init_args
    assert written["preprocessing"] == trainer.preprocessing.to_dict()


def test_model_json_has_no_other_writer_and_bad_values_never_reach_the_file(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    with pytest.raises(ValueError, match="write_description"):
        run.write_json("model.json", {"name": "unet"})
    raw = {"name": "unet", "init_args": {}, "num_classes": 1, "threshold": 1.5}
    with pytest.raises(CovsegError, match="threshold"):
        run.write_description(raw)
    assert not (run.path / "model.json").exists()
    raw["threshold"] = 0.4
    assert run.write_description(raw).threshold == 0.4
    assert RunDescription.read(run.path / "model.json").threshold == 0.4
