"""Image-level labels of training cases (joint classification): which cases, which class, from where.

``data.labels`` picks the rule (:mod:`covseg.data.labels`): ``masks`` (default), ``layout`` or a
labels CSV, whose rows the dataset lacks become label-only cases. ``data.extra`` joins more
datasets before the split, with a fixed class and their own, empty or no masks. Each case ends
with a class, the source of that class (``csv``, ``extra``, ``layout``, ``masks``) and whether
it has a mask (label-only cases train the classification term alone, through ``has_mask``).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import numpy as np

from covseg.data.labels import (
    DEFAULT_LABEL_NAMES,
    LABEL_SOURCES,
    LabelTable,
    apply_labels_csv,
    label_from_mask,
    read_labels_csv,
)
from covseg.data.sample import CaseRecord
from covseg.errors import ConfigError, DataError
from covseg.training.config import DataConfig
from covseg.utils.paths import expand

EXPLICIT_SOURCES = ("csv", "extra")


def labels_table(cfg: DataConfig) -> LabelTable | None:
    """The labels CSV ``data.labels`` names (None for the ``masks`` and ``layout`` rules)."""
    if cfg.labels is None or cfg.labels in LABEL_SOURCES:
        return None
    path = expand(cfg.labels)
    if not path.is_file():
        raise DataError(f"labels CSV not found (data.labels is masks, layout or a CSV path; known rules: {', '.join(LABEL_SOURCES)})", path)
    return read_labels_csv(path, cfg.label_names)


def add_csv_labels(records: list[CaseRecord], table: LabelTable | None, new_cases: bool = True) -> list[CaseRecord]:
    """Records with the CSV's classes set, plus (``new_cases``) its label-only images."""
    if table is None:
        return records
    matched, label_only = apply_labels_csv(records, table)
    return matched + (label_only if new_cases else [])


def extra_records(cfg: DataConfig) -> list[CaseRecord]:
    """The cases of every ``data.extra`` source, with their fixed class and mask rule in ``meta``."""
    from covseg.data import open_dataset

    out: list[CaseRecord] = []
    for source in cfg.extra:
        root = expand(source.root)
        if not root.exists():
            raise DataError("data.extra: dataset folder not found", root)
        for rec in open_dataset(root, layout=source.layout, split=source.split).records:
            meta = {**rec.meta, "source": source.root}
            if source.train_only:
                meta["train_only"] = True
            if source.label is not None:
                meta["label_source"] = "extra"
            if source.masks != "files":
                meta["empty_mask" if source.masks == "empty" else "label_only"] = True
                rec = dataclasses.replace(rec, mask=None, masks={}, edge=None)
            out.append(dataclasses.replace(rec, label=source.label if source.label is not None else rec.label, meta=meta))
    return out


def check_unique_ids(records: list[CaseRecord]) -> None:
    """Case ids must be unique across data.root and data.extra (splits and results are keyed by them)."""
    counts = Counter(str(r.case_id) for r in records)
    twice = sorted(cid for cid, n in counts.items() if n > 1)
    if twice:
        first = next(r for r in records if str(r.case_id) == twice[0])
        raise DataError(f"case id {twice[0]!r} occurs in several sources ({len(twice)} ids clash); rename one source's files", first.image)


def has_training_label(record: CaseRecord, cfg: DataConfig) -> bool:
    """Whether a case can train: it has a mask, an empty-mask promise, or (for label-only cases) a class."""
    mask = record.masks.get("multiclass") if cfg.mask == "multiclass" else record.mask
    if mask is not None or record.meta.get("empty_mask"):
        return True
    explicit = record.meta.get("label_source") in EXPLICIT_SOURCES or cfg.labels == "layout"
    return record.label is not None and explicit


def is_label_only(record: CaseRecord, cfg: DataConfig) -> bool:
    """A case with a class and no mask (trains the classification term only)."""
    mask = record.masks.get("multiclass") if cfg.mask == "multiclass" else record.mask
    return mask is None and not record.meta.get("empty_mask")


def class_label(record: CaseRecord, label_map: np.ndarray | None, cfg: DataConfig) -> tuple[int, str]:
    """``(class, source)`` of a case: a CSV or extra-source class, the layout's (``data.labels: layout``), else the mask rule."""
    if record.label is not None and record.meta.get("label_source") in EXPLICIT_SOURCES:
        return int(record.label), str(record.meta["label_source"])
    if record.label is not None and cfg.labels == "layout":
        return int(record.label), "layout"
    derived = label_from_mask(label_map)
    if derived is None:
        raise DataError(f"case {record.case_id} has neither a mask nor a class label", record.image)
    return derived, "masks"


def class_names(cfg: DataConfig, labels: list[int] | None = None) -> list[str]:
    """Class names, negative first: ``data.label_names`` or negative/positive (+ classN up to the largest label)."""
    top = max(labels) if labels else 1
    if cfg.label_names is not None:
        if len(cfg.label_names) < 2:
            raise ConfigError("data.label_names needs at least two classes (the negative one first)")
        if top >= len(cfg.label_names):
            raise ConfigError(f"a case has class {top} but data.label_names lists {len(cfg.label_names)} classes")
        return list(cfg.label_names)
    return [*DEFAULT_LABEL_NAMES, *(f"class{c}" for c in range(2, top + 1))]


def labels_summary(classes: list[int], sources: list[str], has_mask: list[bool], cfg: DataConfig) -> dict[str, Any]:
    """What ``dataset.json`` records about the labels: rule, sources, classes, label-only cases."""
    names = class_names(cfg, classes)
    counts = Counter(classes)
    return {
        "rule": cfg.labels or "masks",
        "class_names": names,
        "per_class": {name: int(counts.get(i, 0)) for i, name in enumerate(names)},
        "sources": dict(sorted(Counter(sources).items())),
        "label_only": int(sum(not m for m in has_mask)),
        "extra": [s.model_dump() for s in cfg.extra],
    }
