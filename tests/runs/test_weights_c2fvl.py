"""The published C2FVL (``c2fvl_published``), its caption attributes and ``covseg weights import --format c2fvl``.

The authors' key names and shapes come from their own model (``tests/assets/weights/c2fvl_keys.json``,
written by ``bench/bench_weights_equivalence_c2fvl.py --write-keys`` from a snapshot of
HUANGLIZI/C2FVL); the equivalence of outputs with their code is measured by that script.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from covseg.data.caption_fields import caption_attributes, caption_fields
from covseg.errors import CovsegError
from covseg.models import build_model
from covseg.runs.formats_c2fvl import c2fvl_key
from covseg.runs.importers import get_format, import_weights
from covseg.text.sides import swap_sides

from tests.helpers import run_cli

KEYS = json.loads((Path(__file__).parents[1] / "assets" / "weights" / "c2fvl_keys.json").read_text())["keys"]
CAPTION = "bilateral pulmonary infection, five infected areas, upper middle lower left lung and middle lower right lung."
QATA = Path(os.environ.get("COVSEG_DATA", "/work/shared/data")) / "qata_cov19_sgseg"


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


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A file as their ``train_model.py`` saves it (trained on several GPUs: ``module.`` names)."""
    path = tmp_path_factory.mktemp("authors") / "best_model-C2FVL.pth.tar"
    state = {f"module.{k}": v for k, v in author_state().items()}
    torch.save(
        {
            "epoch": 57,
            "best_model": True,
            "model": "C2FVL",
            "state_dict": state,
            "val_loss": torch.tensor(0.25),
        },
        path,
    )
    return path


def test_author_keys_map_one_to_one_onto_the_published_model():
    fmt = get_format("c2fvl")
    expected = build_model(fmt.model, **fmt.init_args).state_dict()
    assert len(KEYS) == 635
    assert {c2fvl_key(k) for k in KEYS} == set(expected)
    assert all(list(expected[k].shape) == shape for k, shape in KEYS.items())
    with pytest.raises(KeyError):
        c2fvl_key("pix_module1.conv_avg.weight")  # LViT's, not C2FVL's


