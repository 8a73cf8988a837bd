"""``clipseg``: a tiny random CLIPSeg saved with ``save_pretrained`` and loaded back through the
same code path a user's real weights folder takes; forward/backward, checkpoints, training, zero-shot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from covseg.data.synthetic_text import write_side_task
from covseg.errors import CovsegError
from covseg.models import build_model

from tests.clipseg_fixture import save_tiny_clipseg

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_tiny_clipseg(tmp_path_factory.mktemp("clipseg") / "tiny-clipseg", image_size=64)


def test_saved_folder_has_what_real_weights_have(weights):
    names = {p.name for p in weights.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert json.loads((weights / "config.json").read_text())["model_type"] == "clipseg"


def test_wrapper_equals_hugging_face_and_handles_any_size(weights):
    from transformers import CLIPSegForImageSegmentation

    model = build_model("clipseg", pretrained_dir=str(weights), in_channels=3).eval()
    assert model.image_size == 64 and model.text_input == "ids"
    ref = CLIPSegForImageSegmentation.from_pretrained(str(weights), local_files_only=True).eval()
    ids, mask = model.tokenize(["left lung opacity", "right"])
    assert ids.shape[0] == 2 and mask[1].sum() < mask[0].sum()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model(x, ids, mask)
        theirs = ref(pixel_values=x, input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(ours[:, 0], theirs)
        # any input size (resized to the ViT's size and back), grey input, one prompt for a batch
        grey = build_model("clipseg", pretrained_dir=str(weights), in_channels=1).eval()
        out = grey(torch.randn(3, 1, 50, 70), *grey.tokenize(["lesion"]))
        assert out.shape == (3, 1, 50, 70)
        assert grey(torch.randn(1, 1, 64, 64)).shape == (1, 1, 64, 64)  # no prompt: the empty prompt
        # the prompt matters
        a = model(x[:1], *model.tokenize(["left lung opacity"]))
        b = model(x[:1], *model.tokenize(["a completely different prompt"]))
        assert (a - b).abs().max() > 1e-5


def test_forward_backward_trains_the_decoder_only(weights):
    model = build_model("clipseg", pretrained_dir=str(weights), in_channels=1).train()
    ids, mask = model.tokenize(["infection", "infection of the right lung"])
    out = model.forward_train(torch.randn(2, 1, 64, 64), ids, mask)
    target = (torch.rand(2, 1, 64, 64) > 0.5).float()
    torch.nn.functional.binary_cross_entropy_with_logits(out["logits"], target).backward()
    decoder_grads = [p.grad for p in model.net.decoder.parameters()]
    assert all(g is not None for g in decoder_grads) and sum(float(g.abs().sum()) for g in decoder_grads) > 0
    assert all(p.grad is None and not p.requires_grad for p in model.net.clip.parameters())


def test_checkpoint_holds_the_decoder_and_rebuilds_exactly(weights):
    from covseg.runs.checkpoint import model_from_checkpoint

    model = build_model("clipseg", pretrained_dir=str(weights), in_channels=1)
    with torch.no_grad():
        for p in model.net.decoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    state = model.state_dict()
    assert state and all(not k.startswith("net.clip.") for k in state)
    rebuilt = model_from_checkpoint({"model_spec": {"name": "clipseg", "init_args": model.init_args}, "model_state": state})
    model.eval()
    x = torch.randn(1, 1, 64, 64)
    ids, mask = model.tokenize(["lesion"])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, ids, mask), model(x, ids, mask))
    broken = dict(state)
    broken.pop(next(iter(broken)))
    with pytest.raises(RuntimeError, match="does not match"):
        model.load_state_dict(broken)


def test_missing_weights_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CovsegError, match="CLIPSeg folder not found"):
        build_model("clipseg", pretrained_dir=str(tmp_path / "nowhere"))
    with pytest.raises(CovsegError, match="pretrained_dir"):
        build_model("clipseg")


def test_finetune_with_text_trainer_then_predict(weights, tmp_path):
    from covseg.inference.loading import load_predictor
    from covseg.training.config import load_config
    from covseg.training.trainer import build_trainer

    root = write_side_task(tmp_path / "side", n=12, size=64)
    raw = {
        "name": "clipseg_side",
        "trainer": "text",
        "data": {"root": str(root), "folds": 3, "fold": 0},
        "preprocess": {"channels": 1, "size": [64, 64], "mean": [0.45], "std": [0.27]},
        "augment": {"hflip": 0.0},
        "model": {"name": "clipseg", "params": {"pretrained_dir": str(weights)}},
        "train": {"epochs": 2, "batch_size": 4, "threads": 1},
    }
    trainer = build_trainer(load_config(raw=raw), tmp_path / "run", quiet=True)
    before = build_model("clipseg", pretrained_dir=str(weights), in_channels=1).state_dict()  # as the folder has it
    trainer.fit()
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the decoder trained
    desc = json.loads((tmp_path / "run" / "model.json").read_text())
    assert desc["text"]["input"] == "ids" and desc["text"]["encoder"] is None
    predictor = load_predictor(tmp_path / "run")
    image = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(root / "images" / "case_000.png"))
    pred = predictor.predict_image(image, text="opacity in the left lung")
    assert pred.probs.shape == image.shape and pred.labels.shape == image.shape


def test_zero_shot_run_folder_and_cli_predict(weights, tmp_path, capsys):
    from PIL import Image

    from covseg.cli.main import main
    from covseg.inference.zero_shot import make_clipseg_run

    run = make_clipseg_run(weights, tmp_path / "zero_shot", size=64)
    desc = json.loads((run / "model.json").read_text())
    assert desc["name"] == "clipseg" and desc["text"]["input"] == "ids"
    image = tmp_path / "cxr.png"
    Image.fromarray((np.random.default_rng(0).random((40, 56)) * 255).astype(np.uint8)).save(image)
    assert run_cli(main, "predict", "--model", run, "--input", image, "--output", tmp_path / "out", "--text", "lung opacity", "-q") == 0
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "cxr.png"))
    assert mask.shape == (40, 56)
    capsys.readouterr()
    # prompt models need a prompt, unless image-only is asked for
    assert run_cli(main, "predict", "--model", run, "--input", image, "--output", tmp_path / "out2", "--strict", "-q") == 2
    assert "cxr.png" in capsys.readouterr().err
    assert run_cli(main, "predict", "--model", run, "--input", image, "--output", tmp_path / "out3", "--missing-text", "image-only", "-q") == 0
    assert (tmp_path / "out3" / "masks" / "cxr.png").exists()


def run_cli(main, *args) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.mark.parametrize("model", ["c2fvl", "clipseg"])
def test_cli_train_and_predict(model, weights, tmp_path):
    """``covseg train --config`` and ``covseg predict --text`` for the other two text models."""
    import yaml
    from PIL import Image

    from covseg.cli.main import main

    root = write_side_task(tmp_path / "side", n=9, size=64)
    if model == "clipseg":
        params = {"pretrained_dir": str(weights)}
        text = {}
    else:
        params = {"encoder": "resnet", "encoder_kwargs": {"widths": [8, 8, 8, 16, 16]}, "decoder_widths": [8, 8, 8, 8], "align_dim": 8, "heads": 2}
        text = {"encoder": "embedding", "embed_dim": 16}
    cfg = {
        "name": model,
        "trainer": "text",
        "data": {"root": str(root), "folds": 3, "fold": 0},
        "preprocess": {"channels": 1, "size": [64, 64]},
        "model": {"name": model, "params": params},
        "train": {"epochs": 1, "batch_size": 3, "threads": 1},
        "extra": {"text": text},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert run_cli(main, "train", "--config", tmp_path / "cfg.yaml", "--output", tmp_path / "run", "--quiet") == 0
    image = root / "images" / "case_000.png"
    out = tmp_path / "pred"
    assert run_cli(main, "predict", "--model", tmp_path / "run", "--input", image, "--output", out, "--text", "opacity in the left lung", "-q") == 0
    assert np.asarray(Image.open(out / "masks" / "case_000.png")).shape == (64, 64)
