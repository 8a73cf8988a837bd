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
ONNX_CLASS_OUTPUT = "class_logits"


class WithClassOutput(torch.nn.Module):
    """A joint model as a network with two outputs, ``(logits, class_logits)``: what export writes for it,
    so the exported file keeps the classification a joint model's ``predictions.csv`` reports."""

    def __init__(self, model: SegmentationModel) -> None:
        super().__init__()
        self.model = model
        self.input_channels = model.input_channels
        self.spatial_dims = int(getattr(model, "spatial_dims", 2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.forward_heads(x)
        return out["logits"], out["class_logits"]


def has_class_output(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a joint model (a classification head giving ``class_logits``)."""
    return "class_logits" in getattr(model, "head_outputs", ())


def export_onnx(
    model: SegmentationModel,
    path: str | Path,
    method: str = "dynamo",
    example_size: tuple[int, ...] | None = None,
    opset: int = 18,
    class_output: bool = False,
) -> Path:
    """Export ``model.forward`` in eval mode to ``path`` (batch and every spatial size dynamic);
    ``class_output`` adds a joint model's ``class_logits`` (batch × classes) as a second output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    spatial_dims = int(getattr(model, "spatial_dims", 2))
    example_size = example_size or ((32,) * 3 if spatial_dims == 3 else (64, 64))
    example = torch.zeros(1, model.input_channels, *example_size)
    names = ["depth", "height", "width"][-len(example_size) :]
    joint = class_output and has_class_output(model)
    network = WithClassOutput(model) if joint else model
    outputs = [ONNX_OUTPUT, ONNX_CLASS_OUTPUT] if joint else [ONNX_OUTPUT]
    try:
        if method == "dynamo":
            dims = {0: torch.export.Dim("batch", min=1, max=4096)}
            dims.update({2 + i: torch.export.Dim(n, min=1, max=8192) for i, n in enumerate(names)})
            torch.onnx.export(
                network,
                (example,),
                str(path),
                dynamo=True,
                external_data=False,
                opset_version=opset,
                input_names=[ONNX_INPUT],
                output_names=outputs,
                dynamic_shapes={"x": dims},
                verbose=False,
            )
        elif method == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecation and tracer notices
                torch.onnx.export(
                    network,
                    (example,),
                    str(path),
                    dynamo=False,
                    opset_version=min(opset, 17),
                    input_names=[ONNX_INPUT],
                    output_names=outputs,
                    dynamic_axes={
                        ONNX_INPUT: {0: "batch", **{2 + i: n for i, n in enumerate(names)}},
                        ONNX_OUTPUT: {0: "batch", **{2 + i: n for i, n in enumerate(names)}},
                        **({ONNX_CLASS_OUTPUT: {0: "batch"}} if joint else {}),
                    },
                )
        else:
            raise ValueError(f"unknown ONNX export method {method!r}; use 'dynamo' or 'torchscript'")
    finally:
        model.train(was_training)
    return path


class WithTextInputs(torch.nn.Module):
    """A text-guided model as a network of the image and its text inputs in a fixed order (``names``), what
    ONNX and TorchScript need: keyword inputs become positional graph inputs with those names."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, x: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return self.model(x, **dict(zip(self.names, (first, second))))


def export_text_onnx(
    model: torch.nn.Module, path: str | Path, text_example: dict[str, torch.Tensor], opset: int = 17
) -> Path:
    """Export a text-guided model with three inputs, ``image`` and its two text inputs (``text_tokens`` +
    ``text_mask`` features, or ``input_ids`` + ``attention_mask`` for a model with its own tokenizer); batch,
    image size and text length dynamic. ``text_example`` holds one example of the text inputs (batch 1)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = tuple(text_example)
    if len(names) != 2:
        raise ValueError(f"a text-guided model takes two text inputs, got {names}")
    was_training = model.training
    model.eval()
    example = torch.zeros(1, int(model.input_channels), 64, 64)
    text_axes = {0: "batch", 1: "text_length"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation and tracer notices
            torch.onnx.export(
                WithTextInputs(model, names),
                (example, *text_example.values()),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[ONNX_INPUT, *names],
                output_names=[ONNX_OUTPUT],
                dynamic_axes={
                    ONNX_INPUT: {0: "batch", 2: "height", 3: "width"},
                    **{n: text_axes for n in names},
                    ONNX_OUTPUT: {0: "batch", 2: "height", 3: "width"},
                },
            )
    finally:
        model.train(was_training)
    return path
