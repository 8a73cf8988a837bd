"""The table every text source is read into: :class:`TextTable` of :class:`TextEntry`, keyed by file name.

Also the name forms sources use (``covid_1``, ``covid_1.png``, ``mask_covid_1.png``: :func:`name_key`),
split aliases (:func:`resolve_split`) and the row problems readers report (:class:`RowProblem`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covseg.errors import DataError

MASK_PREFIXES = ("mask_", "mask-")
MASK_SUFFIXES = ("_mask", "-mask", "_gt", "_seg", "_label")
SPLIT_ALIASES = {
    "train": ("train", "training", "tr"),
    "valid": ("valid", "val", "validation"),
    "test": ("test", "testing", "ts"),
}


@dataclass
class TextEntry:
    """The text of one image: a default ``text``, named ``texts`` (prompts P0..Pn) and fields."""

    text: str | None
    texts: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RowProblem:
    """A row of a text source that could not be used."""

    source: Path
    row: int | None
    message: str

    def __str__(self) -> str:
        where = f"row {self.row}: " if self.row is not None else ""
        return f"{where}{self.message}"


def name_key(name: str | Path) -> str:
    """Lookup key of a file name: the stem without a ``mask_`` prefix (``mask_covid_1.png`` → ``covid_1``)."""
    from covseg.data.imageio import stem_of

    stem = stem_of(Path(str(name).replace("\\", "/")).name)
    low = stem.lower()
    for prefix in MASK_PREFIXES:
        if low.startswith(prefix) and len(stem) > len(prefix):
            return stem[len(prefix) :]
    return stem


class TextTable(Mapping[str, str]):
    """A ``{name: text}`` mapping in the source's own names, with the full entries behind it.

    ``table[name]`` is the default text; :meth:`entry` gives the :class:`TextEntry` (named
    prompts, structured fields); :meth:`find` and :meth:`lookup` accept an image or mask
    path and try the name forms sources use.
    """

    def __init__(
        self, entries: dict[str, TextEntry], source: Path | None = None, kind: str = "mapping"
    ) -> None:
        self.entries = entries
        self.source = source
        self.kind = kind
        self._by_key: dict[str, str] = {}
        for name in entries:
            self._by_key.setdefault(name_key(name), name)

    def __getitem__(self, key: str) -> str:
        text = self.entries[key].text
        return "" if text is None else text

    def entry(self, key: str) -> TextEntry:
        """The full entry (texts, meta) under the source's name ``key``."""
        return self.entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def find(self, *paths: str | Path | None) -> tuple[str, TextEntry] | None:
        """The entry for the first of ``paths`` (image, mask, case id) the table knows, with its key."""
        for p in paths:
            if p is None:
                continue
            text = str(p)
            name = Path(text.replace("\\", "/")).name
            for candidate in (text, name):
                if candidate in self.entries:
                    return candidate, self.entries[candidate]
            source_name = self._by_key.get(name_key(name))
            if source_name is not None:
                return source_name, self.entries[source_name]
        return None

    def lookup(self, *paths: str | Path | None) -> TextEntry | None:
        """The entry for the first of ``paths`` the table knows, or None."""
        found = self.find(*paths)
        return None if found is None else found[1]

    def texts(self) -> dict[str, str | None]:
        """Plain ``{name: default text}``."""
        return {k: v.text for k, v in self.entries.items()}


def _problem(problems: list[RowProblem] | None, source: Path, row: int | None, message: str) -> None:
    if problems is None:
        raise DataError(f"row {row}: {message}" if row is not None else message, source)
    problems.append(RowProblem(source, row, message))


def _add(entries: dict[str, TextEntry], key: str, entry: TextEntry, source: Path, row: int, problems) -> None:
    if key in entries:
        if entries[key].text != entry.text or entries[key].texts != entry.texts:
            _problem(problems, source, row, f"duplicate entry for {key!r} with a different text")
        return
    entries[key] = entry


def resolve_split(split: str, available: list[str]) -> str | None:
    """The name among ``available`` that means ``split`` (``val`` ↔ ``valid`` ↔ ``validation``)."""
    low = {a.lower(): a for a in available}
    if split.lower() in low:
        return low[split.lower()]
    for aliases in SPLIT_ALIASES.values():
        if split.lower() in aliases:
            for alias in aliases:
                if alias in low:
                    return low[alias]
    return None
