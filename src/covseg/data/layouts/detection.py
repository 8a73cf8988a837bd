"""Detection and the entry point: :func:`open_dataset`, :func:`detect_layout`,
:func:`list_splits`, :func:`find_split_folders`, :func:`merge_indexes`.

Layouts are tried in :data:`covseg.registry.LAYOUTS` order (lvit, qata, cris, csv, jcs,
infnet, cosup, nifti, flare, dicom, folder, then any registered later); a folder that none
recognises but whose child folders are datasets is a split container (``"splits"``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from covseg.data.index import DatasetIndex, Finding
from covseg.data.layouts.common import CONTAINER, ReadOptions, subdirs
from covseg.data.sample import CaseRecord
from covseg.data.text_sources import resolve_split
from covseg.errors import DataError
from covseg.registry import LAYOUTS


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
    for child in subdirs(path):
        if layout == "auto":
            name = detect_layout(child, allow_container=False)
        else:
            name = layout if LAYOUTS.get(layout).detect(child) else None
        if name is not None:
            out[child.name] = (child, name)
    return out


def list_splits(path: str | Path, layout: str = "auto") -> list[str]:
    """Split names of a dataset: its split folders, or the splits its layout keeps inside."""
    path = Path(path)
    name = detect_layout(path) if layout == "auto" else layout
    if name is None:
        return []
    if name == CONTAINER or (layout != "auto" and not LAYOUTS.get(layout).detect(path)):
        return list(find_split_folders(path, layout))
    return LAYOUTS.get(name).splits(path)


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
    if name == CONTAINER or (layout != "auto" and path.is_dir() and not LAYOUTS.get(layout).detect(path) and find_split_folders(path, layout)):
        return _open_container(path, layout, split, opts)
    reader = LAYOUTS.get(name)
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
