"""Image-level labels for joint classification: a labels CSV, a dataset's own labels, or the masks.

Three sources, one rule each (class 0 is always the negative class, no infection):

- ``masks``: a case with a non-empty mask is positive (1), an empty mask negative (0);
- ``layout``: the label the dataset layout read (the third column of JCS pair lists), the mask
  rule where a case has none;
- a labels CSV (COVID-CS-style data, mostly images with a class and few with a mask): columns
  ``image`` and ``label``; ``image`` is a path relative to the CSV (or absolute), a file name or a
  stem of a dataset case; ``label`` a class index or a class name from ``label_names``. Images the
  CSV names that the dataset does not hold become label-only cases (no mask: they train the
  classification term and leave the segmentation loss untouched). Cases of the dataset the CSV
  does not list fall back to the mask rule. An optional ``patient`` column names each image's
  patient, for patient-level diagnosis in ``covseg evaluate``.

Every problem is one line naming the CSV and its row. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from covseg.data.imageio import stem_of
from covseg.data.sample import CaseRecord
from covseg.errors import DataError

LABEL_SOURCES: tuple[str, ...] = ("masks", "layout")
DEFAULT_LABEL_NAMES: tuple[str, ...] = ("negative", "positive")
IMAGE_COLUMNS = ("image", "image_path", "file", "filename", "path")
LABEL_COLUMNS = ("label", "class", "target")
PATIENT_COLUMNS = ("patient", "patient_id", "subject")


def label_from_mask(mask: np.ndarray | None) -> int | None:
    """1 where the mask has foreground, 0 where it is empty, None without a mask."""
    if mask is None:
        return None
    return int(bool(np.any(np.asarray(mask) > 0)))


@dataclass
class LabelTable:
    """The rows of a labels CSV: resolved image paths with their class index, and lookups."""

    source: Path
    names: list[str]
    rows: list[tuple[int, Path, int]] = field(default_factory=list)  # (CSV line, image, class)
    patients: dict[Path, str] = field(default_factory=dict)  # image → patient, where the CSV has a patient column

    def __post_init__(self) -> None:
        self.by_path = {p.resolve(): (line, c) for line, p, c in self.rows}
        by_name: dict[str, list[tuple[int, int]]] = {}
        for line, p, c in self.rows:
            for key in {p.name, stem_of(p)}:
                by_name.setdefault(key, []).append((line, c))
        self.by_name = by_name

    def lookup(self, record: CaseRecord) -> tuple[int, int] | None:
        """``(CSV line, class)`` of a dataset case: by path, then by file name or stem (when unambiguous)."""
        hit = self.by_path.get(Path(record.image).resolve())
        if hit is not None:
            return hit
        for key in (Path(record.image).name, str(record.case_id), stem_of(Path(record.image))):
            found = self.by_name.get(key)
            if found is not None and len({c for _, c in found}) == 1:
                return found[0]
        return None


def _class_index(value: str, names: Sequence[str] | None, source: Path, line: int) -> int:
    text = value.strip()
    if names is not None:
        lowered = [n.lower() for n in names]
        if text.lower() in lowered:
            return lowered.index(text.lower())
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not number.is_integer():
        hint = f"one of {', '.join(names)}" if names else "a class index (0 = negative) or set data.label_names"
        raise DataError(f"row {line}: label {value!r} is not {hint}", source)
    index = int(number)
    if index < 0 or (names is not None and index >= len(names)):
        raise DataError(f"row {line}: label {index} outside the classes {list(names or [])}", source)
    return index


def read_labels_csv(path: str | Path, names: Sequence[str] | None = None) -> LabelTable:
    """Read an ``image,label`` CSV; ``names`` (negative class first) map text labels to class indices."""
    from covseg.data.layouts.common import resolve_path
    from covseg.data.text_sources import _csv_rows, _find_column

    path = Path(path)
    header, rows = _csv_rows(path)
    icol = _find_column(header, IMAGE_COLUMNS, path)
    lcol = _find_column(header, LABEL_COLUMNS, path)
    pcol = _find_column(header, PATIENT_COLUMNS, path, required=False)
    table_rows: list[tuple[int, Path, int]] = []
    patients: dict[Path, str] = {}
    seen: dict[Path, int] = {}
    for line, cells in rows:
        image = cells[icol].strip() if icol < len(cells) else ""
        label = cells[lcol].strip() if lcol < len(cells) else ""
        if not image or not label:
            raise DataError(f"row {line}: empty {'image' if not image else 'label'} cell", path)
        resolved = resolve_path(path.parent, image)
        index = _class_index(label, names, path, line)
        key = resolved.resolve()
        if key in seen:
            raise DataError(f"row {line}: image {image!r} already listed on row {seen[key]}", path)
        seen[key] = line
        table_rows.append((line, resolved, index))
        if pcol is not None:
            patient = cells[pcol].strip() if pcol < len(cells) else ""
            if not patient:
                raise DataError(f"row {line}: empty patient cell", path)
            patients[resolved] = patient
    if not table_rows:
        raise DataError("labels CSV has no rows", path)
    top = max(c for _, _, c in table_rows)
    resolved_names = list(names) if names is not None else [*DEFAULT_LABEL_NAMES, *(f"class{c}" for c in range(2, top + 1))]
    return LabelTable(path, resolved_names, table_rows, patients)


def apply_labels_csv(records: list[CaseRecord], table: LabelTable) -> tuple[list[CaseRecord], list[CaseRecord]]:
    """``(labelled dataset cases, label-only cases)``: CSV classes set on matching cases; rows that match
    none become label-only cases, which must exist as files."""
    used: set[int] = set()
    out = []
    for rec in records:
        hit = table.lookup(rec)
        if hit is None:
            out.append(rec)
            continue
        line, cls = hit
        used.add(line)
        out.append(dataclasses.replace(rec, label=cls, meta={**rec.meta, "label_source": "csv"}))
    ids = {str(r.case_id) for r in records}
    label_only = []
    for line, image, cls in table.rows:
        if line in used:
            continue
        if not image.is_file():
            raise DataError(f"row {line}: image {image.name!r} is neither a file nor a case of the dataset", table.source)
        case_id = stem_of(image)
        if case_id in ids:
            raise DataError(f"row {line}: {image.name!r} has the id of a dataset case but another file", table.source)
        ids.add(case_id)
        label_only.append(CaseRecord(case_id, image, None, label=cls, meta={"label_source": "csv", "label_only": True}))
    return out, label_only


def label_counts(labels: Sequence[int], names: Sequence[str]) -> dict[str, int]:
    """Cases per class name (every class listed, zeros included)."""
    counts = Counter(int(v) for v in labels)
    return {name: int(counts.get(i, 0)) for i, name in enumerate(names)}
