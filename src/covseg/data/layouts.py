"""Dataset layouts of the field, one reader each, behind :func:`open_dataset`.

Each layout knows how to recognise its folder (``detect``), which splits it holds inside
(``splits``: LViT's ``Train_Folder``, nnU-Net's ``imagesTr``/``imagesTs``, one JSON/CSV/list
file per split) and how to list its cases (``read``). A folder that no layout recognises but
whose child folders are datasets (``train/``, ``valid/``, ``unlabeled/``) is a split container.

Readers only list files and read text sources; they never decode pixels. Problems found
while listing (orphans, missing files, missing text) become :class:`Finding` s on the index.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covseg.data.imageio import IMAGE_SUFFIXES, NIFTI_SUFFIXES, is_dicom_file, stem_of, suffix_of
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

CONTAINER = "splits"
# 2D files a layout folder may hold: the common image formats and single-frame DICOM (chest X-rays).
FILE_SUFFIXES = (*IMAGE_SUFFIXES, ".dcm")


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


LAYOUTS: dict[str, Layout] = {}


def register_layout(layout: Layout, before: str | None = None) -> Layout:
    """Add a layout; auto-detection tries layouts in registration order (``before`` inserts earlier)."""
    if layout.name in LAYOUTS or layout.name == CONTAINER:
        raise ValueError(f"layout {layout.name!r} is registered twice")
    if before is None:
        LAYOUTS[layout.name] = layout
        return layout
    items = list(LAYOUTS.items())
    at = next((i for i, (name, _) in enumerate(items) if name == before), None)
    if at is None:
        raise ValueError(f"no layout {before!r} to insert before (known: {', '.join(LAYOUTS)})")
    items.insert(at, (layout.name, layout))
    LAYOUTS.clear()
    LAYOUTS.update(items)
    return layout


def layout_names() -> list[str]:
    """Registered layout names, in detection order."""
    return list(LAYOUTS)


# --- file helpers ------------------------------------------------------------------------------


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


def _subdirs(root: Path) -> list[Path]:
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


def _pick_split_file(root: Path, files: dict[str, Path], split: str | None) -> Path:
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


def _resolve(base: Path, name: str) -> Path:
    p = Path(name.replace("\\", "/"))
    return p if p.is_absolute() else base / p


# --- text attachment -----------------------------------------------------------------------------


def _text_table(
    source: Any, split_hint: str | None, opts: ReadOptions, findings: list[Finding]
) -> TextTable | None:
    if source is None:
        return None
    problems: list[RowProblem] = []
    split = None
    if not isinstance(source, dict) and Path(str(source)).suffix.lower() == ".json" and split_hint:
        try:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
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
    table = _text_table(source, split or root.name, opts, findings)
    if table is not None:
        attach_texts(records, table, findings, opts.prompt)
    return DatasetIndex(root, layout, records, split, has_text or table is not None, False, findings)


# --- folder: images/ masks/ edges/ masks_<name>/ ---------------------------------------------------


def _detect_folder(p: Path) -> bool:
    images = child_dir(p, "images")
    return images is not None and bool(list_files(images))


def _read_folder(root: Path, split: str | None, opts: ReadOptions) -> DatasetIndex:
    """Generic ``images/`` + ``masks/`` (or ``labels/``) paired by stem; ``edges/``; every
    ``masks_<name>/`` becomes ``CaseRecord.masks[name]`` (``masks_multiclass`` → ``"multiclass"``);
    ``texts.json`` (``{stem: text}``, as ``covseg data convert`` writes it) gives texts. Images
    without a mask folder are an unlabelled pool (a warning, not an error)."""
    image_dir = child_dir(root, "images")
    if image_dir is None:
        raise DataError("no images/ folder", root)
    extra = {}
    for d in _subdirs(root):
        low = d.name.lower()
        if low.startswith("masks_") and len(low) > 6:
            extra[d.name[6:].lower()] = d
    texts = root / "texts.json"
    return read_paired_folders(
        root, "folder", image_dir, child_dir(root, "masks", "labels"), child_dir(root, "edges"), extra, split,
        texts if texts.is_file() else None, False, opts,
    )


# --- Inf-Net: Imgs/ GT/ Edge/ (Prior/ GT-1/ GT-2/) --------------------------------------------------

INFNET_MASK_DIRS = {"prior": "Prior", "gt-1": "GT-1", "gt-2": "GT-2", "multiclass": "GT-Multiclass"}


def _detect_infnet(p: Path) -> bool:
    return child_dir(p, "Imgs") is not None


def _read_infnet(root: Path, split: str | None, opts: ReadOptions) -> DatasetIndex:
    """Inf-Net ``Imgs/ GT/ Edge/``; ``Prior/`` (Semi-Inf-Net's infection prior, MultiClassInfection-Train)
    and ``GT-1/``/``GT-2/`` (the per-class masks of MultiClassInfection-Test) become named masks.
    ``GT-Multiclass/`` is covseg's own name for a multi-class mask kept beside a binary ``GT/``."""
    image_dir = child_dir(root, "Imgs")
    if image_dir is None:
        raise DataError("no Imgs/ folder", root)
    extra = {name: d for name, folder in INFNET_MASK_DIRS.items() if (d := child_dir(root, folder)) is not None}
    return read_paired_folders(root, "infnet", image_dir, child_dir(root, "GT"), child_dir(root, "Edge"), extra, split, opts=opts)


# --- co-supervision (Hu et al. 2022): image/ mask/ mask_/ ---------------------------------------------

_COSUP_RE = re.compile(r"^(image|mask_|mask)(\d*)$", re.IGNORECASE)


def _cosup_dirs(p: Path) -> dict[str, dict[str, Path]]:
    groups: dict[str, dict[str, Path]] = {}
    if not p.is_dir():
        return groups
    for d in _subdirs(p):
        m = _COSUP_RE.match(d.name)
        if m:
            groups.setdefault(m.group(2), {})[m.group(1).lower()] = d
    return {n: g for n, g in groups.items() if "image" in g and "mask" in g}


def _detect_cosup(p: Path) -> bool:
    return bool(_cosup_dirs(p))


def _read_cosup(root: Path, split: str | None, opts: ReadOptions) -> DatasetIndex:
    """``image/ mask/ mask_/`` (``mask_`` = edge ground truth); the numbered variant ``image1/ mask1/ mask_1/`` too."""
    groups = _cosup_dirs(root)
    if not groups:
        raise DataError("no image/ and mask/ folders", root)
    number = "" if "" in groups else sorted(groups)[0]
    g = groups[number]
    return read_paired_folders(root, "cosup", g["image"], g["mask"], g.get("mask_"), None, split, opts=opts)


# --- LViT / C2FVL: Train_Folder/{img,labelcol} + Train_text.xlsx ---------------------------------------

LVIT_SPLIT_DIRS = {"train": "Train_Folder", "val": "Val_Folder", "test": "Test_Folder"}


def _lvit_xlsx(folders: list[Path], split: str | None) -> Path | None:
    found: list[Path] = []
    for folder in folders:
        if folder is not None and folder.is_dir():
            found += sorted(f for f in folder.iterdir() if f.suffix.lower() == ".xlsx" and not f.name.startswith(("~", ".")))
    if not found:
        return None
    if split is not None:
        prefix = {"train": "train", "val": "val", "test": "test"}.get(resolve_split(split, list(LVIT_SPLIT_DIRS)) or "", split)
        named = [f for f in found if f.name.lower().startswith(prefix.lower())]
        if named:
            return named[0]
    text_named = [f for f in found if f.stem.lower().endswith("_text")]
    return (text_named or found)[0]


def _lvit_splits(p: Path) -> list[str]:
    return [s for s, d in LVIT_SPLIT_DIRS.items() if (f := child_dir(p, d)) is not None and child_dir(f, "img")]


def _detect_lvit(p: Path) -> bool:
    if _lvit_splits(p):
        return True
    if child_dir(p, "img") is not None and child_dir(p, "labelcol") is not None:
        return True
    if child_dir(p, "images") is not None:
        xlsx = _lvit_xlsx([p, child_dir(p, "annotations")], None)
        return xlsx is not None and xlsx.stem.lower().endswith("_text")
    return False


def _read_lvit(root: Path, split: str | None, opts: ReadOptions) -> DatasetIndex:
    """LViT folders ``img/ labelcol/`` with ``<Split>_text.xlsx`` (``Image``, ``Description``);
    also ``images/ masks/ annotations/<Split>_text.xlsx``."""
    folder = root
    if _lvit_splits(root):
        if split is None:
            raise DataError(f"choose a split ({', '.join(_lvit_splits(root))})", root)
        key = resolve_split(split, list(LVIT_SPLIT_DIRS))
        sub = child_dir(root, LVIT_SPLIT_DIRS[key]) if key else None
        if sub is None:
            raise DataError(f"no split {split!r} (splits: {', '.join(_lvit_splits(root))})", root)
        folder, split = sub, key
    image_dir = child_dir(folder, "img", "images")
    mask_dir = child_dir(folder, "labelcol", "masks")
    if image_dir is None:
        raise DataError("no img/ folder", folder)
    xlsx = _lvit_xlsx([folder, child_dir(folder, "annotations"), root if folder != root else None], split)
    findings_text = opts.text if opts.text is not None else xlsx
    index = read_paired_folders(folder, "lvit", image_dir, mask_dir, None, None, split, findings_text, True, opts)
    if findings_text is None:
        index.findings.insert(0, finding("missing_text", folder, "no <Split>_text.xlsx (columns Image, Description) found"))
        for rec in index.records:
            index.findings.append(finding("missing_text", rec.image, "no text for this image"))
    return index


# --- QaTa-COV19 (SGSeg): images/ masks/ captions.csv, annotations/annotation.json ----------------------


def _qata_annotation(p: Path) -> Path | None:
    for base in (p, p.parent):
        ann = base / "annotations" / "annotation.json"
        if ann.is_file():
            return ann
    return None


def _detect_qata(p: Path) -> bool:
    if child_dir(p, "images") is None:
        return False
    if (p / "captions.csv").is_file():
        return True
    ann = _qata_annotation(p)
    if ann is None:
        return False
    try:
        with ann.open(encoding="utf-8") as fh:
            head = fh.read(2048)
    except OSError:
        return False
    return head.lstrip().startswith("{") and '"image_path"' in head and '"caption"' in head


def _read_qata(root: Path, split: str | None, opts: ReadOptions) -> DatasetIndex:
    """QaTa-COV19 with captions: ``captions.csv`` (name, caption, pulmonary_infection,
    infected_area, pseudo_label) or ``annotations/annotation.json`` (beside or one level up,
    the split chosen by this folder's name). The structured fields go to ``CaseRecord.meta``."""
    image_dir = child_dir(root, "images")
    if image_dir is None:
        raise DataError("no images/ folder", root)
    source: Any = root / "captions.csv" if (root / "captions.csv").is_file() else _qata_annotation(root)
    return read_paired_folders(
        root, "qata", image_dir, child_dir(root, "masks"), None, None, split, source, True, opts
    )


# --- CRIS / medvlsm JSON: [{img_name, mask_name, prompts{p0..}}] ---------------------------------------


def _looks_like_cris(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as fh:
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
    from covseg.data.text_sources import read_cris_prompts

    files = _cris_files(root)
    if not files:
        raise DataError("no CRIS-style JSON (a list of objects with img_name and mask_name)", root)
    ann = _pick_split_file(root, files, split)
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
        image = _resolve(image_dir, str(entry.meta.get("img_name", "")))
        mask = _resolve(mask_dir, mask_name)
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
    return DatasetIndex(base, "cris", records, split, True, False, findings, info={"annotations": str(ann)})


# --- CSV with image, mask, prompt columns (BiomedParse pairs.csv) --------------------------------------

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
    return any(c in header for c in CSV_IMAGE_COLUMNS) and any(c in header for c in CSV_MASK_COLUMNS)


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
    from covseg.data.text_sources import TEXT_COLUMNS, _csv_rows, _find_column

    files = _csv_files(root)
    if not files:
        raise DataError("no CSV with image and mask columns", root)
    path = _pick_split_file(root, files, split)
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
        image = _resolve(base, cell[icol])
        mask = _resolve(base, cell[mcol]) if cell[mcol] else None
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
    if opts.text is not None:
        table = _text_table(opts.text, split, opts, index.findings)
        if table is not None:
            attach_texts(index.records, table, index.findings, opts.prompt)
            index.has_text = True
    return index


# --- JCS pair lists: "img_path mask_path" per line -----------------------------------------------------

_PAIR_SUFFIXES = (*IMAGE_SUFFIXES, *NIFTI_SUFFIXES, ".dcm", ".npy")


def _is_pair_list(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as fh:
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
    path = _pick_split_file(root, files, split)
    base = opts.list_root or path.parent
    findings: list[Finding] = []
    records: list[CaseRecord] = []
    seen: dict[str, int] = {}
    unlabelled = 0
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        unlabelled += len(tokens) == 1
        image = _resolve(base, tokens[0])
        mask = _resolve(base, tokens[1]) if len(tokens) > 1 else None
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


# --- NIfTI: images/ + labels|masks/, nnU-Net imagesTr/labelsTr (+ _0000 channels) -----------------------

_CHANNEL_RE = re.compile(r"^(.*)_(\d{4})$")


def _nifti_groups(p: Path) -> dict[str, tuple[Path, Path | None]]:
    groups = {}
    if (tr := child_dir(p, "imagesTr")) is not None:
        groups["train"] = (tr, child_dir(p, "labelsTr"))
        if (ts := child_dir(p, "imagesTs")) is not None:
            groups["test"] = (ts, child_dir(p, "labelsTs"))
    elif (images := child_dir(p, "images")) is not None:
        groups[""] = (images, child_dir(p, "labels", "masks"))
    return groups


def _detect_nifti(p: Path) -> bool:
    if p.is_file():
        return suffix_of(p) in NIFTI_SUFFIXES
    groups = _nifti_groups(p)
    return any(list_files(images, NIFTI_SUFFIXES) for images, _ in groups.values())


def _nifti_splits(p: Path) -> list[str]:
    groups = _nifti_groups(p) if p.is_dir() else {}
    return list(groups) if len(groups) > 1 else []


def _read_nifti(root: Path, split: str | None, opts: ReadOptions) -> DatasetIndex:
    """NIfTI volumes: ``images/`` with ``labels/`` or ``masks/``, or nnU-Net's ``imagesTr/labelsTr``
    (``imagesTs/labelsTs`` as split ``test``). Channel files ``case_0000``, ``case_0001`` form one
    case (all listed in ``meta["channels"]``); ``dataset.json`` labels go to ``info``."""
    if root.is_file():
        rec = CaseRecord(stem_of(root), root)
        return DatasetIndex(root.parent, "nifti", [rec], split, False, True, [])
    groups = _nifti_groups(root)
    if not groups:
        raise DataError("no images/ or imagesTr/ folder", root)
    if split is not None and "" not in groups:
        key = resolve_split(split, list(groups))
        if key is None:
            raise DataError(f"no split {split!r} (splits: {', '.join(groups)})", root)
    else:
        key = "" if "" in groups else "train"
    image_dir, label_dir = groups[key]
    findings: list[Finding] = []
    files = list_files(image_dir, NIFTI_SUFFIXES)
    channelled = bool(files) and all(_CHANNEL_RE.match(stem_of(f)) for f in files)
    cases: dict[str, list[Path]] = {}
    for f in files:
        stem = stem_of(f)
        base = _CHANNEL_RE.match(stem).group(1) if channelled else stem  # type: ignore[union-attr]
        cases.setdefault(base, []).append(f)
    by_case = {case: paths[0] for case, paths in cases.items()}
    masks = match_partners(by_case, list_files(label_dir, NIFTI_SUFFIXES), "label volume", findings) if label_dir else {}
    records = []
    for case, paths in cases.items():
        meta: dict[str, Any] = {"channels": [str(p) for p in paths]} if len(paths) > 1 else {}
        records.append(CaseRecord(case, paths[0], masks.get(case), meta=meta))
    if label_dir is None:
        if records:
            findings.append(finding("unlabelled", image_dir, f"{len(records)} volumes without label volumes (no labels folder)"))
    else:
        findings += [finding("orphan_image", r.image, f"volume without a label volume in {label_dir.name}/") for r in records if r.mask is None]
    info: dict[str, Any] = {}
    dataset_json = root / "dataset.json"
    if dataset_json.is_file():
        try:
            meta_json = json.loads(dataset_json.read_text(encoding="utf-8"))
            info = {k: meta_json[k] for k in ("name", "labels", "channel_names", "modality", "file_ending") if k in meta_json}
        except (ValueError, OSError) as exc:
            findings.append(finding("unreadable", dataset_json, f"unreadable dataset.json ({exc})"))
    index = DatasetIndex(root, "nifti", records, split if split is None else key, False, True, findings, info=info)
    if opts.text is not None:
        table = _text_table(opts.text, split, opts, index.findings)
        if table is not None:
            attach_texts(index.records, table, index.findings, opts.prompt)
            index.has_text = True
    return index


# --- DICOM: one folder per series, NIfTI masks in masks/ or beside ---------------------------------------


def _series_dirs(p: Path, max_depth: int = 4) -> list[Path]:
    out = []
    base_depth = len(p.parts)
    for dirpath, dirnames, filenames in os.walk(p):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d.lower() not in ("masks", "labels"))
        if len(Path(dirpath).parts) - base_depth > max_depth:
            dirnames[:] = []
            continue
        if any(is_dicom_file(Path(dirpath) / f) for f in filenames):
            out.append(Path(dirpath))
    return sorted(out, key=lambda d: [natural_key(part) for part in d.relative_to(p).parts])


def _detect_dicom(p: Path) -> bool:
    if not p.is_dir():
        return False
    try:
        with os.scandir(p) as it:
            entries = list(it)
    except OSError:
        return False
    if any(e.is_file() and is_dicom_file(Path(e.path)) for e in entries[:200]):
        return True
    for e in entries[:50]:
        if e.is_dir() and not e.name.startswith(".") and e.name.lower() not in ("masks", "labels", "images"):
            sub = Path(e.path)
            if any(is_dicom_file(f) for f in list(sub.iterdir())[:50]):
                return True
    return False


def _read_dicom(root: Path, split: str | None, opts: ReadOptions) -> DatasetIndex:
    """DICOM series: the folder itself, or one sub-folder per series (any depth up to 4).
    A series' mask is a NIfTI volume named after it in ``masks/`` (or ``labels/``) or beside
    the series folder (``<series>.nii.gz``, ``<series>_mask.nii.gz``)."""
    series = _series_dirs(root)
    if not series:
        raise DataError("no DICOM series found", root)
    mask_dir = child_dir(root, "masks", "labels")
    findings: list[Finding] = []
    records = []
    for s in series:
        case_id = s.name if s == root else s.relative_to(root).as_posix()
        flat = case_id.replace("/", "_")
        names = [f"{n}{suf}" for n in dict.fromkeys([flat, s.name, f"{s.name}_mask", f"{flat}_mask"]) for suf in NIFTI_SUFFIXES]
        candidates = [d / n for d in (mask_dir, s.parent) if d is not None for n in names]
        mask = next((c for c in candidates if c.is_file()), None)
        records.append(CaseRecord(case_id, s, mask, meta={"series_folder": str(s)}))
    if mask_dir is not None:
        used = {r.mask for r in records}
        for m in list_files(mask_dir, NIFTI_SUFFIXES):
            if m not in used:
                findings.append(finding("orphan_mask", m, "mask volume without a DICOM series of the same name"))
        findings += [finding("orphan_image", r.image, f"series without a mask volume in {mask_dir.name}/") for r in records if r.mask is None]
    elif not any(r.mask for r in records):
        findings.append(finding("unlabelled", root, f"{len(records)} series without mask volumes"))
    return DatasetIndex(root, "dicom", records, split, False, True, findings)


# --- registry ----------------------------------------------------------------------------------------

register_layout(Layout("lvit", "LViT/C2FVL: Train_Folder/{img,labelcol} + Train_text.xlsx (also images/ masks/ annotations/*_text.xlsx)", _detect_lvit, _read_lvit, _lvit_splits, True))
register_layout(Layout("qata", "QaTa-COV19: images/ masks/ captions.csv or annotations/annotation.json", _detect_qata, _read_qata, has_text=True))
register_layout(Layout("cris", "CRIS-style JSON list (img_name, mask_name, prompts P0..Pn) + images/ masks/", _detect_cris, _read_cris, _cris_splits, True))
register_layout(Layout("csv", "CSV with image, mask and prompt/text columns (one row per target mask)", _detect_csv, _read_csv, _csv_splits, True))
register_layout(Layout("jcs", "JCS pair lists: 'image_path mask_path' per line (train.txt, test.txt)", _detect_jcs, _read_jcs, _jcs_splits))
register_layout(Layout("infnet", "Inf-Net: Imgs/ GT/ Edge/ (Prior/, GT-1/, GT-2/)", _detect_infnet, _read_infnet))
register_layout(Layout("cosup", "co-supervision: image/ mask/ mask_/ (mask_ = edges)", _detect_cosup, _read_cosup))
register_layout(Layout("nifti", "NIfTI volumes: images/ + labels|masks/, nnU-Net imagesTr/labelsTr", _detect_nifti, _read_nifti, _nifti_splits))
register_layout(Layout("dicom", "DICOM series folders, NIfTI masks in masks/ or beside", _detect_dicom, _read_dicom))
register_layout(Layout("folder", "generic: images/ masks/ [edges/ masks_<name>/ texts.json] paired by stem", _detect_folder, _read_folder))


# --- detection and entry point ---------------------------------------------------------------------------


def detect_layout(path: str | Path, allow_container: bool = True) -> str | None:
    """The first registered layout that recognises ``path``; ``"splits"`` for a folder of split
    folders; None when nothing matches."""
    path = Path(path)
    for layout in LAYOUTS.values():
        try:
            if layout.detect(path):
                return layout.name
        except OSError:
            continue
    if allow_container and path.is_dir() and find_split_folders(path):
        return CONTAINER
    return None


def find_split_folders(path: str | Path, layout: str = "auto") -> dict[str, tuple[Path, str]]:
    """Child folders of ``path`` that are datasets themselves: ``{split: (folder, layout)}``."""
    path = Path(path)
    out: dict[str, tuple[Path, str]] = {}
    if not path.is_dir():
        return out
    for child in _subdirs(path):
        if layout == "auto":
            name = detect_layout(child, allow_container=False)
        else:
            name = layout if LAYOUTS[layout].detect(child) else None
        if name is not None:
            out[child.name] = (child, name)
    return out


def list_splits(path: str | Path, layout: str = "auto") -> list[str]:
    """Split names of a dataset: its split folders, or the splits its layout keeps inside."""
    path = Path(path)
    name = detect_layout(path) if layout == "auto" else layout
    if name is None:
        return []
    if name == CONTAINER or (layout != "auto" and not LAYOUTS[layout].detect(path)):
        return list(find_split_folders(path, layout))
    return LAYOUTS[name].splits(path)


def open_dataset(
    path: str | Path,
    layout: str = "auto",
    split: str | None = None,
    text: Any = None,
    prompt: str | None = None,
    **options: Any,
) -> DatasetIndex:
    """Index a dataset: ``layout`` is a registered name or ``"auto"`` (detected).

    ``split`` picks one split (a child folder such as ``train``, or a split the layout holds:
    ``Train_Folder``, ``anns/val.json``, ``test.txt``, ``imagesTs``); without it all splits are
    merged and case ids are prefixed ``<split>/``. ``text`` is a text source that overrides or
    adds the layout's own (xlsx, csv, json, txt or a ``{name: text}`` dict); ``prompt`` picks a
    named prompt (``P0``). Other options: ``text_column``, ``list_root``, ``image_dir``, ``mask_dir``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError("dataset path not found", path)
    unknown = set(options) - {f.name for f in dataclasses.fields(ReadOptions)}
    if unknown:
        raise TypeError(f"unknown dataset option(s): {', '.join(sorted(unknown))}")
    opts = ReadOptions(text=text, prompt=prompt, **{k: (Path(v) if k.endswith(("_root", "_dir")) and v else v) for k, v in options.items()})
    if layout != "auto" and layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    name = detect_layout(path) if layout == "auto" else layout
    if name is None:
        raise DataError(
            "no known dataset layout here (looked for images/, Imgs/, image/+mask/, img/+labelcol/, "
            "imagesTr/, DICOM series, pair lists, CSV/JSON annotations, or split folders of these)",
            path,
        )
    if name == CONTAINER or (layout != "auto" and path.is_dir() and not LAYOUTS[layout].detect(path) and find_split_folders(path, layout)):
        return _open_container(path, layout, split, opts)
    reader = LAYOUTS[name]
    inner = reader.splits(path)
    if split is None and inner:
        parts = [(s, reader.read(path, s, opts)) for s in inner]
        return merge_indexes(path, parts)
    index = reader.read(path, split, opts)
    if split is not None and index.split is None:
        index.split = split
    return index


def _open_container(path: Path, layout: str, split: str | None, opts: ReadOptions) -> DatasetIndex:
    folders = find_split_folders(path, layout)
    if split is not None:
        key = resolve_split(split, list(folders))
        if key is None:
            raise DataError(f"no split {split!r} (splits: {', '.join(folders) or 'none'})", path)
        folder, child_layout = folders[key]
        index = open_dataset(folder, child_layout, None, opts.text, opts.prompt, **_option_kwargs(opts))
        index.split = key
        for rec in index.records:
            rec.meta.setdefault("split", key)
        return index
    parts = [
        (name, open_dataset(folder, child_layout, None, opts.text, opts.prompt, **_option_kwargs(opts)))
        for name, (folder, child_layout) in folders.items()
    ]
    return merge_indexes(path, parts)


def _option_kwargs(opts: ReadOptions) -> dict[str, Any]:
    return {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts) if f.name not in ("text", "prompt")}


def merge_indexes(root: Path, parts: list[tuple[str, DatasetIndex]]) -> DatasetIndex:
    """One index from several splits; case ids become ``<split>/<case_id>``."""
    records: list[CaseRecord] = []
    findings: list[Finding] = []
    for split, index in parts:
        for rec in index.records:
            meta = {**rec.meta, "split": split}
            records.append(dataclasses.replace(rec, case_id=f"{split}/{rec.case_id}", meta=meta))
        findings += index.findings
    layouts = sorted({index.layout for _, index in parts})
    return DatasetIndex(
        root,
        layouts[0] if len(layouts) == 1 else "+".join(layouts),
        records,
        None,
        any(index.has_text for _, index in parts),
        any(index.volumetric for _, index in parts),
        findings,
        [s for s, _ in parts],
        {s: index.info for s, index in parts if index.info},
    )
