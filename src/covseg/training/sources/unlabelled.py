"""Unlabelled cases for the semi-supervised methods: images at the network size or cached volumes,
never an image whose content is a validation image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covseg.errors import ConfigError
from covseg.training.sources.base import SourceContext


@dataclass
class UnlabelledData:
    """The unlabelled records, what the methods draw from (``CaseTensors`` or a ``VolumePool``) and the
    ``splits.json`` entry describing them."""

    records: list
    pool: Any
    info: dict[str, Any]


def file_key(path) -> str:
    """Content hash of a file: the same image copied or hard-linked elsewhere is still the same image."""
    import hashlib

    try:
        return hashlib.sha1(Path(path).read_bytes()).hexdigest()
    except OSError:
        return str(path)


def without_validation_images(records: list, val_records: list) -> list:
    """``records`` minus any image whose content is a validation image (no leak through copies)."""
    val_images = {file_key(r.image) for r in val_records}
    return [r for r in records if file_key(r.image) not in val_images]


def unlabelled_data(
    ctx: SourceContext, train_records: list, val_records: list, volume_plan: Any = None, cascade_stage: Any = None
) -> UnlabelledData:
    """The unlabelled images at the network size (never a validation image); for a volume run
    (``volume_plan``), a :class:`~covseg.training.sources.volumes.VolumePool` of cached unlabelled volumes."""
    from fnmatch import fnmatch

    from covseg.training.data import build_image_tensors, open_records

    u = ctx.cfg.semi.unlabeled
    if u is None:
        raise ConfigError(f"trainer {ctx.cfg.trainer!r} needs semi.unlabeled.root")
    records = without_validation_images(open_records(u.root, u.layout, u.split), val_records)
    if u.include:
        records = [r for r in records if any(fnmatch(Path(r.image).name, pattern) for pattern in u.include)]
        if not records:
            raise ConfigError(f"semi.unlabeled.include {u.include} matches no image", u.root)
    if u.limit is not None and u.limit < len(records):
        keep = np.random.default_rng(12345).permutation(len(records))[: u.limit]
        records = [records[i] for i in sorted(keep)]
    info = {"root": u.root, "split": u.split, "include": u.include, "cases": len(records)}
    if volume_plan is not None:  # volumes: cached with the labelled plan, patched
        from covseg.training.sources.volumes import unlabeled_volumes

        if u.standardize != "none":
            raise ConfigError("semi.unlabeled.standardize applies to 2D slices, not to volumes", u.root)
        return UnlabelledData(records, unlabeled_volumes(ctx, volume_plan, cascade_stage, records), info)
    read = None
    with ctx.progress() as prog:
        if u.standardize != "none":  # onto the labelled training slices; nothing else is changed
            from covseg.training.semi.standardize import standardized_reader

            task = prog.add_task("standardising unlabelled", total=len(records), info="")
            read, info["standardize"] = standardized_reader(train_records, records, u, lambda: prog.advance(task))
            info["standardize"]["method"] = u.standardize
        task = prog.add_task("reading unlabelled", total=len(records), info="")
        pool = build_image_tensors(records, ctx.preprocessing, progress=lambda: prog.advance(task), read=read)
    return UnlabelledData(records, pool, info)
