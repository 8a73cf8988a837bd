"""CRIS / medvlsm JSON lists: ``[{img_name, mask_name, prompts{p0..}}]`` + ``images/ masks/``."""

from __future__ import annotations

from pathlib import Path

from covseg.data.imageio import stem_of, suffix_of
from covseg.data.index import DatasetIndex, Finding, finding
from covseg.data.layouts.common import (
    Layout,
    ReadOptions,
    attach_text_source,
    child_dir,
    natural_key,
    pick_split_file,
    register_builtin,
    resolve_path,
)
from covseg.data.sample import CaseRecord
from covseg.data.text_sources import RowProblem, read_cris_prompts
from covseg.errors import DataError


def _looks_like_cris(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8-sig") as fh:
            head = fh.read(65536)
    except (OSError, UnicodeDecodeError):
        return False
    return head.lstrip().startswith("[") and '"mask_name"' in head and '"img_name"' in head


def _cris_files(p: Path) -> dict[str, Path]:
    if p.is_file():
        return {p.stem: p}
    out: dict[str, Path] = {}
    for folder in (child_dir(p, "anns"), child_dir(p, "annotations"), p):
        if folder is None:
            continue
        for f in sorted(folder.glob("*.json"), key=natural_key):
            if _looks_like_cris(f):
                out.setdefault(f.stem, f)
        if out:
            break
    return out


def _cris_folder(base: Path, ann: Path, kind: str) -> Path | None:
    """``images``/``masks`` for a CRIS JSON: beside it, above it, or CRIS's own
    ``datasets/{anns,images,masks}/<name>/`` (``anns/<name>/train.json`` → ``images/<name>/``)."""
    for folder in (base, ann.parent, ann.parent.parent):
        if (found := child_dir(folder, kind)) is not None:
            return found
    cris_root = ann.parent.parent.parent if ann.parent.parent.name.lower() in ("anns", "annotations") else None
    if cris_root is not None and (found := child_dir(cris_root, kind)) is not None:
        return child_dir(found, ann.parent.name)
    return None


def _detect_cris(p: Path) -> bool:
    if p.is_file():
        return suffix_of(p) == ".json" and _looks_like_cris(p)
    files = _cris_files(p)
    return bool(files) and _cris_folder(p, next(iter(files.values())), "images") is not None


def _cris_splits(p: Path) -> list[str]:
    files = _cris_files(p)
    return list(files) if len(files) > 1 else []


def _read_cris(root: Path, split: str | None, opts: ReadOptions) -> DatasetIndex:
    """CRIS-style JSON lists (``anns/<split>.json``) of ``img_name``, ``mask_name`` and ``prompts``
    (``p0..pn``, medvlsm) or ``sentences`` (Ref-COCO); images in ``images/``, masks in ``masks/``
    (or CRIS's ``datasets/images/<name>/`` for ``datasets/anns/<name>/<split>.json``). One case per mask."""
    files = _cris_files(root)
    if not files:
        raise DataError("no CRIS-style JSON (a list of objects with img_name and mask_name)", root)
    ann = pick_split_file(root, files, split)
    base = root if root.is_dir() else root.parent
    image_dir = opts.image_dir or _cris_folder(base, ann, "images")
    mask_dir = opts.mask_dir or _cris_folder(base, ann, "masks")
    if image_dir is None or mask_dir is None:
        raise DataError("images/ and masks/ folders not found beside the JSON (give image_dir and mask_dir)", ann)
    findings: list[Finding] = []
    problems: list[RowProblem] = []
    table = read_cris_prompts(ann, prompt=opts.prompt, problems=problems)
    findings.extend(finding("bad_text_row", p.source, str(p)) for p in problems)
    records: list[CaseRecord] = []
    seen: dict[str, Path] = {}
    for mask_name, entry in table.entries.items():
        image = resolve_path(image_dir, str(entry.meta.get("img_name", "")))
        mask = resolve_path(mask_dir, mask_name)
        case_id = stem_of(mask_name)
        if case_id in seen:
            findings.append(finding("duplicate_case", mask, f"case id {case_id!r} appears twice in {ann.name}"))
            continue
        seen[case_id] = mask
        missing = [p for p in (image, mask) if not p.is_file()]
        for p in missing:
            findings.append(finding("missing_file", p, f"named in {ann.name} but not found"))
        if image in missing:
            continue
        meta = {k: v for k, v in entry.meta.items() if k not in ("img_name", "mask_name")}
        records.append(
            CaseRecord(case_id, image, mask if mask.is_file() else None, text=entry.text, texts=dict(entry.texts), meta=meta)
        )
    index = DatasetIndex(base, "cris", records, split, True, False, findings, info={"annotations": str(ann)})
    return attach_text_source(index, split, opts)  # a text source given by the user replaces the JSON's prompts


CRIS = register_builtin(
    Layout(
        "cris",
        "CRIS-style JSON list (img_name, mask_name, prompts P0..Pn) + images/ masks/",
        _detect_cris,
        _read_cris,
        _cris_splits,
        True,
    ),
    __name__,
)
