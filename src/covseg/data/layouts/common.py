"""What every layout reader shares: the :class:`Layout` record and :class:`ReadOptions`, their
registration in :data:`covseg.registry.LAYOUTS`, file listing and pairing by stem, and text
attachment.

Nothing here registers a layout; the family modules (``lvit``, ``qata``, ... ``folder``) do,
at import, and the registry imports them in detection order the first time it is read.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covseg.builtins import BUILTIN_MODULES
from covseg.data.imageio import IMAGE_SUFFIXES, stem_of, suffix_of
from covseg.data.index import DatasetIndex, Finding, finding
from covseg.data.sample import CaseRecord
from covseg.data.text_sources import (
    MASK_SUFFIXES,
    RowProblem,
    TextTable,
    load_texts,
    name_key,
    resolve_split,
)
from covseg.errors import DataError
from covseg.registry import FILE_FORMATS, LAYOUTS

CONTAINER = "splits"
# 2D files a layout folder may hold: the common image formats and single-frame DICOM (chest X-rays).
FILE_SUFFIXES = (*IMAGE_SUFFIXES, *FILE_FORMATS.get("dicom").suffixes)  # derived from the file-format registry
# Inf-Net's extra mask folders by mask name (kept here, not in the infnet module, because
# ``covseg data convert`` writes them too and importing a family module registers it).
INFNET_MASK_DIRS = {"prior": "Prior", "gt-1": "GT-1", "gt-2": "GT-2", "multiclass": "GT-Multiclass"}


@dataclass
class ReadOptions:
    """Options a reader may use: a text source overriding the layout's own, a prompt name
    (CRIS), the text column (CSV), the base folder of pair-list paths (JCS), image/mask
    folders for JSON annotations (CRIS)."""

    text: Any = None
    prompt: str | None = None
    text_column: str | None = None
    list_root: Path | None = None
    image_dir: Path | None = None
    mask_dir: Path | None = None


@dataclass(frozen=True)
class Layout:
    """A registered dataset layout."""

    name: str
    description: str
    detect: Callable[[Path], bool]
    read: Callable[[Path, str | None, ReadOptions], DatasetIndex]
    splits: Callable[[Path], list[str]] = lambda root: []
    has_text: bool = False


# --- registration --------------------------------------------------------------------------------

_BUILTIN_MODULE_OF: dict[str, str] = {}  # built-in layout name -> the module that registered it


def register_layout(layout: Layout, before: str | None = None) -> Layout:
    """Add a layout; auto-detection tries layouts in registration order (``before`` inserts earlier).

    The built-in layouts are loaded first, so a layout added without ``before`` is tried after them.
    """
    if layout.name == CONTAINER:
        raise ValueError(f"layout name {CONTAINER!r} is reserved for folders of splits")
    LAYOUTS.ordered()  # load the built-ins first
    LAYOUTS.register(layout.name, layout, before=before)
    return layout


def register_builtin(layout: Layout, module: str) -> Layout:
    """Register one of covseg's own layouts; called by its family module (``module=__name__``) at import.

    Detection order is registration order, which is the order of the family modules in
    ``covseg.builtins.BUILTIN_MODULES["layout"]``: the registry imports them in turn when first
    read. Should a family module be imported directly before that, reading the registry here
    loads the others first, and this layout goes in ahead of those whose modules are listed
    after its own, so the order never depends on which module happened to be imported first.
    """
    order = BUILTIN_MODULES["layout"]
    later = set(order[order.index(module) + 1 :]) if module in order else set()
    before = next((name for name in LAYOUTS.ordered() if _BUILTIN_MODULE_OF.get(name) in later), None)
    LAYOUTS.register(layout.name, layout, before=before)
    _BUILTIN_MODULE_OF[layout.name] = module
    return layout


def layout_names() -> list[str]:
    """Registered layout names, in detection order."""
    return LAYOUTS.ordered()


# --- file helpers ------------------------------------------------------------------------------


def dataset_json_info(root: Path, findings: list[Finding]) -> dict[str, Any]:
    """The descriptive keys of an nnU-Net-style ``dataset.json`` beside the volumes (``{}`` without one);
    an unreadable file becomes a finding, not an error."""
    dataset_json = root / "dataset.json"
    if not dataset_json.is_file():
        return {}
    try:
        meta = json.loads(dataset_json.read_text(encoding="utf-8"))
        return {k: meta[k] for k in ("name", "labels", "channel_names", "modality", "file_ending") if k in meta}
    except (ValueError, OSError) as exc:
        findings.append(finding("unreadable", dataset_json, f"unreadable dataset.json ({exc})"))
        return {}


def natural_key(path: Path | str) -> list:
    """Sort key that puts ``2.png`` before ``10.png``."""
    name = Path(path).name
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_files(folder: Path, suffixes: Iterable[str] = FILE_SUFFIXES) -> list[Path]:
    """Regular, non-hidden files of ``folder`` with one of ``suffixes``, in natural order."""
    wanted = tuple(suffixes)
    out = []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            if suffix_of(entry.name) in wanted:
                out.append(Path(entry.path))
    return sorted(out, key=natural_key)


def child_dir(root: Path, *names: str) -> Path | None:
    """The first child folder of ``root`` named one of ``names`` (case-insensitive)."""
    if not root.is_dir():
        return None
    try:
        children = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    except OSError:
        return None
    for name in names:
        found = children.get(name.lower())
        if found is not None:
            return found
    return None


def subdirs(root: Path) -> list[Path]:
    """Non-hidden child folders of ``root``, in natural order."""
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=natural_key)


def _partner_keys(stem: str) -> list[str]:
    keys = [stem, name_key(stem)]
    low = stem.lower()
    for suffix in MASK_SUFFIXES:
        if low.endswith(suffix) and len(stem) > len(suffix):
            keys.append(stem[: -len(suffix)])
    return keys


def index_by_stem(files: list[Path], findings: list[Finding], what: str = "images") -> dict[str, Path]:
    """``{stem: file}``; two files sharing a stem (``0.jpg``, ``0.png``) give a duplicate finding."""
    by_stem: dict[str, Path] = {}
    for f in files:
        stem = stem_of(f)
        if stem in by_stem:
            findings.append(finding("duplicate_case", f, f"two {what} share the stem {stem!r} ({by_stem[stem].name}, {f.name})"))
            continue
        by_stem[stem] = f
    return by_stem


def match_partners(
    image_stems: dict[str, Path], partners: list[Path], role: str, findings: list[Finding]
) -> dict[str, Path]:
    """Pair partner files (masks, edges) to image stems: same stem, or with ``mask_``/``_mask`` removed."""
    matched: dict[str, Path] = {}
    for p in partners:
        stem = stem_of(p)
        key = next((k for k in _partner_keys(stem) if k in image_stems), None)
        if key is None:
            findings.append(finding("orphan_mask", p, f"{role} without an image of the same name"))
        elif key in matched:
            findings.append(finding("duplicate_case", p, f"second {role} for image {image_stems[key].name} (first: {matched[key].name})"))
        else:
            matched[key] = p
    return matched


def pick_split_file(root: Path, files: dict[str, Path], split: str | None) -> Path:
    """The annotation/list file for ``split``: the given file itself, the one named like the split, or the only one."""
    if root.is_file():
        return root
    if split is not None:
        key = resolve_split(split, list(files))
        if key is None:
            raise DataError(f"no split {split!r} (splits: {', '.join(files)})", root)
        return files[key]
    if len(files) == 1:
        return next(iter(files.values()))
    raise DataError(f"choose a split ({', '.join(files)})", root)


def resolve_path(base: Path, name: str) -> Path:
    """``name`` (Windows separators allowed) relative to ``base`` unless absolute."""
    p = Path(name.replace("\\", "/"))
    return p if p.is_absolute() else base / p


# --- text attachment -----------------------------------------------------------------------------


def read_text_table(
    source: Any, split_hint: str | None, opts: ReadOptions, findings: list[Finding]
) -> TextTable | None:
    """The text table of ``source`` (None: no table); for a JSON of ``{split: [...]}`` the split
    named like ``split_hint``. Unreadable rows become findings."""
    if source is None:
        return None
    problems: list[RowProblem] = []
    split = None
    if not isinstance(source, dict) and Path(str(source)).suffix.lower() == ".json" and split_hint:
        try:
            data = json.loads(Path(source).read_text(encoding="utf-8-sig"))
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
            split = resolve_split(split_hint, list(data))
    table = load_texts(source, split=split, prompt=opts.prompt, column=opts.text_column, problems=problems)
    findings.extend(finding("bad_text_row", p.source, str(p)) for p in problems)
    return table


def attach_texts(records: list[CaseRecord], table: TextTable, findings: list[Finding], prompt: str | None = None) -> None:
    """Give each record its text from ``table`` (looked up by mask, image, case id); list what is missing or unused."""
    used: set[str] = set()
    for rec in records:
        found = table.find(rec.mask, rec.image, rec.case_id)
        if found is None:
            findings.append(finding("missing_text", rec.image, f"no text for this image in {_source_name(table)}"))
            continue
        key, entry = found
        used.add(key)
        rec.texts = dict(entry.texts)
        rec.text = entry.text
        if prompt is not None and entry.texts:
            picked = next((v for k, v in entry.texts.items() if k.lower() == prompt.lower()), None)
            if picked is None:
                findings.append(finding("missing_text", rec.image, f"no prompt {prompt!r} (has {', '.join(entry.texts)})"))
                rec.text = None
            else:
                rec.text = picked
        for k, v in entry.meta.items():
            rec.meta.setdefault(k, v)
    unused = [k for k in table if k not in used]
    if unused:
        examples = ", ".join(unused[:3])
        findings.append(
            finding(
                "unused_text",
                table.source,
                f"{len(unused)} of {len(table)} text entries have no image here (e.g. {examples})",
            )
        )


def attach_text_source(index: DatasetIndex, split: str | None, opts: ReadOptions) -> DatasetIndex:
    """Attach ``opts.text`` (a text source given by the user) to an index read without one."""
    if opts.text is not None:
        table = read_text_table(opts.text, split, opts, index.findings)
        if table is not None:
            attach_texts(index.records, table, index.findings, opts.prompt)
            index.has_text = True
    return index


def _source_name(table: TextTable) -> str:
    return table.source.name if table.source is not None else "the text mapping"


# --- generic image/mask folders ----------------------------------------------------------------


def read_paired_folders(
    root: Path,
    layout: str,
    image_dir: Path,
    mask_dir: Path | None,
    edge_dir: Path | None = None,
    extra_dirs: dict[str, Path] | None = None,
    split: str | None = None,
    text_source: Any = None,
    has_text: bool = False,
    opts: ReadOptions | None = None,
) -> DatasetIndex:
    """Cases from an image folder and partner folders matched by stem (the shape of most layouts)."""
    opts = opts or ReadOptions()
    findings: list[Finding] = []
    if not image_dir.is_dir():
        raise DataError("image folder not found", image_dir)
    images = index_by_stem(list_files(image_dir), findings)
    masks = match_partners(images, list_files(mask_dir), "mask", findings) if mask_dir is not None else {}
    edges = match_partners(images, list_files(edge_dir), "edge map", findings) if edge_dir is not None else {}
    extras = {
        name: match_partners(images, list_files(folder), f"{name} mask", findings)
        for name, folder in (extra_dirs or {}).items()
    }
    records = []
    for stem, image in images.items():
        rec = CaseRecord(case_id=stem, image=image, mask=masks.get(stem), edge=edges.get(stem))
        rec.masks = {name: m[stem] for name, m in extras.items() if stem in m}
        records.append(rec)
    if mask_dir is None:
        if records:
            findings.append(finding("unlabelled", image_dir, f"{len(records)} images without masks (no mask folder)"))
    else:
        for rec in records:
            if rec.mask is None:
                findings.append(finding("orphan_image", rec.image, f"image without a mask in {mask_dir.name}/"))
    source = opts.text if opts.text is not None else text_source
    table = read_text_table(source, split or root.name, opts, findings)
    if table is not None:
        attach_texts(records, table, findings, opts.prompt)
    return DatasetIndex(root, layout, records, split, has_text or table is not None, False, findings)
