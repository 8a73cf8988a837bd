"""What the semi-supervised methods share: unlabelled images, pseudo targets, two-source steps."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from covseg.errors import ConfigError


def hard_targets(logits):
    """Hard pseudo labels from logits: ``logit > 0`` (binary) or argmax (K classes)."""
    return (logits > 0).float() if logits.shape[1] == 1 else logits.argmax(dim=1)


def pseudo_supervision_loss(logits, target):
    """Cross-entropy against hard pseudo labels (BCE for one channel)."""
    import torch.nn.functional as F

    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.cross_entropy(logits, target)


def sigmoid_rampup(progress: float, length: float) -> float:
    """``exp(-5 (1 - t)^2)`` ramp from 0 to 1 over ``length`` epochs (Laine & Aila)."""
    if length <= 0:
        return 1.0
    t = min(max(progress / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def edges_from_masks(masks, width: int = 1):
    """Edge maps of binary masks ``(B, 1, H, W)`` (dilation minus erosion), for pseudo labels."""
    import torch.nn.functional as F

    k = 2 * width + 1
    dil = F.max_pool2d(masks, k, stride=1, padding=width)
    ero = -F.max_pool2d(-masks, k, stride=1, padding=width)
    return (dil - ero).clamp(0, 1)


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


def load_unlabeled(trainer) -> None:
    """``trainer.unlabeled``: the unlabelled images at the network size (never a validation image); for a
    volume run, a :class:`covseg.training.volumes.VolumePool` of cached unlabelled volumes."""
    from fnmatch import fnmatch

    from covseg.training.data import build_image_tensors, open_records

    u = trainer.cfg.semi.unlabeled
    if u is None:
        raise ConfigError(f"trainer {trainer.cfg.trainer!r} needs semi.unlabeled.root")
    records = without_validation_images(open_records(u.root, u.layout, u.split), trainer.val_records)
    if u.include:
        records = [r for r in records if any(fnmatch(Path(r.image).name, pattern) for pattern in u.include)]
        if not records:
            raise ConfigError(f"semi.unlabeled.include {u.include} matches no image", u.root)
    if u.limit is not None and u.limit < len(records):
        keep = np.random.default_rng(12345).permutation(len(records))[: u.limit]
        records = [records[i] for i in sorted(keep)]
    trainer.unlabeled_records = records
    info = {"root": u.root, "split": u.split, "include": u.include, "cases": len(records)}
    if getattr(trainer, "volume_plan", None) is not None:  # volumes: cached with the labelled plan, patched
        from covseg.training.volumes import unlabeled_volumes

        if u.standardize != "none":
            raise ConfigError("semi.unlabeled.standardize applies to 2D slices, not to volumes", u.root)
        trainer.unlabeled = unlabeled_volumes(trainer, records)
        trainer.split_info["unlabeled"] = info
        return
    read = None
    with trainer._progress() as prog:
        if u.standardize != "none":  # onto the labelled training slices; nothing else is changed
            from covseg.training.semi.standardize import standardized_reader

            task = prog.add_task("standardising unlabelled", total=len(records), info="")
            read, info["standardize"] = standardized_reader(trainer.train_records, records, u, lambda: prog.advance(task))
            info["standardize"]["method"] = u.standardize
        task = prog.add_task("reading unlabelled", total=len(records), info="")
        trainer.unlabeled = build_image_tensors(records, trainer.preprocessing, progress=lambda: prog.advance(task), read=read)
    trainer.split_info["unlabeled"] = info


def split_outputs(out: dict[str, Any], n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Outputs of a joint batch split into its first ``n`` samples and the rest."""
    first: dict[str, Any] = {}
    second: dict[str, Any] = {}
    for key, value in out.items():
        if isinstance(value, (list, tuple)):
            first[key] = [v[:n] for v in value]
            second[key] = [v[n:] for v in value]
        elif hasattr(value, "shape") and value.ndim > 0:
            first[key], second[key] = value[:n], value[n:]
        else:
            first[key] = second[key] = value
    return first, second


def two_source_loss(trainer, model, primary: dict, secondary: dict | None, weight: float):
    """Loss of one step on a labelled batch and (optionally) a weighted second labelled batch."""
    import torch

    if secondary is None:
        return trainer.criterion(trainer.forward_train(model, primary), primary)
    n = primary["image"].shape[0]
    joint = {"image": torch.cat([primary["image"], secondary["image"]])}
    if primary.get("text") is not None or secondary.get("text") is not None:
        joint["text"] = list(primary.get("text") or [None] * n) + list(secondary.get("text") or [None] * secondary["image"].shape[0])
    out_p, out_s = split_outputs(trainer.forward_train(model, joint), n)
    loss_p, parts = trainer.criterion(out_p, primary)
    loss_s, _ = trainer.criterion(out_s, secondary)
    return loss_p + weight * loss_s, {**parts, "pseudo": float(loss_s.detach())}
