"""LViT / C2FVL: ``Train_Folder/{img,labelcol}`` + ``Train_text.xlsx`` (also ``images/ masks/
annotations/<Split>_text.xlsx``)."""

from __future__ import annotations

from pathlib import Path

from covseg.data.index import DatasetIndex, finding
from covseg.data.layouts.common import Layout, ReadOptions, child_dir, read_paired_folders, register_builtin
from covseg.data.text_sources import resolve_split
from covseg.errors import DataError

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


LVIT = register_builtin(
    Layout(
        "lvit",
        "LViT/C2FVL: Train_Folder/{img,labelcol} + Train_text.xlsx (also images/ masks/ annotations/*_text.xlsx)",
        _detect_lvit,
        _read_lvit,
        _lvit_splits,
        True,
    ),
    __name__,
)
