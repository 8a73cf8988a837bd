"""Torch-free prediction of a shipped 2D model from its cached ONNX export (issue 29's start-up goal).

A one-slice ``covseg predict -m covid-ct-infection`` spent most of its 3.5 CPU s importing torch,
although a shipped model's network already runs on onnxruntime (:mod:`covseg.inference.fast_engine`).
:func:`torch_free_predictor` decides up front, before anything is predicted, whether a run can go
without torch; when it can, the predictor it gives reads nothing but numpy, PIL and onnxruntime:

* the same normalisation (:meth:`covseg.transforms.preprocess.Preprocessing.normalise`) and intensity
  space rule (:func:`covseg.data.intensity.space_of`, in :func:`covseg.inference.case.predict_case`);
* the resize to the network, the resize back and the sigmoid of :mod:`covseg.transforms.network_io`,
  which equal torch's bit for bit, around the same cached ONNX file and session settings;
* the same writer (:func:`covseg.inference.batch.predict_files`), so masks, soft maps, overlays and
  ``predictions.csv`` rows are those of the torch path (timings and peak memory aside).

Anything else runs the normal path: a run folder or an ensemble, ``--engine`` onnx/torchscript,
``COVSEG_ENGINE=torch`` or ``COVSEG_TORCH_FREE=0`` (this path off, e.g. to compare the two), a model with text, prior, cascade, volume plan, classifier or several
classes, TTA, ``--lungs-only``, DICOM outputs, a GPU device (or ``auto`` where one may be), torchrun,
any volume or DICOM series among the inputs, onnxruntime missing, or no cached export yet (the
first run exports it through torch).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covseg.inference.options import PredictOptions
from covseg.inference.ort_session import onnx_session, torch_threads
from covseg.inference.results import Prediction
from covseg.transforms.network_io import probs_to_labels, resize_antialiased, restore_bilinear, sigmoid
from covseg.transforms.preprocess import Preprocessing
from covseg.utils.processes import peak_rss_mb, torchrun_env

#: ``0`` turns the torch-free path off (the normal path runs, as before it existed)
TORCH_FREE_ENV = "COVSEG_TORCH_FREE"
#: what a shipped model's ``model.json`` must say (None: absent) for the torch-free path to cover it
_COVERED = {
    "text": None,
    "prior": None,
    "cascade": None,
    "volume": None,
    "classification": None,
    "num_classes": 1,
}


def _gpu_may_be_there() -> bool:
    """Whether ``--device auto`` could pick a GPU here (a CUDA or ROCm driver, or Apple silicon's MPS)."""
    if os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/kfd"):
        return True
    import platform

    return sys.platform == "darwin" and platform.machine() == "arm64"


class LocalProcess:
    """The runtime of a torch-free prediction: one process on the CPU (what the batch writer asks of a runtime)."""

    rank, world_size, distributed, is_main = 0, 1, False, True

    def barrier(self) -> None:
        return None

    def shard(self, items: Sequence[Any]) -> list[Any]:
        return list(items)

    def gather_objects(self, obj: Any) -> list[Any]:
        return [obj]

    def reset_peak_memory(self) -> None:
        return None

    def peak_memory_mb(self) -> float:
        return peak_rss_mb()

    def close(self) -> None:
        return None


class OnnxImagePredictor:
    """A shipped binary 2D model on onnxruntime without torch: 2D images in, :class:`Prediction` out."""

    num_classes = 1
    class_names = None
    volumetric = False
    text_guided = False

    def __init__(
        self, run_dir: Path, description: dict[str, Any], onnx_path: Path, files: list[Path]
    ) -> None:
        self.run_dir = run_dir
        self.files = files
        self.threshold = float(description.get("threshold", 0.5))
        self.preprocessing = Preprocessing.from_dict(description["preprocessing"])
        params = (description.get("inferer") or {}).get("params") or {}
        self.size = tuple(int(s) for s in (params.get("size") or self.preprocessing.size))
        self.threads = torch_threads()
        self.session = onnx_session(onnx_path, self.threads)
        self.input_name = self.session.get_inputs()[0].name
        self.runtime = LocalProcess()

    def segmenters(self) -> list[Any]:
        return []

    def predict_array(self, array: np.ndarray, affine: Any = None, options: PredictOptions | None = None, space: str | None = None,
                      **extra: Any) -> Prediction:  # fmt: skip
        """A 2D image (H×W or H×W×C) at its own size, as :meth:`covseg.inference.predictor.BasePredictor.predict_array`."""
        from covseg.data.intensity import intensity_space

        if affine is not None or extra.get("text") is not None:
            raise ValueError("the torch-free predictor takes 2D images only (decided before the run)")
        post = (options or PredictOptions()).post
        x = self.preprocessing.normalise(array, space or intensity_space(array), None)
        logits = self.session.run(None, {self.input_name: resize_antialiased(x, self.size)[None]})[0]
        restored = restore_bilinear(np.asarray(logits[0], np.float32), x.shape[1:])
        probs = sigmoid(restored[None], self.threads)[0, 0]
        return Prediction(probs=probs, labels=post.apply(probs_to_labels(probs, self.threshold, 1)))


def _description_covered(description: Any) -> bool:
    if not isinstance(description, dict) or not isinstance(description.get("preprocessing"), dict):
        return False
    if any(description.get(key, None) != value for key, value in _COVERED.items()):
        return False
    inferer = description.get("inferer") or {}
    return (
        inferer.get("name", "resize") == "resize"
        and int((description.get("init_args") or {}).get("spatial_dims", 2)) == 2
    )


def _options_covered(options: PredictOptions) -> bool:
    if os.environ.get(TORCH_FREE_ENV, "1").strip() == "0":
        return False
    engine = (os.environ.get("COVSEG_ENGINE") or "auto").lower()
    device = (options.device or "auto").strip().lower()
    return (
        engine in ("auto", "onnx") and options.engine == "torch" and options.amp == "off"
        and not options.tta and not options.tta_axes and not options.lungs_only
        and options.text is None and options.text_file is None and list(options.output_types) == ["nifti"]
        and (device == "cpu" or (device == "auto" and not _gpu_may_be_there()))
        and torchrun_env()[1] == 1
    )  # fmt: skip


def torch_free_predictor(
    models: Sequence[str | Path], input: Path, options: PredictOptions
) -> OnnxImagePredictor | None:
    """The torch-free predictor of this run, or None when the normal path must run (module docstring)."""
    import importlib.util

    from covseg import zoo

    if len(models) != 1 or not _options_covered(options) or importlib.util.find_spec("onnxruntime") is None:
        return None
    folder = zoo.resolve(str(models[0]))
    if folder is None:
        return None
    try:
        description = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # the normal path says what is wrong
    if not _description_covered(description):
        return None
    from covseg.data.imageio import is_volume
    from covseg.inference.fast_engine import cached_onnx_path
    from covseg.inference.inputs import list_inputs

    onnx_path = cached_onnx_path(folder)
    if not onnx_path.is_file():
        return None
    try:
        files = list_inputs(
            Path(input), volumes=False, stack_spacing=options.stack_spacing, series_folders=True
        )
    except Exception:
        return None  # the normal path lists the inputs again and reports the problem
    if any(not isinstance(f, Path) or is_volume(f) for f in files):
        return None
    try:
        return OnnxImagePredictor(folder, description, onnx_path, files)
    except Exception:  # an unreadable cached file: the normal path re-exports or reports it
        return None
