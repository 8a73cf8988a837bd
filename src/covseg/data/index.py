"""What a layout reader returns: the cases of one dataset (split) and the problems seen on the way.

Problems are :class:`Finding` objects whose severity comes from :data:`SEVERITY`, the one
table that decides what ``covseg data check`` treats as an error.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covseg.data.sample import CaseRecord

# Errors make `covseg data check` exit non-zero: the data would train or evaluate wrongly.
# Warnings are legitimate but worth knowing (with --strict they fail the check too).
# Info is reported only.
SEVERITY: dict[str, str] = {
    "orphan_mask": "error",  # a mask (or edge) file with no image of the same stem
    "orphan_image": "error",  # an image without a mask in a folder where the other images have one
    "missing_file": "error",  # a list, CSV or JSON names a file that is not there
    "duplicate_case": "error",  # two images (or rows) give the same case id
    "unreadable": "error",  # a file that cannot be decoded (truncated, not an image, bad DICOM)
    "size_mismatch": "error",  # image and mask (edge, extra mask) differ in size
    "geometry_mismatch": "error",  # a 3D mask's affine differs from its image's
    "non_binary_mask": "error",  # grey levels or colours that are neither 0/1, 0/255 nor class indices
    "nan_volume": "error",  # NaN or infinite voxels/pixels
    "missing_text": "error",  # a layout with text (LViT, QaTa, CRIS, prompt CSV) lacks it for a case
    "bad_text_row": "error",  # a text source row that cannot be used (empty caption, duplicate key)
    "empty_mask": "warning",  # no foreground (legitimate for healthy slices, wrong for lesion-only sets)
    "unlabelled": "warning",  # images in a split that has no masks at all (semi-supervised pools)
    "unused_text": "info",  # text entries whose image is not in the folder (e.g. a subset of QaTa)
    "multiclass_mask": "info",  # the main mask holds class indices > 1 (read as labels, not binarised)
    "ignored": "info",  # files or folders the layout does not use
}


@dataclass(frozen=True)
class Finding:
    """One problem, naming the file it concerns (``path``) and what is wrong (``message``)."""

    kind: str
    path: str | None
    message: str

    @property
    def severity(self) -> str:
        return SEVERITY.get(self.kind, "error")

    def to_dict(self) -> dict[str, Any]:
        return {"severity": self.severity, "kind": self.kind, "path": self.path, "message": self.message}

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def finding(kind: str, path: str | Path | None, message: str) -> Finding:
    """Build a :class:`Finding`; ``kind`` must be one of :data:`SEVERITY`."""
    if kind not in SEVERITY:
        raise ValueError(f"unknown finding kind {kind!r}")
    return Finding(kind, None if path is None else str(path), message)


@dataclass
class DatasetIndex:
    """The cases of one dataset or split, as :class:`CaseRecord` s, plus indexing findings.

    ``has_text`` says the layout carries text (a case without text is then an error);
    ``splits`` lists the splits merged into this index (their names prefix the case ids).
    """

    root: Path
    layout: str
    records: list[CaseRecord]
    split: str | None = None
    has_text: bool = False
    volumetric: bool = False
    findings: list[Finding] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[CaseRecord]:
        return iter(self.records)

    def __getitem__(self, key: int | str) -> CaseRecord:
        if isinstance(key, int):
            return self.records[key]
        for rec in self.records:
            if rec.case_id == key:
                return rec
        raise KeyError(f"no case {key!r} in {self.root}")

    @property
    def case_ids(self) -> list[str]:
        return [r.case_id for r in self.records]

    def select(self, ids: Iterable[str]) -> DatasetIndex:
        """A copy holding only the cases whose id (or id without split prefix) is in ``ids``, in that order."""
        by_id: dict[str, CaseRecord] = {}
        for rec in self.records:
            by_id.setdefault(rec.case_id, rec)
            by_id.setdefault(rec.case_id.rsplit("/", 1)[-1], rec)
        wanted = [str(i).strip() for i in ids if str(i).strip()]
        missing = [i for i in wanted if i not in by_id]
        if missing:
            from covseg.errors import DataError

            raise DataError(f"{len(missing)} requested case id(s) not found, e.g. {', '.join(missing[:5])}", self.root)
        return DatasetIndex(
            self.root, self.layout, [by_id[i] for i in wanted], self.split, self.has_text, self.volumetric,
            list(self.findings), list(self.splits), dict(self.info),
        )

    def summary(self) -> dict[str, Any]:
        """Counts for display: cases, labelled, with edge/text, extra masks, findings by severity."""
        extra = Counter(name for r in self.records for name in r.masks)
        severities = Counter(f.severity for f in self.findings)
        return {
            "root": str(self.root),
            "layout": self.layout,
            "split": self.split,
            "splits": list(self.splits),
            "cases": len(self.records),
            "labelled": sum(r.mask is not None for r in self.records),
            "unlabelled": sum(r.mask is None for r in self.records),
            "with_edge": sum(r.edge is not None for r in self.records),
            "with_text": sum(r.text is not None for r in self.records),
            "has_text": self.has_text,
            "volumetric": self.volumetric,
            "extra_masks": dict(extra),
            "errors": severities.get("error", 0),
            "warnings": severities.get("warning", 0),
            "info": severities.get("info", 0),
        }
