"""The numpy resize, restore and sigmoid of covseg.transforms.network_io equal torch's bit for bit:
the torch-free prediction (covseg.inference.onnx_start) writes the bytes the torch path writes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from covseg.engine.inferers import restore_size
from covseg.transforms.network_io import (
    probs_to_labels,
    resize_antialiased,
    restore_bilinear,
    sigmoid,
    torch_vector_isa,
)
from covseg.transforms.preprocess import resize_tensor

SHAPES = [(512, 512), (630, 412), (100, 90), (256, 256), (768, 700), (97, 61), (1100, 900)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [(256, 256), (224, 224)])
def test_resize_to_the_network_equals_torch_bit_for_bit(shape, size):
    x = np.random.default_rng(sum(shape)).normal(0.0, 2.0, (1, *shape)).astype(np.float32)
    ours = resize_antialiased(x, size)
    theirs = resize_tensor(torch.from_numpy(x)[None], size)[0].numpy()
    assert ours.shape == (1, *size) and ours.dtype == np.float32
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize(
    "size", [(512, 512), (630, 412), (100, 90), (40, 60), (64, 64), (224, 224), (1000, 800), (256, 300)]
)
def test_restore_to_the_image_size_equals_torch_bit_for_bit(size):
    x = np.random.default_rng(size[0]).normal(0.0, 4.0, (1, 256, 256)).astype(np.float32)
    ours = restore_bilinear(x, size)
    theirs = restore_size(torch.from_numpy(x)[None], size)[0].numpy()
    assert ours.shape == (1, *size)
    assert np.array_equal(ours, theirs)


def test_the_vector_kernels_are_found_as_torch_finds_them():
    """The sigmoid's block (two vectors: 16 floats on AVX2, 32 on AVX-512) follows torch's dispatch."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip(f"torch runs {torch.backends.cpu.get_cpu_capability()} kernels here (rules read for AVX2/AVX-512)")
    assert torch_vector_isa() == torch.backends.cpu.get_cpu_capability()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [512 * 512, 630 * 412, 97 * 61, 77, 15, 33, 31 * 33 + 17])
def test_sigmoid_equals_torch_bit_for_bit(n, threads):
    x = np.random.default_rng(n).normal(0.0, 6.0, n).astype(np.float32)
    x[:4] = [0.0, -200.0, 200.0, -5e-8]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        theirs = torch.sigmoid(torch.from_numpy(x)[None, None]).numpy()[0, 0]
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(sigmoid(x, threads), theirs)


def test_sigmoid_equals_torch_on_its_avx2_kernels_too():
    """An AVX-512 machine checks the AVX2 rule as well (``ATEN_CPU_CAPABILITY=avx2`` in a child)."""
    script = (
        "import numpy as np, torch\n"
        "from covseg.transforms.network_io import sigmoid, torch_vector_isa\n"
        "assert torch.backends.cpu.get_cpu_capability() == torch_vector_isa() == 'AVX2'\n"
        "for n in (97 * 61, 15, 33, 1040):\n"
        "    x = np.random.default_rng(n).normal(0.0, 6.0, n).astype(np.float32)\n"
        "    assert np.array_equal(sigmoid(x), torch.sigmoid(torch.from_numpy(x)).numpy()), n\n"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


def test_labels_threshold_binary_maps_and_take_the_argmax_of_class_maps():
    probs = np.array([[0.2, 0.5], [0.7, 0.49]], np.float32)
    assert probs_to_labels(probs, 0.5).tolist() == [[0, 1], [1, 0]]
    assert probs_to_labels(np.stack([probs, 1 - probs]), num_classes=2).tolist() == [[1, 0], [0, 1]]
