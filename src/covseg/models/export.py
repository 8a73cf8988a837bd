"""ONNX export of a segmentation model's ``forward`` (one input ``image``, one output ``logits``).

Two exporters work with torch 2.13 + onnxscript for every registered model, both with dynamic
batch, height and width (the model pads to its ``size_divisor`` inside the graph):

- ``method="dynamo"`` (default, the supported path since torch 2.9): ``torch.onnx.export(...,
  dynamo=True)`` with ``torch.export.Dim`` dynamic shapes; graph optimised by onnxscript.
  Slow to export (~20 s for Inf-Net on two cores) but future-proof.
- ``method="torchscript"``: the legacy tracer (``dynamo=False``, ``dynamic_axes``), a few
  seconds; deprecated upstream, kept because it is fast for tests.

``external_data=False`` keeps the weights inside the ``.onnx`` file (no ``.onnx.data`` side file).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from covseg.models.base import SegmentationModel

ONNX_INPUT = "image"
ONNX_OUTPUT = "logits"


def export_onnx(
    model: SegmentationModel,
    path: str | Path,
    method: str = "dynamo",
    example_size: tuple[int, int] = (64, 64),
    opset: int = 18,
) -> Path:
    """Export ``model.forward`` in eval mode to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    example = torch.zeros(1, model.input_channels, *example_size)
    try:
        if method == "dynamo":
            dims = {
                0: torch.export.Dim("batch", min=1, max=4096),
                2: torch.export.Dim("height", min=1, max=8192),
                3: torch.export.Dim("width", min=1, max=8192),
            }
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                external_data=False,
                opset_version=opset,
                input_names=[ONNX_INPUT],
                output_names=[ONNX_OUTPUT],
                dynamic_shapes={"x": dims},
                verbose=False,
            )
        elif method == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecation and tracer notices
                torch.onnx.export(
                    model,
                    (example,),
                    str(path),
                    dynamo=False,
                    opset_version=min(opset, 17),
                    input_names=[ONNX_INPUT],
                    output_names=[ONNX_OUTPUT],
                    dynamic_axes={
                        ONNX_INPUT: {0: "batch", 2: "height", 3: "width"},
                        ONNX_OUTPUT: {0: "batch", 2: "height", 3: "width"},
                    },
                )
        else:
            raise ValueError(f"unknown ONNX export method {method!r}; use 'dynamo' or 'torchscript'")
    finally:
        model.train(was_training)
    return path
