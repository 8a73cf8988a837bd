"""Shipped models on onnxruntime by default (covseg.inference.fast_engine): same masks as torch,
one cached export per checkpoint, torch kept where asked or where the model is not shipped."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from covseg import zoo
from covseg.data.imageio import read_image
from covseg.errors import CovsegError
from covseg.inference.exported import ExportedNetwork
from covseg.inference.fast_engine import choose_engine
from covseg.inference.predictor import Predictor
from covseg.metrics.overlap import dice

DATA = Path(os.environ.get("COVSEG_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))
SLICES = DATA / "covid_semiseg_infnet" / "train" / "images"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("COVSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("COVSEG_ENGINE", raising=False)
    return tmp_path / "cache"


def test_shipped_ct_model_on_onnxruntime_gives_the_torch_masks_on_real_slices(cache):
    if "covid-ct-infection" not in zoo.names():
        pytest.skip("covid-ct-infection is not shipped in this checkout")
    if not SLICES.is_dir():
        pytest.skip(f"real slices not found at {SLICES} (set COVSEG_DATA)")
    fast = Predictor.from_run("covid-ct-infection", device="cpu")
    slow = Predictor.from_run("covid-ct-infection", device="cpu", engine="torch")
    assert isinstance(fast.model, ExportedNetwork) and not isinstance(slow.model, ExportedNetwork)
    exported = sorted((cache / "onnx").glob("covid-ct-infection-*.onnx"))
    assert len(exported) == 1 and not list((cache / "onnx").glob("*.tmp*"))
    images = [read_image(p) for p in sorted(SLICES.iterdir())[:12]]
    for image in images:
        a, b = fast.predict_image(image), slow.predict_image(image)
        assert a.probs.shape == image.shape[:2]
        assert np.abs(a.probs - b.probs).max() < 1e-3
        if b.labels.any():
            assert dice(a.labels, b.labels) >= 0.999
        else:
            assert not a.labels.any()
    # a second load reuses the cached file (same name, same bytes)
    before = exported[0].stat().st_mtime_ns
    Predictor.from_run("covid-ct-infection", device="cpu")
    assert exported[0].stat().st_mtime_ns == before


def test_engine_choice_keeps_torch_where_asked_and_refuses_bad_names(cache, monkeypatch):
    if "covid-ct-infection" not in zoo.names():
        pytest.skip("covid-ct-infection is not shipped in this checkout")
    monkeypatch.setenv("COVSEG_ENGINE", "torch")
    assert not isinstance(Predictor.from_run("covid-ct-infection", device="cpu").model, ExportedNetwork)
    assert not (cache / "onnx").exists()
    with pytest.raises(CovsegError, match="engine must be one of"):
        Predictor.from_run("covid-ct-infection", device="cpu", engine="tensorrt")


def test_training_runs_stay_on_torch_unless_onnx_is_asked(cache, tmp_path):
    from covseg.training.config import load_config
    from covseg.training.trainer import build_trainer

    from tests.helpers import phantom_dataset, tiny_config

    data = phantom_dataset(tmp_path / "data", n=8, size=48)
    run = tmp_path / "run"
    build_trainer(load_config(raw=tiny_config(data, size=48, epochs=1)), run, quiet=True).fit()
    predictor = Predictor.from_run(run, "last", device="cpu")
    assert not isinstance(predictor.model, ExportedNetwork)
    with pytest.raises(CovsegError, match="only shipped"):
        choose_engine(predictor.segmenter, "onnx")
