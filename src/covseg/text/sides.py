"""Image sides in text: captions name image sides ("left" = the viewer's left), so a horizontal
flip of the image must swap the words too."""

from __future__ import annotations

import re
from collections.abc import Sequence

_SIDE = re.compile(r"\b(left|right|Left|Right|LEFT|RIGHT)\b")
_SWAP = {"left": "right", "right": "left", "Left": "Right", "Right": "Left", "LEFT": "RIGHT", "RIGHT": "LEFT"}


def swap_sides(text: str | None) -> str | None:
    """``left`` ↔ ``right`` (image sides), for a horizontally flipped image."""
    if text is None:
        return None
    return _SIDE.sub(lambda m: _SWAP[m.group(0)], text)


def mentions_sides(texts: Sequence[str | None]) -> bool:
    """Whether any text names an image side."""
    return any(t is not None and _SIDE.search(t) for t in texts)
