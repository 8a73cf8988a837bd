"""Intensity spaces of scans and the arithmetic that maps each to 0..1.

Which space an input is in is decided once, in :func:`covseg.data.intensity.intensity_space`
(header and values); this module only knows what each space means:

- ``hu``: CT in Hounsfield units, mapped to 0..1 through a window (the lung window by default);
- ``display``: 0..255 grey values (8-bit slices, already windowed when they were made): ``/ 255``;
- ``unit``: 0..1 values (an already windowed and scaled volume): kept.

No space is windowed twice: a window applies to ``hu`` only.
"""

from __future__ import annotations

import numpy as np

HU = "hu"
DISPLAY = "display"
UNIT = "unit"
SPACES = (HU, DISPLAY, UNIT)
#: what each space holds, in words for one-line errors
SPACE_WORDS = {HU: "CT in HU", DISPLAY: "0..255 display values", UNIT: "0..1 values"}

#: the lung window (W1500 L-500) in HU: how 8-bit CT slices of the field show the lungs. The one
#: place it is written: runs, training plans, conversion, phantoms and prediction all read it here.
LUNG_WINDOW = (-1250.0, 250.0)
DISPLAY_MAX = 255.0


def hu_window(window: tuple[float, float] | None = None) -> tuple[float, float]:
    """The window HU values are seen through: the one given, else :data:`LUNG_WINDOW`.

    The one rule for a default CT window (display, overlays, previews, 2D runs reading HU,
    training plans with ``window: auto``), so no caller decides it on its own."""
    if window is None:
        return LUNG_WINDOW
    lo, hi = window
    return float(lo), float(hi)


def to_unit(values: np.ndarray, space: str, window: tuple[float, float] | None = None) -> np.ndarray:
    """``values`` of ``space`` mapped to 0..1 float32 (clipped); ``window`` (HU) applies to ``hu`` only."""
    # one new float32 array, then in place: a 512x512x100 CT made five full-size copies before (0.85 CPU s);
    # the arithmetic is the same float32 steps, so the values are bit for bit those of the plain expressions
    if space == HU:
        lo, hi = hu_window(window)
        x = np.subtract(values, np.float32(lo), dtype=np.float32)
        x /= np.float32(hi - lo)
    elif space == DISPLAY:
        x = np.divide(values, np.float32(DISPLAY_MAX), dtype=np.float32)
    elif space == UNIT:
        x = np.array(values, dtype=np.float32)
    else:
        x = None
    if x is not None:
        x = np.asarray(x)  # a scalar input gives a NumPy scalar, which cannot be clipped in place
        return np.clip(x, 0.0, 1.0, out=x)
    raise ValueError(f"unknown intensity space {space!r} (one of {', '.join(SPACES)})")
