"""Which engine runs a shipped model's network: onnxruntime when it is installed, else torch.

On a laptop CPU onnxruntime runs the shipped (zoo) networks about 1.4× faster than eager torch at
one thread (``bench/bench_speed.py``), with the same preprocessing, restoration and thresholds: only
the network call changes (:class:`covseg.inference.network.ExportedNetwork`). The ONNX file is
exported once per checkpoint and kept in the user cache (``$COVSEG_CACHE`` or ``~/.cache/covseg``,
``onnx/<name>-<hash>.onnx``, the hash over the weights, ``model.json`` and the torch and covseg
versions), written atomically so that concurrent first runs never read half a file.

Only packed run folders (the zoo) take this path by default: a training run's checkpoints change,
and explanation (Grad-CAM) needs the torch modules. ``COVSEG_ENGINE=torch`` (or ``engine="torch"``)
keeps torch everywhere.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from covseg.errors import CovsegError

ENGINE_ENV = "COVSEG_ENGINE"
ENGINES = ("auto", "torch", "onnx")


def cache_root() -> Path:
    """``$COVSEG_CACHE`` or ``~/.cache/covseg`` (the same rule as the training cache)."""
    env = os.environ.get("COVSEG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "covseg"


def torch_version() -> str:
    """The installed torch's version, read from its package metadata (no torch import: a torch-free
    prediction computes the same cache key), else from torch itself."""
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        import torch

        return str(torch.__version__)


def checkpoint_key(run_dir: Path) -> str:
    """A hash of what decides the exported network: weights, run description, torch and covseg versions."""
    from covseg import __version__
    from covseg.runs.packing import WEIGHTS

    h = hashlib.sha256()
    for name in (WEIGHTS, "model.json"):
        with open(run_dir / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    h.update(f"torch {torch_version()} covseg {__version__}".encode())
    return h.hexdigest()[:16]


def cached_onnx_path(run_dir: Path) -> Path:
    """Where the ONNX export of the packed run ``run_dir`` is cached (whether or not it is there yet)."""
    return cache_root() / "onnx" / f"{run_dir.name}-{checkpoint_key(run_dir)}.onnx"


def onnx_file(run_dir: Path, model: Any) -> Path:
    """The cached ONNX export of a packed run's ``model`` (exported now when missing; atomic write)."""
    from covseg.models.export import export_onnx
    from covseg.utils.atomic import write_with

    path = cached_onnx_path(run_dir)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        was_training = model.training
        write_with(path, lambda p: export_onnx(model, p, method="torchscript", class_output=True))
        model.train(was_training)
    return path


def eligible(segmenter: Any) -> str | None:
    """Why ``segmenter`` cannot run on onnxruntime here (None when it can)."""
    from covseg.runs.packing import is_packed

    if segmenter.run_dir is None or not is_packed(Path(segmenter.run_dir)):
        return "only shipped (packed) models run on onnxruntime by default"
    if segmenter.runtime.device.type != "cpu":
        return "onnxruntime is used on the CPU only"
    if segmenter.adapters or segmenter.cascade is not None:
        return "text-guided, cascade and coarse-to-fine models read more than the image"
    return None


def choose_engine(segmenter: Any, engine: str | None = None) -> str:
    """Swap ``segmenter``'s network for its onnxruntime export where ``engine`` allows it; the engine used.

    ``engine``: ``auto`` (default; ``$COVSEG_ENGINE`` when set): onnxruntime for an eligible model
    when onnxruntime imports, else torch; ``torch``; ``onnx`` (an error where it cannot be used)."""
    engine = (engine or os.environ.get(ENGINE_ENV) or "auto").lower()
    if engine not in ENGINES:
        raise CovsegError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "torch":
        return "torch"
    why = eligible(segmenter)
    if why is not None:
        if engine == "onnx":
            raise CovsegError(f"engine onnx: {why}", segmenter.run_dir)
        return "torch"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        if engine == "onnx":
            raise CovsegError("engine onnx: onnxruntime is not installed (pip install onnxruntime)") from None
        return "torch"
    import torch

    from covseg.inference.network import ExportedNetwork

    model = segmenter.model
    try:
        path = onnx_file(Path(segmenter.run_dir), model)
    except (RuntimeError, ValueError, TypeError, OSError) as exc:  # an export this torch cannot write: keep torch
        if engine == "onnx":
            raise CovsegError(f"engine onnx: export failed ({type(exc).__name__})", segmenter.run_dir) from None
        return "torch"
    network = ExportedNetwork(path, "onnx", segmenter.runtime, int(getattr(model, "spatial_dims", 2)), threads=torch.get_num_threads())
    network.init_args = getattr(model, "init_args", None)  # type: ignore[attr-defined]
    segmenter.model = network
    segmenter.channels_last = False
    segmenter.volume_channels_last = False
    return "onnx"
