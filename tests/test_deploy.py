"""Deployment exports (issue 28): a text-guided run to ONNX with its prompts' text inputs, a run as a
MONAI bundle that ``monai.bundle`` validates and runs, and the documented plain onnxruntime snippet."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from covseg.errors import CovsegError
from covseg.training.config import load_config
from covseg.training.trainer import build_trainer

from tests.helpers import phantom_dataset, run_cli, tiny_config

pytest.importorskip("onnxruntime")
SCHEMA = Path(__file__).parent / "data" / "monai_bundle_metadata_schema.json"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def run2d(tmp_path_factory) -> Path:
    data = phantom_dataset(tmp_path_factory.mktemp("deploy") / "data", n=12, size=48, seed=4)
    run = data.parent / "run"
    build_trainer(load_config(raw=tiny_config(data, size=48, epochs=2)), run, quiet=True).fit()
    return run


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 1.0 if not a.any() and not b.any() else 2.0 * (a & b).sum() / (a.sum() + b.sum())


# ------------------------------------------------------------------------------------ text-guided ONNX


@pytest.mark.parametrize("model", ["lvit", pytest.param("c2fvl", marks=pytest.mark.slow), pytest.param("cris", marks=pytest.mark.slow)])
def test_a_text_guided_run_exports_with_its_prompts_and_the_onnx_engine_matches_torch(tmp_path, model):
    """Text-guided runs were refused by export. Now the ONNX file takes ``image``, ``text_tokens`` and
    ``text_mask``, ``text_inputs.npz`` holds each exported prompt's features, and ``--engine onnx``
    gives torch's soft maps (batches of different prompts, flip TTA, and through the CLI)."""
    from covseg.data.imageio import read_image, read_mask
    from covseg.inference.exported import load_exported
    from covseg.inference.predictor import Predictor

    from tests.test_text_sources import make_folder_json, text_config

    root, _, texts = make_folder_json(tmp_path / "data")
    run = tmp_path / "run"
    raw = text_config(root, model=model)
    if model == "cris":
        raw["model"]["params"] = {"encoder": "resnet", "encoder_kwargs": {"widths": [8, 8, 8, 16, 16]}, "dim": 16, "heads": 2, "layers": 1, "proj_dim": 8}
    build_trainer(load_config(raw=raw), run, quiet=True).fit()
    prompts = [texts["c0"], texts["c3"]]
    out = tmp_path / "export"
    assert run_cli(["export", "-m", str(run), "--format", "onnx", "-o", str(out), "--prompt", prompts[0], "--prompt", prompts[1]]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["text"]["inputs"] == ["text_tokens", "text_mask"] and set(prompts) <= set(card["text"]["prompts"])
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "text_tokens", "text_mask"]

    exported = load_exported(out, "onnx")
    reference = Predictor.from_run(run, device="cpu")
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, size=s).astype(np.float32) for s in ((32, 32), (32, 32), (41, 37))]
    for tta in (False, True):
        got = exported.predict_arrays(images, tta_flip=tta, texts=[prompts[0], prompts[1], None])
        want = reference.predict_arrays(images, tta_flip=tta, texts=[prompts[0], prompts[1], None])
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=1e-4)
    with_text, without = (exported.predict_arrays(images[:1], texts=[t])[0] for t in (prompts[0], None))
    assert not np.allclose(with_text, without, atol=1e-4)  # the text reaches the exported network
    with pytest.raises(CovsegError, match=r"not among the \d+ prompts this model was exported with"):
        exported.predict_arrays(images[:1], texts=["a prompt never exported"])

    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(sorted((root / "images").iterdir())[0], inputs / "x.png")
    for engine, model_dir, dest in (("onnx", out, "ox"), ("torch", run, "pt")):
        assert run_cli(["predict", "--engine", engine, "-m", str(model_dir), "-i", str(inputs), "-o", str(tmp_path / dest), "--text", prompts[0], "-q"]) == 0
    np.testing.assert_array_equal(read_mask(tmp_path / "ox" / "masks" / "x.png"), read_mask(tmp_path / "pt" / "masks" / "x.png"))
    assert np.abs(read_image(tmp_path / "ox" / "probs" / "x.png").astype(int) - read_image(tmp_path / "pt" / "probs" / "x.png").astype(int)).max() <= 1
    # without --prompt a text-guided run cannot be exported; --prompt on an image-only run is refused
    with pytest.raises(CovsegError, match="--prompt TEXT"):
        from covseg.inference.exported import export_run

        export_run(run, "onnx", tmp_path / "none")
