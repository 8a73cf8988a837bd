"""JCS pair lists (``train.txt``, ``test.txt``): ``image_path mask_path [label]`` per line."""

from __future__ import annotations

import re
from pathlib import Path

from covseg.data.imageio import IMAGE_SUFFIXES, NIFTI_SUFFIXES, stem_of, suffix_of
from covseg.data.index import DatasetIndex, Finding, finding
from covseg.data.layouts.common import (
    Layout,
    ReadOptions,
    natural_key,
    pick_split_file,
    register_builtin,
    resolve_path,
)
from covseg.data.sample import CaseRecord
from covseg.errors import DataError

_PAIR_SUFFIXES = (*IMAGE_SUFFIXES, *NIFTI_SUFFIXES, ".dcm", ".npy")


def _is_pair_list(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8-sig") as fh:
            lines = [ln.split() for ln in (fh.readline() for _ in range(20)) if ln.strip() and not ln.startswith("#")]
    except (OSError, UnicodeDecodeError):
        return False
    return bool(lines) and all(
        len(t) >= 2 and suffix_of(t[0]) in _PAIR_SUFFIXES and suffix_of(t[1]) in _PAIR_SUFFIXES for t in lines[:5]
    )


def _jcs_files(p: Path) -> dict[str, Path]:
    if p.is_file():
        return {p.stem: p}
    return {f.stem: f for f in sorted(p.glob("*.txt"), key=natural_key) if _is_pair_list(f)}


def _detect_jcs(p: Path) -> bool:
    if p.is_file():
        return p.suffix.lower() == ".txt" and _is_pair_list(p)
    return bool(_jcs_files(p))


def _jcs_splits(p: Path) -> list[str]:
    files = _jcs_files(p)
    return list(files) if len(files) > 1 else []


def _read_jcs(root: Path, split: str | None, opts: ReadOptions) -> DatasetIndex:
    """JCS pair lists (``train.txt``, ``test.txt``): ``image_path mask_path [label]`` per line,
    relative to the list's folder (or ``list_root``). A line with one path is an unlabelled image."""
    files = _jcs_files(root)
    if not files:
        raise DataError("no pair list (lines 'image_path mask_path')", root)
    path = pick_split_file(root, files, split)
    base = opts.list_root or path.parent
    findings: list[Finding] = []
    records: list[CaseRecord] = []
    seen: dict[str, int] = {}
    unlabelled = 0
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"pair list is not UTF-8 text ({exc.reason})", path) from None
    for n, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        unlabelled += len(tokens) == 1
        image = resolve_path(base, tokens[0])
        mask = resolve_path(base, tokens[1]) if len(tokens) > 1 else None
        label = int(tokens[2]) if len(tokens) > 2 and re.fullmatch(r"-?\d+", tokens[2]) else None
        case_id = stem_of(image)
        if case_id in seen:
            findings.append(finding("duplicate_case", path, f"line {n}: image {tokens[0]!r} already listed on line {seen[case_id]}"))
            continue
        seen[case_id] = n
        missing = [p for p in (image, mask) if p is not None and not p.is_file()]
        for p in missing:
            findings.append(finding("missing_file", p, f"listed in {path.name} line {n} but not found"))
        if image in missing:
            continue
        records.append(CaseRecord(case_id, image, mask if mask is not None and mask not in missing else None, label=label, meta={"line": n}))
    if unlabelled:
        findings.append(finding("unlabelled", path, f"{unlabelled} listed images have no mask"))
    return DatasetIndex(path.parent, "jcs", records, split, False, False, findings, info={"list": str(path)})


JCS = register_builtin(
    Layout(
        "jcs",
        "JCS pair lists: 'image_path mask_path' per line (train.txt, test.txt)",
        _detect_jcs,
        _read_jcs,
        _jcs_splits,
    ),
    __name__,
)
