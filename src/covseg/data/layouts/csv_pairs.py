"""A CSV with image, mask and prompt/text columns, one row per target mask (BiomedParse ``pairs.csv``)."""

from __future__ import annotations

from pathlib import Path

from covseg.data.imageio import IMAGE_SUFFIXES, NIFTI_SUFFIXES, stem_of, suffix_of
from covseg.data.index import DatasetIndex, Finding, finding
from covseg.data.layouts.common import (
    Layout,
    ReadOptions,
    attach_text_source,
    natural_key,
    pick_split_file,
    register_builtin,
    resolve_path,
)
from covseg.data.sample import CaseRecord
from covseg.data.text_sources import TEXT_COLUMNS, _csv_rows, _find_column
from covseg.errors import DataError

CSV_IMAGE_COLUMNS = ("image", "image_path", "img", "img_path", "image_file")
CSV_MASK_COLUMNS = ("mask", "mask_path", "label", "label_path", "mask_file", "gt")


def _csv_header(path: Path) -> list[str]:
    try:
        with path.open(encoding="utf-8-sig") as fh:
            first = fh.readline()
    except (OSError, UnicodeDecodeError):
        return []
    delimiter = max(",;\t", key=first.count)
    return [h.strip().strip('"').lower() for h in first.strip().split(delimiter)]


def _is_pair_csv(path: Path) -> bool:
    header = _csv_header(path)
    if not any(c in header for c in CSV_IMAGE_COLUMNS):
        return False
    mask_columns = [c for c in CSV_MASK_COLUMNS if c in header]
    if mask_columns == ["label"]:  # an image-level labels CSV (image,label = class) is not a pair list
        return _first_cell_is_file(path, header.index("label"))
    return bool(mask_columns)


def _first_cell_is_file(path: Path, column: int) -> bool:
    """Whether the first data row's cell in ``column`` names an image or mask file (by its suffix)."""
    try:
        with path.open(encoding="utf-8-sig") as fh:
            header_line, row = fh.readline(), fh.readline()
    except (OSError, UnicodeDecodeError):
        return False
    delimiter = max(",;\t", key=header_line.count)
    cells = [c.strip().strip('"') for c in row.strip().split(delimiter)]
    return column < len(cells) and suffix_of(cells[column]) in (*IMAGE_SUFFIXES, *NIFTI_SUFFIXES, ".npy", ".dcm")


def _csv_files(p: Path) -> dict[str, Path]:
    if p.is_file():
        return {p.stem: p}
    return {f.stem: f for f in sorted(p.glob("*.csv"), key=natural_key) if _is_pair_csv(f)}


def _detect_csv(p: Path) -> bool:
    if p.is_file():
        return suffix_of(p) == ".csv" and _is_pair_csv(p)
    return bool(_csv_files(p))


def _csv_splits(p: Path) -> list[str]:
    files = _csv_files(p)
    return list(files) if len(files) > 1 else []


def _read_csv(root: Path, split: str | None, opts: ReadOptions) -> DatasetIndex:
    """A CSV with image and mask columns (paths relative to the CSV) and optionally a text column
    (prompt, text, caption, ...). One case per row, named by the mask's stem; other columns go to meta."""
    files = _csv_files(root)
    if not files:
        raise DataError("no CSV with image and mask columns", root)
    path = pick_split_file(root, files, split)
    header, rows = _csv_rows(path)
    icol = _find_column(header, CSV_IMAGE_COLUMNS, path)
    mcol = _find_column(header, CSV_MASK_COLUMNS, path)
    tcol = _find_column(header, opts.text_column or TEXT_COLUMNS, path, required=opts.text_column is not None)
    base = path.parent
    findings: list[Finding] = []
    records: list[CaseRecord] = []
    seen: dict[str, int] = {}
    for line, cells in rows:
        cell = {i: (cells[i].strip() if i < len(cells) else "") for i in range(len(header))}
        if not cell[icol]:
            findings.append(finding("missing_file", path, f"row {line}: empty {header[icol]!r} cell"))
            continue
        image = resolve_path(base, cell[icol])
        mask = resolve_path(base, cell[mcol]) if cell[mcol] else None
        case_id = stem_of(mask if mask is not None else image)
        if case_id in seen:
            findings.append(finding("duplicate_case", path, f"row {line}: case {case_id!r} already given in row {seen[case_id]}"))
            continue
        seen[case_id] = line
        bad = False
        for p in (image, mask):
            if p is not None and not p.is_file():
                findings.append(finding("missing_file", p, f"named in {path.name} row {line} but not found"))
                bad = bad or p == image
        if bad:
            continue
        text = cell[tcol] if tcol is not None else None
        if tcol is not None and not text:
            findings.append(finding("missing_text", image, f"{path.name} row {line}: empty {header[tcol]!r}"))
            text = None
        skip = {icol, mcol} | ({tcol} if tcol is not None else set())
        meta = {header[i]: v for i, v in cell.items() if i not in skip and v}
        meta["row"] = line
        records.append(
            CaseRecord(case_id, image, mask if mask is not None and mask.is_file() else None, text=text or None, meta=meta)
        )
    if mcol is not None and not any(r.mask for r in records) and records:
        findings.append(finding("unlabelled", path, f"{len(records)} rows without masks"))
    index = DatasetIndex(base, "csv", records, split, tcol is not None, False, findings, info={"csv": str(path)})
    return attach_text_source(index, split, opts)


CSV = register_builtin(
    Layout(
        "csv",
        "CSV with image, mask and prompt/text columns (one row per target mask)",
        _detect_csv,
        _read_csv,
        _csv_splits,
        True,
    ),
    __name__,
)
