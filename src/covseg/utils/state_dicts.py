"""Whether a state dict fits a module's: one check for every loader of other people's weights.

The checkpoint formats (``covseg.runs.importers``), the CLIP folder import and the CLIP ResNet
encoder all refuse a state dict that names tensors the model lacks, lacks tensors it needs, or
holds one of another shape; each says so in one line, with this function's phrase after its own
description of what was expected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


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
