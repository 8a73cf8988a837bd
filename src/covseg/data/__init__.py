"""Datasets: layout readers, text sources, loading, checks and conversion.

``open_dataset(path)`` recognises the field's layouts (LViT, QaTa, CRIS JSON, prompt CSV, JCS
pair lists, Inf-Net, co-supervision, NIfTI/nnU-Net, DICOM series, generic folders, and folders
of splits) and returns a :class:`DatasetIndex` of :class:`CaseRecord` s; ``load_sample`` reads
one record into a :class:`Sample`. Importing this package pulls in numpy only (no torch/monai).
"""

from __future__ import annotations

from typing import Any

from covseg.data.index import SEVERITY, DatasetIndex, Finding
from covseg.data.layouts import (
    LAYOUTS,
    detect_layout,
    layout_names,
    list_splits,
    open_dataset,
    register_layout,
)
from covseg.data.loading import load_sample
from covseg.data.sample import CaseRecord, Sample
from covseg.data.text_sources import TextEntry, TextTable, load_texts

__all__ = [
    "LAYOUTS",
    "SEVERITY",
    "CaseRecord",
    "CheckReport",
    "ConvertReport",
    "DatasetIndex",
    "Finding",
    "Sample",
    "TextEntry",
    "TextTable",
    "check_dataset",
    "convert_dataset",
    "detect_layout",
    "layout_names",
    "list_splits",
    "load_sample",
    "load_texts",
    "open_dataset",
    "register_layout",
]

_LAZY = {
    "check_dataset": "covseg.data.check",
    "CheckReport": "covseg.data.check",
    "convert_dataset": "covseg.data.convert",
    "ConvertReport": "covseg.data.convert",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'covseg.data' has no attribute {name!r}")
