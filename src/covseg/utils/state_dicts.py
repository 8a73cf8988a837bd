"""Other people's state dicts: one safe reader and one fit check for every loader of their weights.

The checkpoint formats (``covseg.runs.importers``), the CLIP folder import and the CLIP ResNet
encoder read files with :func:`read_state_dict` (``torch.load(weights_only=True)`` or safetensors:
plain tensors only) and refuse a state dict that names tensors the model lacks, lacks tensors it
needs, or holds one of another shape (:func:`state_dict_problem`); each says so in one line.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from covseg.errors import CovsegError

#: keys under which training scripts wrap the weights (the first present is unwrapped)
WRAPPERS = ("state_dict", "model_state_dict", "model", "net")


def read_state_dict(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """The named tensors of a released checkpoint (``.safetensors``, or a ``torch.save`` file read with
    ``weights_only=True``), wrappers and ``module.`` prefixes undone; one line naming the file if it
    is missing, unreadable, needs unpickling (could run code) or holds anything but named tensors."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CovsegError(f"{what} file not found", path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(path), device="cpu")
        except Exception as exc:
            raise CovsegError(f"unreadable safetensors file ({type(exc).__name__})", path) from None
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            junk = "Unsupported operand" in str(exc) or "invalid load key" in str(exc)
            if not junk and ("weights_only" in str(exc) or "Unsupported global" in str(exc)):
                raise CovsegError("checkpoint needs full unpickling, which could run code; covseg imports plain tensors only", path) from None
            raise CovsegError("unreadable checkpoint (not a PyTorch file)", path) from None
        except Exception as exc:
            raise CovsegError(f"unreadable checkpoint ({type(exc).__name__})", path) from None
    if isinstance(raw, dict):
        for wrapper in WRAPPERS:
            if isinstance(raw.get(wrapper), dict):
                raw = raw[wrapper]
                break
    if not isinstance(raw, dict) or not raw:
        raise CovsegError("not a state dict (no name → tensor mapping)", path)
    state = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            raise CovsegError(f"not a state dict: entry {str(key)[:60]!r} is not a named tensor", path)
        state[key.removeprefix("module.")] = value
    return state


def state_dict_problem(
    expected: Mapping[str, Any], given: Mapping[str, Any], optional: Callable[[str], bool] = lambda key: False
) -> str | None:
    """The first way ``given`` does not fit ``expected`` (unknown names, then missing ones, then a shape),
    as a phrase for an error message; None when it fits. ``optional`` names expected keys that may be absent."""
    stray = [k for k in given if k not in expected]
    if stray:
        return f"{len(stray)} unknown tensor(s), e.g. {', '.join(stray[:3])}"
    missing = [k for k in expected if k not in given and not optional(k)]
    if missing:
        return f"{len(missing)} tensor(s) missing, e.g. {', '.join(missing[:3])}"
    for key, value in given.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            return f"{key} has shape {list(value.shape)}, the model needs {list(expected[key].shape)}"
    return None
