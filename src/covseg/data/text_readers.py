"""Readers of the field's text formats: LViT spreadsheets, QaTa captions and annotations, CRIS prompts,
prompt CSVs and plain mappings, each into a :class:`~covseg.data.text_table.TextTable`.

Row problems go to the caller's ``problems`` list when given (``covseg data check`` lists them all),
else raise naming the file and row. :func:`covseg.data.text_sources.load_texts` picks the reader.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from covseg.data.table_files import _clean, _csv_rows, _find_column, _json, _xlsx_rows
from covseg.data.text_table import RowProblem, TextEntry, TextTable, _add, _problem, resolve_split
from covseg.errors import DataError

TEXT_COLUMNS = ("prompt", "text", "caption", "description", "sentence", "report")


# --- LViT / C2FVL spreadsheets -------------------------------------------------------------


def read_lvit_texts(
    path: str | Path,
    image_column: str = "Image",
    text_column: str = "Description",
    sheet: str | None = None,
    problems: list[RowProblem] | None = None,
) -> TextTable:
    """LViT's ``Train_text.xlsx`` / ``Val_text.xlsx`` / ``Test_text.xlsx``: ``Image`` → ``Description``.

    The ``Image`` cells hold mask file names (``mask_covid_1.png`` for QaTa, the image's own
    name for MoNuSeg); lookups by image or mask path find both.
    """
    path = Path(path)
    rows = _xlsx_rows(path, sheet)
    header_at = next((i for i, r in enumerate(rows) if any(c not in (None, "") for c in r)), None)
    if header_at is None:
        raise DataError("spreadsheet is empty", path)
    header = [str(c).strip() if c is not None else "" for c in rows[header_at]]
    icol = _find_column(header, image_column, path)
    tcol = _find_column(header, text_column, path)
    entries: dict[str, TextEntry] = {}
    for offset, row in enumerate(rows[header_at + 1 :], start=header_at + 2):
        cells = list(row) + [None] * (len(header) - len(row))
        name, text = _clean(cells[icol]), _clean(cells[tcol])
        if name is None and text is None:
            continue
        if name is None:
            _problem(problems, path, offset, f"empty {header[icol]!r} cell")
            continue
        if text is None:
            _problem(problems, path, offset, f"empty {header[tcol]!r} for {name!r} (missing caption)")
            continue
        _add(entries, name, TextEntry(text), path, offset, problems)
    return TextTable(entries, path, "lvit")


# --- QaTa-COV19 (SGSeg / LViT captions) -------------------------------------------------------

QATA_FIELDS = ("pulmonary_infection", "infected_area", "pseudo_label")


def _qata_meta(raw: Mapping[str, Any], source: Path, row: int | None, problems) -> dict[str, Any] | None:
    meta: dict[str, Any] = {}
    try:
        for name in ("pulmonary_infection", "infected_area"):
            value = raw.get(name)
            if value not in (None, ""):
                meta[name] = int(value)
        label = raw.get("pseudo_label")
        if label not in (None, ""):
            values = json.loads(label) if isinstance(label, str) else list(label)
            meta["pseudo_label"] = [int(v) for v in values]
    except (ValueError, TypeError) as exc:
        _problem(problems, source, row, f"bad structured field ({exc})")
        return None
    for name in ("orig_image", "orig_mask"):
        if raw.get(name):
            meta[name] = str(raw[name])
    return meta


def read_qata_captions(path: str | Path, problems: list[RowProblem] | None = None) -> TextTable:
    """QaTa ``captions.csv`` (``name, caption, pulmonary_infection, infected_area, pseudo_label``).

    ``name`` is the image stem. The structured fields go to ``TextEntry.meta``
    (``pseudo_label``: six 0/1 lung zones, left-upper .. right-lower, image sides).
    """
    path = Path(path)
    header, rows = _csv_rows(path)
    ncol = _find_column(header, ("name", "image", "image_path"), path)
    ccol = _find_column(header, ("caption", "text", "description"), path)
    entries: dict[str, TextEntry] = {}
    for line, cells in rows:
        raw = {h: (cells[i] if i < len(cells) else None) for i, h in enumerate(header)}
        name, caption = (
            _clean(cells[ncol] if ncol < len(cells) else None),
            _clean(cells[ccol] if ccol < len(cells) else None),
        )
        if name is None:
            _problem(problems, path, line, f"empty {header[ncol]!r} cell")
            continue
        if caption is None:
            _problem(problems, path, line, f"empty {header[ccol]!r} for {name!r} (missing caption)")
            continue
        meta = _qata_meta(raw, path, line, problems)
        if meta is None:
            continue
        _add(entries, name, TextEntry(caption, meta=meta), path, line, problems)
    return TextTable(entries, path, "qata-captions")


def read_qata_annotation(
    path: str | Path, split: str | None = None, problems: list[RowProblem] | None = None
) -> TextTable:
    """QaTa/SGSeg ``annotation.json``: ``{split: [{image_path, caption, ...fields}]}``.

    ``image_path`` names the mask (``mask_covid_1.png``). ``split`` picks one list
    (``val`` finds ``valid``); None merges all. Entries are keyed by ``image_path``.
    """
    path = Path(path)
    data = _json(path)
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise DataError("expected an object of split name → list of annotations", path)
    if split is not None:
        key = resolve_split(split, list(data))
        if key is None:
            raise DataError(f"no split {split!r} (splits: {', '.join(data)})", path)
        lists = {key: data[key]}
    else:
        lists = data
    entries: dict[str, TextEntry] = {}
    for split_name, items in lists.items():
        for i, item in enumerate(items):
            where = f"{split_name}[{i}]"
            if not isinstance(item, dict) or not item.get("image_path"):
                _problem(problems, path, None, f"{where}: no 'image_path'")
                continue
            caption = _clean(item.get("caption"))
            if caption is None:
                _problem(
                    problems,
                    path,
                    None,
                    f"{where}: empty 'caption' for {item['image_path']!r} (missing caption)",
                )
                continue
            meta = _qata_meta(item, path, None, problems)
            if meta is None:
                continue
            meta["split"] = split_name
            _add(entries, str(item["image_path"]), TextEntry(caption, meta=meta), path, i, problems)
    return TextTable(entries, path, "qata-annotation")


# --- CRIS / Ref-COCO-style JSON (medvlsm prompts P0..Pn) -------------------------------------


def read_cris_prompts(
    path: str | Path, prompt: str | None = None, problems: list[RowProblem] | None = None
) -> TextTable:
    """CRIS-style JSON list of ``{img_name, mask_name, prompts: {p0..pn} | sentences: [...]}``.

    Keyed by ``mask_name`` (several referring masks share an image). ``texts`` holds every
    prompt (a list-valued prompt gives its first phrasing; all are in ``meta["prompt_choices"]``),
    or ``sent0..`` from ``sentences``. ``text`` is ``prompt`` (case-insensitive, e.g. ``P0``)
    or the first prompt.
    """
    path = Path(path)
    data = _json(path)
    if isinstance(data, dict):
        for key in ("annotations", "refs", "data"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
    if not isinstance(data, list):
        raise DataError("expected a JSON list of annotations with 'img_name' and 'mask_name'", path)
    entries: dict[str, TextEntry] = {}
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not item.get("mask_name"):
            _problem(problems, path, None, f"item {i}: no 'mask_name'")
            continue
        texts, choices = _cris_texts(item)
        if not texts:
            _problem(
                problems,
                path,
                None,
                f"item {i}: no prompts or sentences for {item['mask_name']!r} (missing text)",
            )
            continue
        text = _pick_prompt(texts, prompt)
        if text is None:
            _problem(
                problems,
                path,
                None,
                f"item {i}: no prompt {prompt!r} for {item['mask_name']!r} (has {', '.join(texts)})",
            )
            continue
        meta = {k: item[k] for k in ("img_name", "mask_name", "bbox", "cat", "segment_id") if k in item}
        if choices:
            meta["prompt_choices"] = choices
        _add(entries, str(item["mask_name"]), TextEntry(text, texts, meta), path, i, problems)
    return TextTable(entries, path, "cris")


def _cris_texts(item: dict) -> tuple[dict[str, str], dict[str, list[str]]]:
    texts: dict[str, str] = {}
    choices: dict[str, list[str]] = {}
    prompts = item.get("prompts")
    if isinstance(prompts, dict):
        for key, value in prompts.items():
            if isinstance(value, (list, tuple)):
                options = [t for t in (_clean(v) for v in value) if t]
                if options:
                    texts[str(key)] = options[0]
                    choices[str(key)] = options
            elif _clean(value):
                texts[str(key)] = _clean(value)  # type: ignore[assignment]
    if not texts:
        for j, sent in enumerate(item.get("sentences") or []):
            value = sent.get("sent") if isinstance(sent, dict) else sent
            if _clean(value):
                texts[f"sent{j}"] = _clean(value)  # type: ignore[assignment]
    return texts, choices


def _pick_prompt(texts: dict[str, str], prompt: str | None) -> str | None:
    if prompt is None:
        return next(iter(texts.values()))
    for key, value in texts.items():
        if key.lower() == prompt.lower():
            return value
    return None


# --- CSV prompt column (BiomedParse-style pairs.csv) --------------------------------------------


def read_csv_texts(
    path: str | Path,
    key_column: str | None = None,
    text_column: str | None = None,
    problems: list[RowProblem] | None = None,
) -> TextTable:
    """A CSV with a file column and a text column.

    ``key_column`` defaults to ``mask`` when present (one row per target), else ``image``;
    ``text_column`` defaults to the first of prompt, text, caption, description, sentence.
    Several rows for one key keep the first as ``text`` and all in ``texts`` (``row<N>``).
    """
    path = Path(path)
    header, rows = _csv_rows(path)
    if key_column is None:
        kcol = _find_column(
            header, ("mask", "mask_path", "label", "image", "image_path", "img", "name"), path
        )
    else:
        kcol = _find_column(header, key_column, path)
    tcol = _find_column(header, text_column if text_column is not None else TEXT_COLUMNS, path)
    entries: dict[str, TextEntry] = {}
    for line, cells in rows:
        key = _clean(cells[kcol] if kcol < len(cells) else None)
        text = _clean(cells[tcol] if tcol < len(cells) else None)
        if key is None:
            _problem(problems, path, line, f"empty {header[kcol]!r} cell")
            continue
        if text is None:
            _problem(problems, path, line, f"empty {header[tcol]!r} for {key!r} (missing text)")
            continue
        if key in entries:
            entries[key].texts[f"row{line}"] = text
        else:
            entries[key] = TextEntry(text, {f"row{line}": text})
    return TextTable(entries, path, "csv")


# --- plain mappings ----------------------------------------------------------------------------


def read_text_mapping(source: Mapping[str, Any] | str | Path) -> TextTable:
    """A plain ``{file name or stem: text}`` mapping, from a dict, a JSON object or a text file.

    Text files hold one ``name<TAB>text`` (or ``name,text``) pair per line; ``#`` starts a comment.
    Values may be strings or ``{name: text}`` dicts of named variants.
    """
    if isinstance(source, Mapping):
        return TextTable({str(k): _entry_from_value(v, None, k) for k, v in source.items()}, None, "mapping")
    path = Path(source)
    if path.suffix.lower() == ".json":
        data = _json(path)
        if not isinstance(data, dict):
            raise DataError("expected a JSON object of name → text", path)
        return TextTable({str(k): _entry_from_value(v, path, k) for k, v in data.items()}, path, "mapping")
    if not path.exists():
        raise DataError("file not found", path)
    entries: dict[str, TextEntry] = {}
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"text file is not UTF-8 ({exc.reason})", path) from None
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        sep = "\t" if "\t" in line else ","
        if sep not in line:
            raise DataError(f"row {n}: expected 'name<TAB>text'", path)
        name, text = line.split(sep, 1)
        if not text.strip():
            raise DataError(f"row {n}: empty text for {name.strip()!r} (missing caption)", path)
        name, text = name.strip(), text.strip()
        if name in entries and entries[name].text != text:
            raise DataError(f"row {n}: {name!r} is listed twice with different texts; keep one", path)
        entries[name] = TextEntry(text)
    return TextTable(entries, path, "mapping")


def _entry_from_value(value: Any, path: Path | None, key: Any) -> TextEntry:
    if isinstance(value, TextEntry):
        return value
    if isinstance(value, Mapping):
        texts = {str(k): str(v) for k, v in value.items() if _clean(v)}
        if not texts:
            raise DataError(f"no text for {key!r}", path)
        return TextEntry(next(iter(texts.values())), texts)
    text = _clean(value)
    if text is None:
        raise DataError(f"empty text for {key!r} (missing caption)", path)
    return TextEntry(text)
