"""Unlabelled slices standardised onto the run's labelled training slices (``semi.unlabeled.standardize``).

The reference landmarks are learned from the labelled *training* slices of the run (never its
validation slices); each unlabelled volume (or slice) gets one mapping from its own pooled landmarks.
Only the unlabelled images read here are changed: the labelled data, validation and prediction
inputs keep their grey levels, so a shipped model sees at prediction time what it saw in training.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from covseg.data.sample import CaseRecord
from covseg.errors import DataError
from covseg.training.config import UnlabeledConfig
from covseg.transforms.standardize import (
    IntensityReference,
    apply_reference,
    learn_reference,
    source_landmarks,
    volume_key,
)


def group_key(record: CaseRecord, per: str) -> str:
    """The mapping group of an unlabelled slice: its volume (file-name stem without ``_<k>``) or itself."""
    stem = Path(record.image).stem
    return volume_key(stem) if per == "volume" else stem


def labelled_reference(train_records: list[CaseRecord], method: str) -> IntensityReference:
    """Reference landmarks of the run's labelled training slices."""
    from covseg.data.imageio import read_image

    try:
        return learn_reference((read_image(r.image) for r in train_records), method)
    except ValueError as exc:
        raise DataError(f"semi.unlabeled.standardize: {exc}", train_records[0].image if train_records else None) from exc


def standardized_reader(
    train_records: list[CaseRecord], records: list[CaseRecord], u: UnlabeledConfig, progress: Callable[[], None] | None = None
) -> tuple[Callable[[CaseRecord], np.ndarray], dict[str, Any]]:
    """A reader of the unlabelled ``records`` that returns each image standardised, and what it did (for
    ``splits.json``). Every slice is read once here to pool its group's landmarks."""
    from covseg.data.imageio import read_image

    reference = labelled_reference(train_records, u.standardize)
    groups: dict[str, list[CaseRecord]] = {}
    for rec in records:
        groups.setdefault(group_key(rec, u.standardize_per), []).append(rec)
    sources: dict[str, np.ndarray] = {}
    for key, members in groups.items():
        sources[key] = source_landmarks(_read_each(members, read_image, progress), reference)

    def read(rec: CaseRecord) -> np.ndarray:
        return apply_reference(read_image(rec.image), sources[group_key(rec, u.standardize_per)], reference)

    info = {"per": u.standardize_per, "groups": len(groups), "reference": reference.to_dict()}
    return read, info


def _read_each(records: list[CaseRecord], read_image, progress):
    for rec in records:
        yield read_image(rec.image)
        if progress is not None:
            progress()
