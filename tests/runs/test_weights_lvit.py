"""The published LViT (``lvit_published``) and ``covseg weights import --format lvit``.

The authors' key names and shapes come from their own model (``tests/assets/weights/lvit_keys.json``,
written by ``bench/bench_weights_equivalence_lvit.py --write-keys`` from a snapshot of
HUANGLIZI/LViT); the equivalence of outputs with their code is measured by that script. Text
comes from a tiny random BERT folder with LViT's 768-d width (1 layer, made-up vocabulary).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from covseg.errors import CovsegError
from covseg.models import build_model
from covseg.runs.formats_lvit import TEXT_ENCODER_NEEDED, lvit_key
from covseg.runs.importers import get_format, import_weights

from tests.helpers import run_cli

KEYS = json.loads((Path(__file__).parents[1] / "assets" / "weights" / "lvit_keys.json").read_text())["keys"]
WORDS = [
    *("the", "a", "and", "of", "in", "on", "with", "left", "right", "lung", "lungs", "lower", "upper"),
    *("middle", "zone", "zones", "bilateral", "infection", "infected", "opacity"),
]
CAPTION = "bilateral infection in the lower left lung and the upper right lung, opacity in the middle zones"


def author_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The authors' key names and shapes with random values (variances positive)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in KEYS.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(5)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.05
    return state


def tiny_bert(folder: Path, hidden: int = 768) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, ",", "."]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=12,
        intermediate_size=64,
    )
    BertModel(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A file as their ``train_model.py`` saves it: state dict beside epoch, loss and optimiser state."""
    path = tmp_path_factory.mktemp("authors") / "best_model-LViT.pth.tar"
    optimiser = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
        "param_groups": [{"lr": 3e-4, "betas": (0.9, 0.999), "params": [0]}],
    }
    state = {f"module.{k}": v for k, v in author_state().items()}  # saved from nn.DataParallel
    torch.save(
        {
            "epoch": 41,
            "best_model": True,
            "model": "LViT",
            "state_dict": state,
            "val_loss": torch.tensor(0.29),
            "optimizer": optimiser,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("bert") / "bert-768")


def test_author_keys_map_one_to_one_onto_the_published_model():
    fmt = get_format("lvit")
    expected = build_model(fmt.model, **fmt.init_args).state_dict()
    assert len(KEYS) == 541
    assert {lvit_key(k) for k in KEYS} == set(expected)
    assert all(list(expected[k].shape) == shape for k, shape in KEYS.items())
    with pytest.raises(KeyError):
        lvit_key("encoder.stem.weight")


def test_text_tokens_skip_cls_and_pad_to_ten():
    model = build_model("lvit_published")
    tokens = torch.arange(6 * 768, dtype=torch.float32).view(1, 6, 768)
    mask = torch.tensor([[1.0, 1, 1, 1, 1, 0]])
    ten = model.text_input_tokens(tokens, mask)
    assert ten.shape == (1, 10, 768)
    assert (
        torch.equal(ten[0, :4], tokens[0, 1:5]) and not ten[0, 4:].any()
    )  # padding and missing tokens are zeros
    with pytest.raises(CovsegError, match=r"768-d token features .* got 384-d"):
        model.text_input_tokens(torch.zeros(1, 12, 384), torch.ones(1, 12))
    with pytest.raises(CovsegError, match="came without text"):
        model.text_input_tokens(torch.zeros(2, 12, 768), torch.tensor([[1.0] * 12, [0.0] * 12]))
    with pytest.raises(CovsegError, match=r"224×224 inputs, got \[256, 256\]"):
        model(torch.zeros(1, 3, 256, 256), torch.zeros(1, 12, 768))


def test_wrong_keys_and_shapes_are_refused_in_one_line(tmp_path):
    state = author_state()
    cases = {
        "minilm_width.pth": (
            {**state, "text_module4.weight": torch.zeros(512, 384, 3)},
            r"text_module4\.weight has shape \[512, 384, 3\], the model needs \[512, 768, 3\]",
        ),
        "missing.pth": (
            {k: v for k, v in state.items() if not k.startswith("upVit3.")},
            r"tensor\(s\) missing, e\.g\. upVit3\.",
        ),
        "covseg_lvit.pth": (
            build_model("lvit", text_dim=768).state_dict(),
            r"unknown tensor\(s\), e\.g\. encoder\.",
        ),
    }
    for name, (bad, message) in cases.items():
        torch.save({"state_dict": bad}, tmp_path / name)
        with pytest.raises(CovsegError, match=message) as err:
            import_weights("lvit", tmp_path / name, tmp_path / f"run_{name}")
        assert "\n" not in str(err.value) and "not a lvit checkpoint" in str(err.value)
    assert not any(tmp_path.glob("run_*"))


def test_import_without_a_bert_folder_refuses_to_predict(checkpoint, tmp_path, capsys):
    from covseg.inference.predictor import Predictor
    from covseg.runs.folder import RunFolder

    assert run_cli(["weights", "import", "--format", "lvit", "--output", tmp_path / "run", checkpoint]) == 0
    assert "--text-encoder DIR" in capsys.readouterr().err  # the note says what the run still needs
    run = tmp_path / "run"
    description = RunFolder(run).description()
    assert description.name == "lvit_published" and description.preprocessing.size == (224, 224)
    assert description.text.encoder["name"] == TEXT_ENCODER_NEEDED and description.text.encoder["dim"] == 768
    with pytest.raises(CovsegError, match=r"--text-encoder DIR\).*folder not found") as err:
        Predictor.from_run(run)
    assert "\n" not in str(err.value)
    with pytest.raises(CovsegError, match="reads 768-d token features, this encoder gives 48-d"):
        import_weights(
            "lvit", checkpoint, tmp_path / "narrow", text_encoder=tiny_bert(tmp_path / "bert-48", hidden=48)
        )
    with pytest.raises(CovsegError, match="format infnet reads no text"):
        import_weights("infnet", checkpoint, tmp_path / "x", text_encoder=tmp_path / "bert-48")


@pytest.mark.slow  # two forward passes of the 224² network (~6 s each on one CPU thread)
def test_imported_run_predicts_with_text_as_the_model_does(checkpoint, bert, tmp_path):
    from covseg.inference.predictor import Predictor
    from covseg.runs.checkpoint import load_checkpoint, model_from_checkpoint

    assert (
        run_cli(
            [
                "weights",
                "import",
                "--format",
                "lvit",
                "--text-encoder",
                bert,
                "--output",
                tmp_path / "run",
                checkpoint,
            ]
        )
        == 0
    )
    predictor = Predictor.from_run(tmp_path / "run", device="cpu")
    assert predictor.text_encoder.dim == 768 and predictor.text_encoder.max_length == 25
    image = (np.random.default_rng(0).random((224, 224)) * 255).astype(np.uint8)
    probs = predictor.predict_array(image, text=CAPTION).probs
    features = predictor.text_encoder.encode([CAPTION])
    assert int(features.mask.sum()) == 20  # [CLS], 17 words and a comma, [SEP]
    model = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")).eval()
    state = {
        k.removeprefix("module."): v
        for k, v in torch.load(checkpoint, weights_only=True)["state_dict"].items()
    }
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    x = torch.from_numpy(image).float().div(255)[None, None].expand(1, 3, -1, -1)
    with torch.no_grad():
        direct = torch.sigmoid(model(x, features.tokens, features.mask))[0, 0].numpy()
    assert (
        probs.shape == (224, 224) and np.isfinite(probs).all()
    )  # random weights: a flat map; bench/ checks real outputs
    np.testing.assert_allclose(probs, direct, atol=1e-5)
    with pytest.raises(CovsegError, match="came without text"):
        predictor.predict_array(image)  # the published LViT has no image-only mode
