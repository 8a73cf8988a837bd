"""Rows of the tables text and labels come in: CSV, spreadsheet (xlsx) and JSON files, and their columns.

Shared by the text readers (:mod:`covseg.data.text_readers`), the image-label lists
(:mod:`covseg.data.labels`), the pair-list layouts and the metric tables; every structural problem
(unreadable file, missing column) is one :class:`~covseg.errors.DataError` naming the file and column.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from covseg.errors import DataError
from covseg.utils.outputs import from_spreadsheet_safe


def _find_column(
    header: list[str], wanted: str | tuple[str, ...], source: Path, required: bool = True
) -> int | None:
    names = (wanted,) if isinstance(wanted, str) else wanted
    lowered = [str(h).strip().lower() if h is not None else "" for h in header]
    for name in names:
        if name.lower() in lowered:
            return lowered.index(name.lower())
    if required:
        shown = ", ".join(str(h) for h in header if h not in (None, "")) or "none"
        raise DataError(f"column {names[0]!r} not found (columns: {shown})", source)
    return None


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _xlsx_rows(path: Path, sheet: str | None) -> list[tuple]:
    if not path.exists():
        raise DataError("file not found", path)
    try:
        import openpyxl

        wb = openpyxl.load_workbook(str(path), read_only=True, data_only=True)
    except Exception as exc:
        raise DataError(f"unreadable spreadsheet ({type(exc).__name__}: {exc})", path) from None
    try:
        if sheet is not None and sheet not in wb.sheetnames:
            raise DataError(f"sheet {sheet!r} not found (sheets: {', '.join(wb.sheetnames)})", path)
        ws = wb[sheet] if sheet is not None else wb.worksheets[0]
        return [tuple(r) for r in ws.iter_rows(values_only=True)]
    finally:
        wb.close()


def _csv_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    if not path.exists():
        raise DataError("file not found", path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            first = fh.readline()
            fh.seek(0)
            delimiter = max(",;\t", key=first.count)  # the header decides: captions hold commas
            reader = csv.reader(fh, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise DataError("CSV file is empty", path)
            # covseg's own CSVs (captions.csv, predictions.csv) read back as written: no formula guard apostrophe
            rows = [
                (reader.line_num, [from_spreadsheet_safe(c) for c in row])
                for row in reader
                if any(c.strip() for c in row)
            ]
    except UnicodeDecodeError as exc:
        raise DataError(f"CSV is not UTF-8 text ({exc.reason})", path) from None
    except csv.Error as exc:
        raise DataError(f"unreadable CSV ({exc})", path) from None
    return [h.strip() for h in header], rows


_JSON_CACHE: dict[tuple[str, float, int], Any] = {}


def _json(path: Path) -> Any:
    if not path.exists():
        raise DataError("file not found", path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime, stat.st_size)
    if key not in _JSON_CACHE:
        try:
            _JSON_CACHE.clear()
            _JSON_CACHE[key] = json.loads(path.read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"unreadable JSON ({exc})", path) from None
    return _JSON_CACHE[key]
