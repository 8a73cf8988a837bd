"""Text that goes with images: captions, descriptions and prompts in the field's file formats.

Every reader returns a :class:`TextTable`: a mapping from the file name (or stem) the source
uses to a :class:`TextEntry` (default text, named variants, structured fields). Lookups
accept an image or mask path and try the forms the sources use (``covid_1``,
``covid_1.png``, ``mask_covid_1.png``).

Structural problems (unreadable file, missing column) raise :class:`DataError` naming the
file and the column. Row problems (an empty caption, a duplicate key) raise too, naming the
row, unless the caller passes a ``problems`` list: then each is appended as a
:class:`RowProblem` and the row is skipped, so ``covseg data check`` can list them all.

The pieces live beside this module, which picks the reader (:func:`load_texts`) and keeps every
name importable from here: :mod:`covseg.data.text_table` (the table, name keys, splits),
:mod:`covseg.data.text_readers` (one reader per format), :mod:`covseg.data.table_files` (CSV,
spreadsheet and JSON rows).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from covseg.data.table_files import _csv_rows, _json

# private CSV helpers that metrics, labels and layouts import from here (explicit re-export)
from covseg.data.table_files import _find_column as _find_column
from covseg.data.text_readers import (
    QATA_FIELDS,
    TEXT_COLUMNS,
    read_cris_prompts,
    read_csv_texts,
    read_lvit_texts,
    read_qata_annotation,
    read_qata_captions,
    read_text_mapping,
)
from covseg.data.text_table import (
    MASK_PREFIXES,
    MASK_SUFFIXES,
    SPLIT_ALIASES,
    RowProblem,
    TextEntry,
    TextTable,
    name_key,
    resolve_split,
)
from covseg.errors import DataError

__all__ = [
    "MASK_PREFIXES",
    "MASK_SUFFIXES",
    "QATA_FIELDS",
    "SPLIT_ALIASES",
    "TEXT_COLUMNS",
    "RowProblem",
    "TextEntry",
    "TextTable",
    "load_texts",
    "name_key",
    "read_cris_prompts",
    "read_csv_texts",
    "read_lvit_texts",
    "read_qata_annotation",
    "read_qata_captions",
    "read_text_mapping",
    "resolve_split",
]


def load_texts(
    source: Mapping[str, Any] | str | Path | TextTable,
    *,
    split: str | None = None,
    prompt: str | None = None,
    column: str | None = None,
    problems: list[RowProblem] | None = None,
) -> TextTable:
    """Read any supported text source, choosing the reader from the file's type and content.

    ``.xlsx`` → LViT; ``.csv`` → QaTa captions when it has ``name`` and ``caption`` columns,
    else a prompt CSV (``column`` names the text column); ``.json`` → QaTa annotation
    (object of lists), CRIS prompts (list) or a plain mapping (object of strings);
    ``.txt``/``.tsv`` → plain mapping; a dict → plain mapping.
    """
    if isinstance(source, TextTable):
        return source
    if isinstance(source, Mapping):
        return read_text_mapping(source)
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xlsm"):
        return read_lvit_texts(path, text_column=column or "Description", problems=problems)
    if suffix == ".csv":
        header, _ = _csv_rows(path)
        lowered = {h.lower() for h in header}
        if column is None and {"name", "caption"} <= lowered:
            return read_qata_captions(path, problems=problems)
        return read_csv_texts(path, text_column=column, problems=problems)
    if suffix == ".json":
        data = _json(path)
        if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
            return read_qata_annotation(path, split=split, problems=problems)
        if isinstance(data, list) or (
            isinstance(data, dict) and any(isinstance(data.get(k), list) for k in ("annotations", "refs"))
        ):
            return read_cris_prompts(path, prompt=prompt, problems=problems)
        return read_text_mapping(path)
    if suffix in (".txt", ".tsv", ""):
        return read_text_mapping(path)
    raise DataError("unknown text source type (use .xlsx, .csv, .json, .txt or .tsv)", path)
