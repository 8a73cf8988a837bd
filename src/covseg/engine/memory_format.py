"""Channels-last (NHWC) models that steer clear of a oneDNN crash in strided 1×1 convolutions.

The oneDNN in torch 2.13's CPU build computes the weight gradient of a 1×1 convolution with
stride > 1 on NHWC tensors by first copying the strided input into a unit-stride scratch buffer
("rtus"). When the input channels per group are fewer than the kernel's channel block (8 with
AVX2, 16 with AVX-512), that copy writes past the buffer: a segmentation fault or heap corruption
with one thread, a hang or silently wrong gradients with several (oneDNN issue 6035; measured here
with ``bench/bench_onednn_pointwise.py``). ResNet-style encoders hit it in the downsampling
shortcut of any stage whose input is narrower than the block, e.g. a ``jcs`` or ``resunet`` with
8-channel first stages trained on an AVX-512 CPU.

:func:`to_channels_last` converts a model and re-routes each such layer through
:class:`SubsampledPointwiseConv2d`: the same numbers (a strided 1×1 convolution reads every
``stride``-th pixel, so subsampling first and convolving with stride 1 is exact), the same
parameters and state-dict keys, and no strided 1×1 kernel for oneDNN to mishandle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# oneDNN's widest channel block on x86 (AVX-512); AVX2's is 8. Below it the strided kernel is unsafe.
SAFE_INPUT_CHANNELS = 16


class SubsampledPointwiseConv2d(nn.Conv2d):
    """A strided 1×1 convolution computed as "pad, subsample, convolve with stride 1"."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.padding):
            x = F.pad(x, self._reversed_padding_repeated_twice)
        x = x[..., :: self.stride[0], :: self.stride[1]]
        return F.conv2d(x, self.weight, self.bias, 1, 0, self.dilation, self.groups)


def is_unsafe_pointwise(module: nn.Module) -> bool:
    """True for a plain ``Conv2d`` the oneDNN bug reaches in channels-last training."""
    return (
        type(module) is nn.Conv2d
        and module.kernel_size == (1, 1)
        and tuple(module.stride) != (1, 1)
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
        and module.in_channels // module.groups < SAFE_INPUT_CHANNELS
    )


def guard_pointwise_convolutions(model: nn.Module) -> list[str]:
    """Re-route every unsafe strided 1×1 convolution of ``model`` in place; returns their names."""
    rerouted = []
    for name, module in model.named_modules():
        if is_unsafe_pointwise(module):
            module.__class__ = SubsampledPointwiseConv2d
            rerouted.append(name)
    return rerouted


def to_channels_last(model: nn.Module) -> nn.Module:
    """``model`` in channels-last memory format, with the strided 1×1 convolutions guarded."""
    model = model.to(memory_format=torch.channels_last)
    guard_pointwise_convolutions(model)
    return model
