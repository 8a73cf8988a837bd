"""The numpy resize, restore and sigmoid of covseg.transforms.network_io equal torch's bit for bit:
the torch-free prediction (covseg.inference.onnx_start) writes the bytes the torch path writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covseg.engine.inferers import restore_size
from covseg.transforms.network_io import probs_to_labels, resize_antialiased, restore_bilinear, sigmoid
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


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [512 * 512, 630 * 412, 97 * 61, 77])
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


def test_labels_threshold_binary_maps_and_take_the_argmax_of_class_maps():
    probs = np.array([[0.2, 0.5], [0.7, 0.49]], np.float32)
    assert probs_to_labels(probs, 0.5).tolist() == [[0, 1], [1, 0]]
    assert probs_to_labels(np.stack([probs, 1 - probs]), num_classes=2).tolist() == [[1, 0], [0, 1]]