def test_caption_attributes_follow_their_read_attr_order():
    # bilateral, number, lupper, lmiddle, llower, rupper, rmiddle, rlower; unscaled
    assert caption_attributes(CAPTION) == [2.0, 5.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    assert caption_attributes("unilateral pulmonary infection, one infected area, lower right lung.") == [
        1.0,
        1.0,
        0,
        0,
        0,
        0,
        0,
        1.0,
    ]
    # a flipped image's caption names the other sides: the zones swap, laterality and count stay
    assert caption_attributes(swap_sides(CAPTION)) == [2.0, 5.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    for free_text in (
        "opacity in the left lung",
        "bilateral pulmonary infection, many infected areas, left lung.",
        None,
        "",
    ):
        assert caption_attributes(free_text) is None


@pytest.mark.skipif(not QATA.is_dir(), reason="real QaTa-COV19 captions not found (set COVSEG_DATA)")
def test_every_qata_caption_reads_as_its_structured_fields():
    rows = []
    for split in ("train", "valid"):
        with (QATA / split / "captions.csv").open(newline="") as f:
            rows += list(csv.DictReader(f))
    assert len(rows) == 2429
    for row in rows:
        fields = {
            "pulmonary_infection": int(row["pulmonary_infection"]),
            "infected_area": int(row["infected_area"]),
            "pseudo_label": json.loads(row["pseudo_label"]),
        }
        assert caption_fields(row["caption"]) == fields, row["name"]


def test_attributes_tile_over_channels_as_their_repeat():
    from covseg.models.c2fvl_published import tile_attributes

    attributes = torch.arange(16.0).view(2, 8)
    tiled = tile_attributes(attributes, 64)
    assert tiled.shape == (2, 64, 1, 1)
    assert torch.equal(tiled[:, :, 0, 0], attributes.view(2, 1, 8).reshape(2, 8).repeat(1, 8))
    assert tiled[1, 19, 0, 0] == 8 + 19 % 8


def test_adapter_refuses_images_without_a_readable_caption_in_one_line():
    from covseg.engine.adapters import text_inputs

    model = build_model("c2fvl_published")
    inputs = text_inputs(model, None, [CAPTION, swap_sides(CAPTION)])
    assert inputs["attributes"].shape == (2, 8) and inputs["attributes"][1, 2] == 0.0
    for texts, message in (
        ([None], "came without text"),
        (["opacity in the left lung"], "cannot read the caption"),
    ):
        with pytest.raises(CovsegError, match=message) as err:
            text_inputs(model, None, texts)
        assert "\n" not in str(err.value)
    with pytest.raises(CovsegError, match=r"224×224 inputs, got \[256, 256\]"):
        model(torch.zeros(1, 3, 256, 256), torch.zeros(1, 8))
    with pytest.raises(CovsegError, match="8 attributes per image, got shape"):
        model(torch.zeros(1, 3, 224, 224), torch.zeros(1, 10))


def test_wrong_keys_and_text_encoder_are_refused_in_one_line(tmp_path, checkpoint):
    state = author_state()
    cases = {
        "lvit.pth": (
            {**state, "pix_module1.conv_avg.weight": torch.zeros(64, 64, 1, 1)},
            r"unknown tensor\(s\), e\.g\. pix_module1\.",
        ),
        "shape.pth": (
            {**state, "process_text2.conv.weight": torch.zeros(128, 10, 1, 1)},
            r"process_text2\.conv\.weight has shape \[128, 10, 1, 1\]",
        ),
    }
    for name, (bad, message) in cases.items():
        torch.save({"state_dict": bad}, tmp_path / name)
        with pytest.raises(CovsegError, match=message) as err:
            import_weights("c2fvl", tmp_path / name, tmp_path / f"run_{name}")
        assert "\n" not in str(err.value) and "not a c2fvl checkpoint" in str(err.value)
    with pytest.raises(CovsegError, match="reads its caption without a text encoder"):
        import_weights("c2fvl", checkpoint, tmp_path / "run_bert", text_encoder=tmp_path)
    assert not any(tmp_path.glob("run_*"))


@pytest.mark.slow  # two forward passes of the 224² network (~6 s each on one idle CPU thread)
def test_imported_run_predicts_from_the_caption_as_the_model_does(checkpoint, tmp_path):
    from covseg.inference.predictor import Predictor
    from covseg.runs.checkpoint import load_checkpoint, model_from_checkpoint
    from covseg.runs.folder import RunFolder

    assert run_cli(["weights", "import", "--format", "c2fvl", "--output", tmp_path / "run", checkpoint]) == 0
    description = RunFolder(tmp_path / "run").description()
    assert (
        description.name == "c2fvl_published"
        and description.text.input == "attributes"
        and description.text.encoder is None
    )
    model = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")).eval()
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(model.state_dict()[k.removeprefix("module.")], v) for k, v in saved.items())
    predictor = Predictor.from_run(tmp_path / "run", device="cpu")
    image = (np.random.default_rng(0).random((224, 224)) * 255).astype(np.uint8)
    probs = predictor.predict_array(image, text=CAPTION).probs
    x = torch.from_numpy(image).float().div(255)[None, None].expand(1, 3, -1, -1)
    with torch.no_grad():
        direct = torch.sigmoid(model(x, torch.tensor([caption_attributes(CAPTION)])))[0, 0].numpy()
    assert probs.shape == (
        224,
        224,
    )  # random weights: a flat map; the bench's controls show the attributes matter
    np.testing.assert_allclose(probs, direct, atol=1e-5)
    with pytest.raises(CovsegError, match="came without text"):
        predictor.predict_array(image)
