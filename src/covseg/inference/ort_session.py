"""How covseg opens an ONNX file with onnxruntime (threads as torch would take them), without importing torch:
shared by :class:`covseg.inference.network.ExportedNetwork` and the torch-free path (:mod:`covseg.inference.onnx_start`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def onnx_session(path: Path, threads: int | None, cuda: bool = False) -> Any:
    """An onnxruntime session with covseg's settings (``threads`` intra-op threads, one inter-op; CPU
    unless ``cuda``): shared by :class:`covseg.inference.network.ExportedNetwork` and the torch-free path."""
    import onnxruntime as ort

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    available = set(ort.get_available_providers())
    options = ort.SessionOptions()
    if threads:  # as many threads as torch was given (ORT's default is every physical core)
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=[p for p in providers if p in available])


def torch_threads() -> int:
    """The thread count torch takes here by default (measured on torch 2.13): ``MKL_NUM_THREADS``, else
    ``OMP_NUM_THREADS``, at most the CPU count; unset, the physical cores this process may run on.

    The torch path gives onnxruntime and the sigmoid ``torch.get_num_threads()``; the sigmoid's chunks
    (hence its last bits) follow it, so the torch-free path must take the same count."""
    for name in ("MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        text = os.environ.get(name, "").strip()
        if text.isdigit() and int(text) > 0:
            return min(int(text), os.cpu_count() or int(text))
    siblings = set()
    for path in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology/thread_siblings_list"):
        try:
            siblings.add(path.read_text().strip())
        except OSError:
            continue
    cores = len(siblings) or os.cpu_count() or 1
    affinity = getattr(os, "sched_getaffinity", None)
    return max(1, min(cores, len(affinity(0)) if affinity else cores))
