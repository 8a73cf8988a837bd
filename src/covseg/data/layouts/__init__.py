"""Dataset layouts of the field, one reader each, behind :func:`open_dataset`.

Each layout knows how to recognise its folder (``detect``), which splits it holds inside
(``splits``: LViT's ``Train_Folder``, nnU-Net's ``imagesTr``/``imagesTs``, one JSON/CSV/list
file per split) and how to list its cases (``read``). A folder that no layout recognises but
whose child folders are datasets (``train/``, ``valid/``, ``unlabeled/``) is a split container.

Readers only list files and read text sources; they never decode pixels. Problems found
while listing (orphans, missing files, missing text) become :class:`Finding` s on the index.

One module per layout family (``lvit``, ``qata``, ``cris``, ``csv_pairs``, ``jcs``, ``infnet``,
``cosup``, ``nifti``, ``flare``, ``dicom``, ``folder``) registers its :class:`Layout` in
:data:`covseg.registry.LAYOUTS` at import. This package does not import them: the registry
does, the first time it is read, in the order ``covseg.builtins`` lists them, which is the
detection order. Shared helpers are in :mod:`~covseg.data.layouts.common`, detection and
:func:`open_dataset` in :mod:`~covseg.data.layouts.detection`.
"""

from __future__ import annotations

import importlib
from typing import Any

from covseg.data.layouts.common import (
    CONTAINER,
    FILE_SUFFIXES,
    INFNET_MASK_DIRS,
    Layout,
    ReadOptions,
    attach_texts,
    child_dir,
    index_by_stem,
    layout_names,
    list_files,
    match_partners,
    natural_key,
    read_paired_folders,
    register_layout,
)
from covseg.data.layouts.detection import (
    detect_layout,
    find_split_folders,
    list_splits,
    merge_indexes,
    open_dataset,
)
from covseg.registry import LAYOUTS

__all__ = [
    "CONTAINER",
    "FILE_SUFFIXES",
    "INFNET_MASK_DIRS",
    "LAYOUTS",
    "Layout",
    "ReadOptions",
    "attach_texts",
    "child_dir",
    "detect_layout",
    "find_split_folders",
    "index_by_stem",
    "layout_names",
    "list_files",
    "list_splits",
    "match_partners",
    "merge_indexes",
    "natural_key",
    "open_dataset",
    "read_paired_folders",
    "register_layout",
]

# Constants of one family, imported (and so registered) only when asked for.
_FAMILY_NAMES = {
    "LVIT_SPLIT_DIRS": "covseg.data.layouts.lvit",
    "CSV_IMAGE_COLUMNS": "covseg.data.layouts.csv_pairs",
    "CSV_MASK_COLUMNS": "covseg.data.layouts.csv_pairs",
}


def __getattr__(name: str) -> Any:
    if name in _FAMILY_NAMES:
        return getattr(importlib.import_module(_FAMILY_NAMES[name]), name)
    raise AttributeError(f"module 'covseg.data.layouts' has no attribute {name!r}")
