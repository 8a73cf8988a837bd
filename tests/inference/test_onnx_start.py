"""covseg predict with a shipped 2D model and its cached ONNX export runs without torch
(covseg.inference.onnx_start) and writes the files the torch path writes, byte for byte."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covseg import zoo
from covseg.inference.onnx_start import OnnxImagePredictor, torch_free_predictor
from covseg.inference.options import PredictOptions

MODEL = "covid-ct-infection"
TIMINGS = ("seconds", "cpu_seconds", "peak_memory_mb")
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A cache holding the shipped CT model's ONNX export (written by the torch path, as a first run does)."""
    if MODEL not in zoo.names():
        pytest.skip(f"{MODEL} is not shipped in this checkout")
    pytest.importorskip("onnxruntime")
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COVSEG_CACHE", str(cache))
        mp.delenv("COVSEG_ENGINE", raising=False)
        from covseg.inference.predictor import Predictor

        Predictor.from_run(MODEL, device="cpu")
    assert len(list((cache / "onnx").glob(f"{MODEL}-*.onnx"))) == 1
    return cache


@pytest.fixture
def cache(exported, monkeypatch) -> Path:
    monkeypatch.setenv("COVSEG_CACHE", str(exported))
    monkeypatch.delenv("COVSEG_ENGINE", raising=False)
    return exported


def _inputs(folder: Path, real_slices: list[Path]) -> Path:
    """Real CT slices and synthetic images: grey, RGB, 16-bit, sizes below, at and above the network's."""
    folder.mkdir()
    for path in real_slices:
        (folder / path.name).write_bytes(path.read_bytes())
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:120, :100]
    blob = 255.0 * np.exp(-((yy - 60) ** 2 + (xx - 45) ** 2) / 400.0)
    Image.fromarray(np.clip(blob + rng.normal(0, 20, blob.shape), 0, 255).astype(np.uint8)).save(
        folder / "grey.png"
    )
    Image.fromarray(rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)).save(folder / "small_rgb.png")
    Image.fromarray(rng.integers(0, 65535, (256, 256), dtype=np.uint16)).save(folder / "wide16.png")
    return folder


def _rows(out: Path) -> list[dict]:
    with open(out / "predictions.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for key in TIMINGS:
            assert float(row.pop(key)) >= 0
        row["mask"], row["prob"] = Path(row["mask"]).name, Path(row["prob"]).name
    return rows


def _files(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.parent != out
    }


@pytest.mark.slow  # ~30 s wall each on the loaded 2-core machine (two predictions of 6 images), ~4 CPU s
@pytest.mark.data
@pytest.mark.parametrize("settings", [{}, {"min_size": 30, "largest": 1}])
def test_torch_free_prediction_writes_the_torch_paths_files(cache, real_data, tmp_path, settings):
    slices = sorted((real_data / "covid_semiseg_infnet" / "train" / "images").iterdir())[:3]
    if not slices:
        pytest.skip("no covid_semiseg_infnet slices under COVSEG_DATA")
    inputs = _inputs(tmp_path / "in", slices)
    options = PredictOptions(device="cpu", **settings)
    from covseg.api import predict
    from covseg.inference.batch import predict_files
    from covseg.inference.predictor import Predictor, list_inputs
    from covseg.viz.callbacks import prediction_overlay

    light = torch_free_predictor([MODEL], inputs, options)
    assert isinstance(light, OnnxImagePredictor) and len(light.files) == 6
    predict(MODEL, inputs, tmp_path / "light", options)
    torch_path = Predictor.from_run(MODEL, device="cpu")
    predict_files(torch_path, list_inputs(inputs), tmp_path / "torch", options, overlays=prediction_overlay)

    light_files, torch_files = _files(tmp_path / "light"), _files(tmp_path / "torch")
    assert (
        sorted(light_files) == sorted(torch_files) and len(light_files) == 18
    )  # masks, probs, overlays of 6 inputs
    assert [k for k in light_files if light_files[k] != torch_files[k]] == []
    assert _rows(tmp_path / "light") == _rows(tmp_path / "torch")
    masks = [np.asarray(Image.open(tmp_path / "light" / "masks" / f"{p.stem}.png")) for p in slices]
    assert (
        sum(int((m > 0).sum()) for m in masks) > 1000
    )  # real lesions found: the comparison is not of empty masks


def test_a_torch_free_run_never_imports_torch(cache, tmp_path):
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (96, 80), dtype=np.uint8)).save(
        tmp_path / "slice.png"
    )
    code = (
        "import sys\nfrom covseg.cli.main import main\n"
        "try:\n    main(['predict', '-m', 'covid-ct-infection', '-i', sys.argv[1], '-o', sys.argv[2], '-q'])\n"
        "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\nprint('torch-free')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "COVSEG_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    env.pop("COVSEG_ENGINE", None)
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "slice.png"), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0 and "torch-free" in done.stdout, done.stderr
    assert (tmp_path / "out" / "masks" / "slice.png").is_file() and (
        tmp_path / "out" / "predictions.csv"
    ).is_file()


def test_everything_the_torch_free_path_does_not_cover_runs_the_normal_path(cache, tmp_path, monkeypatch):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "a.png")
    image = tmp_path / "a.png"
    assert torch_free_predictor([MODEL], image, PredictOptions(device="cpu")) is not None
    for options in (PredictOptions(device="cpu", tta=True), PredictOptions(device="cuda"), PredictOptions(device="cpu", engine="onnx"),
                    PredictOptions(device="cpu", text="left lung"), PredictOptions(device="cpu", amp="bf16")):  # fmt: skip
        assert torch_free_predictor([MODEL], image, options) is None, options
    assert torch_free_predictor([MODEL, MODEL], image, PredictOptions(device="cpu")) is None  # an ensemble
    assert (
        torch_free_predictor(["covid-ct-multiclass"], image, PredictOptions(device="cpu")) is None
    )  # softmax: not covered
    assert (
        torch_free_predictor(["covid-cxr-text"], image, PredictOptions(device="cpu")) is None
    )  # text-guided
    assert (
        torch_free_predictor([str(zoo.ZOO_DIR / MODEL)], image, PredictOptions(device="cpu")) is None
    )  # a folder path
    (tmp_path / "ct.nii.gz").write_bytes(b"")
    assert (
        torch_free_predictor([MODEL], tmp_path, PredictOptions(device="cpu")) is None
    )  # a volume among the inputs
    for name, value in (("COVSEG_ENGINE", "torch"), ("COVSEG_TORCH_FREE", "0")):
        monkeypatch.setenv(name, value)
        assert torch_free_predictor([MODEL], image, PredictOptions(device="cpu")) is None
        monkeypatch.delenv(name)
    monkeypatch.setenv(
        "COVSEG_CACHE", str(tmp_path / "empty_cache")
    )  # no export yet: the torch path writes it
    assert torch_free_predictor([MODEL], image, PredictOptions(device="cpu")) is None


@pytest.mark.parametrize(
    "threads_env",
    [
        {},
        {"OMP_NUM_THREADS": "1"},
        {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "2"},
        {"OMP_NUM_THREADS": "64"},
    ],
)
def test_the_torch_free_path_takes_torchs_thread_count(threads_env):
    """onnxruntime's threads and the sigmoid's chunks follow torch's thread count, as on the torch path."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(threads_env, PYTHONPATH=str(SRC))
    code = "import torch\nfrom covseg.inference.ort_session import torch_threads\nprint(torch_threads(), torch.get_num_threads())\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    ours, torchs = done.stdout.split()
    assert ours == torchs
    if threads_env == {"OMP_NUM_THREADS": "1"}:
        assert ours == "1"
