"""The record every reader produces: one case, before and after reading its files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class CaseRecord:
    """Paths and metadata of one case, before any pixel is read.

    ``image`` is a file, or a folder for a DICOM series. ``masks`` holds further named
    masks (``"multiclass"``, or one per target for prompt datasets). ``texts`` holds named
    text variants (CRIS-style prompts ``P0..Pn``); ``text`` is the default one.
    """

    case_id: str
    image: Path
    mask: Path | None = None
    edge: Path | None = None
    masks: dict[str, Path] = field(default_factory=dict)
    text: str | None = None
    texts: dict[str, str] = field(default_factory=dict)
    label: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    """One case read into memory.

    Arrays keep the file's own axis order: 2D images are ``(H, W)`` or ``(H, W, C)``;
    volumes are nibabel's ``(X, Y, Z)`` with ``spacing`` in the same order (mm).
    Masks are integer label maps (0 = background). Image values are as stored
    (0..255 for 8-bit images, HU for CT volumes); normalisation is a transform's job.
    """

    case_id: str
    image: np.ndarray
    mask: np.ndarray | None = None
    edge: np.ndarray | None = None
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    text: str | None = None
    texts: dict[str, str] = field(default_factory=dict)
    label: int | None = None
    spacing: tuple[float, ...] | None = None
    affine: np.ndarray | None = None
    source: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape without the channel axis."""
        if self.image.ndim == 3 and self.affine is None and self.image.shape[-1] in (3, 4):
            return tuple(self.image.shape[:2])
        if self.image.ndim == 4 and self.affine is not None:
            return tuple(self.image.shape[:3])  # multi-channel volume (X, Y, Z, C)
        return tuple(self.image.shape)
