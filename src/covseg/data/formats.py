"""The file formats covseg reads (and writes), one :data:`FILE_FORMATS` entry each.

Every suffix list in covseg (images, volumes, the files ``predict`` and ``evaluate`` find in a
folder) is derived from this registry, so a new format is one ``FILE_FORMATS.register`` call in
one file: :mod:`covseg.data.imageio` dispatches its readers through the entry of a file's suffix.
The built-in entries are registered by :mod:`covseg.data.imageio` (listed in :mod:`covseg.builtins`)
with the readers of :mod:`covseg.data.image_files` and :mod:`covseg.data.volume_files`; this module
imports nothing heavy and nothing of covseg's but the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from covseg.registry import FILE_FORMATS

Kind = Literal["image", "volume", "either"]


@dataclass(frozen=True)
class FileFormat:
    """One file format: its suffixes, what it holds, and how covseg reads (and writes) it.

    ``kind``: ``image`` (a 2D image or mask), ``volume`` (a 3D volume, read by
    :func:`covseg.data.imageio.read_volume`) or ``either`` (an array file that may hold both,
    read as 2D when given as an image). ``read(path)`` gives a 2D format's image values (what
    :func:`covseg.data.imageio.read_image` starts from) or a volume format's ``(array, spacing,
    affine)``; ``read_stored`` a 2D format's stored values for masks and predictions (default:
    ``read``). ``pillow`` formats are decoded by Pillow's modes (palette, 1-bit) instead.
    ``listed``: found when covseg lists a folder of inputs, predictions or ground truth.
    """

    name: str
    suffixes: tuple[str, ...]
    kind: Kind
    read: Callable[[Path], Any] | None = None
    read_stored: Callable[[Path], Any] | None = None
    write: Callable[..., Path] | None = None
    listed: bool = True
    pillow: bool = False
    description: str = ""

    def stored(self, path: Path) -> Any:
        """The stored values of a 2D file (masks, predictions)."""
        reader = self.read_stored or self.read
        if reader is None:
            raise ValueError(f"file format {self.name!r} has no reader")
        return reader(path)


def register_format(fmt: FileFormat, *, before: str | None = None) -> FileFormat:
    """Add ``fmt`` to :data:`FILE_FORMATS` under its name (suffixes must be lower case and new)."""
    taken = {s: f.name for f in FILE_FORMATS.values() for s in f.suffixes}
    for s in fmt.suffixes:
        if not s.startswith(".") or s != s.lower():
            raise ValueError(f"file format {fmt.name!r}: suffix {s!r} must be lower case and start with '.'")
        if s in taken:
            raise ValueError(f"file format {fmt.name!r}: suffix {s!r} is already {taken[s]!r}'s")
    FILE_FORMATS.register(fmt.name, fmt, help=fmt.description, before=before)
    return fmt


def format_of(suffix: str) -> FileFormat | None:
    """The format whose suffixes include ``suffix`` (lower case, e.g. ``.nii.gz``), or None."""
    for fmt in FILE_FORMATS.values():
        if suffix in fmt.suffixes:
            return fmt
    return None


def suffixes(*kinds: Kind, listed: bool | None = None) -> tuple[str, ...]:
    """Suffixes of the registered formats of ``kinds`` (all kinds when none), in registration order;
    ``listed=True`` keeps only the formats found when covseg lists a folder."""
    return tuple(
        s
        for f in FILE_FORMATS.values()
        if (not kinds or f.kind in kinds) and (listed is None or f.listed == listed)
        for s in f.suffixes
    )
