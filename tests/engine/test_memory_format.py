"""Channels-last training stays clear of oneDNN's strided 1×1 weight-gradient crash, and a crashed
test worker fails the suite instead of hanging it (issue 25, "a crash in training").

The crash (``covseg.engine.memory_format``) needs a 1×1 convolution with stride > 1 whose input
channels per group are fewer than oneDNN's channel block: 8 on AVX2, 16 on AVX-512. Each case runs
in its own process, so a crash on a machine without the guard fails one test instead of a worker.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from covseg.engine.memory_format import (
    SubsampledPointwiseConv2d,
    guard_pointwise_convolutions,
    is_unsafe_pointwise,
)
from covseg.engine.runtime import Runtime

from tests.models.test_models import MODEL_CASES, make

ROOT = Path(__file__).resolve().parents[2]

TRAIN_STEP = """
import sys, torch
from covseg.engine.runtime import Runtime
torch.set_num_threads(1)
torch.manual_seed(0)
in_channels = int(sys.argv[1])
model = torch.nn.Sequential(torch.nn.Conv2d(in_channels, 8, 1, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 3, padding=1))
x = torch.randn(32, in_channels, 32, 32)
model(x).square().mean().backward()
reference = model[0].weight.grad.clone()
model.zero_grad(set_to_none=True)
model = Runtime().prepare_model(model, channels_last=True)
model(x.contiguous(memory_format=torch.channels_last)).square().mean().backward()
print(((model[0].weight.grad - reference).abs().max() / reference.abs().max()).item())
"""


@pytest.mark.parametrize("in_channels", [4, 8], ids=["below-avx2-block", "below-avx512-block"])
def test_channels_last_training_survives_strided_pointwise_convolutions(in_channels):
    """Without the guard, 4 input channels abort or corrupt the heap on AVX2 (and hang with two threads);
    8 do the same on AVX-512 (the jcs crash of the issue)."""
    try:
        proc = subprocess.run([sys.executable, "-c", TRAIN_STEP, str(in_channels)], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the channels-last backward step hung")
    assert proc.returncode == 0, f"the channels-last backward step died (exit {proc.returncode}): {proc.stderr[-500:]}"
    assert float(proc.stdout.split()[-1]) < 1e-4


@pytest.mark.parametrize(("stride", "padding", "groups"), [((2, 2), 0, 1), ((3, 2), 0, 1), ((2, 2), 1, 1), ((2, 2), 0, 2)])
def test_the_subsampled_convolution_equals_the_strided_one(stride, padding, groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, 1, stride=stride, padding=padding, groups=groups)
    guarded = nn.Conv2d(6, 4, 1, stride=stride, padding=padding, groups=groups)
    guarded.load_state_dict(conv.state_dict())
    assert guard_pointwise_convolutions(guarded) == [""]
    assert isinstance(guarded, SubsampledPointwiseConv2d) and guarded.stride == stride
    x = torch.randn(2, 6, 17, 14, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y, y2 = conv(x), guarded(x2)
    assert y.shape == y2.shape
    torch.testing.assert_close(y2, y, rtol=1e-5, atol=1e-6)
    (y * torch.arange(y.numel()).reshape(y.shape)).sum().backward()
    (y2 * torch.arange(y2.numel()).reshape(y2.shape)).sum().backward()
    torch.testing.assert_close(guarded.weight.grad, conv.weight.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-5, atol=1e-4)


def test_only_the_unsafe_layers_are_rerouted():
    assert is_unsafe_pointwise(nn.Conv2d(8, 16, 1, stride=2))
    assert is_unsafe_pointwise(nn.Conv2d(32, 32, 1, stride=2, groups=4))  # 8 channels per group
    assert not is_unsafe_pointwise(nn.Conv2d(16, 16, 1, stride=2))  # a full AVX-512 block
    assert not is_unsafe_pointwise(nn.Conv2d(4, 16, 1))  # stride 1: no scratch copy
    assert not is_unsafe_pointwise(nn.Conv2d(4, 16, 3, stride=2))  # not a 1×1 kernel


@pytest.mark.parametrize("case", [c for c in MODEL_CASES if c.kwargs.get("spatial_dims") != 3], ids=lambda c: c.id)
def test_no_model_trains_with_an_unsafe_layer_in_channels_last(case):
    """Every model case, as training prepares it, keeps its state-dict keys and has exactly its unsafe
    layers rerouted (the 8-channel downsampling shortcuts of the small ResNet encoders)."""
    model = make(case)
    keys = list(model.state_dict())
    unsafe = [name for name, m in model.named_modules() if is_unsafe_pointwise(m)]
    prepared = Runtime().prepare_model(model, channels_last=True)
    assert not [name for name, m in prepared.named_modules() if is_unsafe_pointwise(m)]
    assert [name for name, m in prepared.named_modules() if isinstance(m, SubsampledPointwiseConv2d)] == unsafe
    assert list(prepared.state_dict()) == keys
    if case.name == "jcs":
        assert unsafe, "the jcs case of the crash report has strided 8-channel shortcuts"


CRASHING_SUITE = {
    "test_a.py": "def test_one():\n    pass\n\ndef test_two():\n    pass\n",
    "test_b.py": "import os, signal\n\ndef test_crash():\n    os.kill(os.getpid(), signal.SIGSEGV)\n\ndef test_after():\n    pass\n",
    "test_c.py": "def test_three():\n    pass\n",
    "test_d.py": "def test_four():\n    pass\n",
}


def test_a_crashed_worker_fails_the_suite_instead_of_hanging_it(tmp_path):
    """The project's pytest options (two workers, loadfile) on a suite where one test segfaults: xdist
    would replace the worker and wait forever; the run must end, non-zero, naming the test."""
    for name, text in CRASHING_SUITE.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    config = ROOT / "pyproject.toml"
    cmd = [sys.executable, "-m", "pytest", "-c", str(config), "--rootdir", str(tmp_path), "-n", "2", "-p", "no:cacheprovider", str(tmp_path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("pytest hung after a worker crashed")
    assert proc.returncode != 0
    assert "crashed while running" in proc.stdout and "test_b.py::test_crash" in proc.stdout


def test_a_3d_run_predicts_in_ndhwc_on_the_cpu_with_the_contiguous_models_numbers(tmp_path):
    """3D prediction stores the model and its patches NDHWC on the CPU (faster oneDNN kernels) and
    gives the contiguous model's soft map to 1e-5 and its mask."""
    import numpy as np

    from covseg.engine.segmenter import Segmenter
    from covseg.models import build_model
    from covseg.runs.checkpoint import save_checkpoint
    from covseg.runs.description import DESCRIPTION_FORMAT
    from covseg.transforms.volume import VolumePlan
    from covseg.utils.atomic import write_json

    torch.manual_seed(0)
    params = {"spatial_dims": 3, "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1, "norm": "batch"}
    model = build_model("monai_unet", in_channels=1, out_channels=1, **params).eval()
    plan = VolumePlan(spacing=(2.0, 2.0, 2.0), mean=0.4, std=0.3, patch_size=(32, 32, 16))
    inferer = {"name": "sliding_window", "params": {"roi_size": [32, 32, 16], "overlap": 0.25, "mode": "gaussian", "sw_batch_size": 2}}
    write_json(tmp_path / "model.json", {
        "format": DESCRIPTION_FORMAT, "name": "monai_unet", "init_args": model.init_args, "preprocessing": {"channels": 1, "size": None},
        "num_classes": 1, "class_names": ["infection"], "threshold": 0.5, "inferer": inferer, "volume": plan.to_dict(),
    })  # fmt: skip
    save_checkpoint(tmp_path / "checkpoints" / "best.pt", {"model_spec": {"name": "monai_unet", "init_args": model.init_args}, "model_state": model.state_dict()})
    segmenter = Segmenter.from_run(tmp_path, runtime=Runtime.create("cpu", "off", distributed=False))
    weight = next(p for p in segmenter.model.parameters() if p.ndim == 5 and p.shape[1] > 1 and p.shape[-1] > 1)
    assert segmenter.volume_channels_last and weight.is_contiguous(memory_format=torch.channels_last_3d) and not weight.is_contiguous()

    volume = np.random.default_rng(0).normal(-500.0, 400.0, (48, 40, 24)).astype(np.float32)
    affine = np.diag([1.5, 1.5, 2.5, 1.0])
    ndhwc = segmenter.volume_probabilities(volume, affine, space="hu")
    segmenter.model = segmenter.model.to(memory_format=torch.contiguous_format)
    segmenter.volume_channels_last = False
    plain = segmenter.volume_probabilities(volume, affine, space="hu")
    assert np.abs(ndhwc - plain).max() < 1e-5
    assert np.array_equal(ndhwc > 0.5, plain > 0.5)
