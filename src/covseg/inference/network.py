"""An exported network (ONNX via onnxruntime, or TorchScript) behind the model interface the
segmenter calls, ``net(x) -> logits``: shared by ``covseg predict --engine`` on export folders
(:mod:`covseg.inference.exported`) and by shipped models on onnxruntime (:mod:`covseg.inference.fast_engine`).
Kept apart from both so that neither import path leads back to the predictor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from covseg.engine.runtime import Runtime
from covseg.errors import CovsegError


class ExportedNetwork:
    """An exported network behind the model interface the segmenter calls: ``net(x) -> logits``."""

    def __init__(self, path: Path, engine: str, runtime: Runtime, spatial_dims: int = 2, threads: int | None = None) -> None:
        self.engine = engine
        self.runtime = runtime
        self.spatial_dims = spatial_dims
        #: ``("class_logits",)`` when the file has the joint model's second output (the segmenter then classifies)
        self.head_outputs: tuple[str, ...] = ()
        if engine == "onnx":
            from covseg.inference.ort_session import onnx_session

            self.session = onnx_session(path, threads, cuda=runtime.device.type == "cuda")
            self.input_name = self.session.get_inputs()[0].name
            self.text_names = tuple(i.name for i in self.session.get_inputs()[1:])  # a text-guided export's text inputs
            if len(self.session.get_outputs()) == 2:
                self.head_outputs = ("class_logits",)
        else:
            try:
                self.module = torch.jit.load(str(path), map_location=runtime.device).eval()
            except (RuntimeError, ValueError) as exc:
                raise CovsegError(f"unreadable TorchScript model ({type(exc).__name__})", path) from None

    def _run(self, x: torch.Tensor, **text: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every output of the exported file: ``(logits,)``, or ``(logits, class_logits)`` for a joint model;
        ``text`` holds a text-guided export's text inputs by name."""
        if self.engine == "onnx":
            if set(text) != set(getattr(self, "text_names", ())):
                raise CovsegError(f"this exported network takes the inputs {[self.input_name, *self.text_names]}, got image + {sorted(text)}")
            feed = {self.input_name: np.ascontiguousarray(x.detach().float().cpu().numpy())}
            feed.update({k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in text.items()})
            outputs = self.session.run(None, feed)
            return tuple(torch.from_numpy(o).to(x.device) for o in outputs)
        if text:
            raise CovsegError("an exported TorchScript network takes the image only")
        out = self.module(x)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    def __call__(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self._run(x, **kwargs)[0]

    def forward_heads(self, x: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Segmentation and class logits of a joint model's export (what the segmenter asks a joint model for)."""
        if kwargs:
            raise CovsegError("an exported network takes the image only")
        outputs = self._run(x)
        return {"logits": outputs[0], "class_logits": outputs[1]}

    def eval(self) -> ExportedNetwork:
        return self

    def train(self, mode: bool = True) -> ExportedNetwork:
        return self
