"""Cases for training: splits (k-fold or a separate validation set) and in-memory tensors.

Small 2D datasets of the field (50 to a few thousand slices) fit in memory once resized to
the network size, so each case is read and preprocessed once and batches are sliced from
tensors; augmentation then runs batched in torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from covseg.data.sample import CaseRecord
from covseg.errors import ConfigError, DataError
from covseg.training.config import DataConfig
from covseg.transforms.preprocess import Preprocessing
from covseg.utils.paths import expand

SPLIT_SEED = 20200401  # folds depend on the case ids alone, so every model sees the same folds


@dataclass
class CaseTensors:
    """Preprocessed cases: network-size tensors plus original-size labels for validation."""

    ids: list[str]
    images: Any  # torch.Tensor (N, C, H, W)
    masks: Any | None = None  # (N, 1, H, W) float for binary, (N, H, W) long for K classes
    edges: Any | None = None  # (N, 1, H, W) float
    texts: list[str | None] = field(default_factory=list)
    original_masks: list[np.ndarray] = field(default_factory=list)
    original_images: list[np.ndarray] = field(default_factory=list)
    spacings: list[tuple[float, ...] | None] = field(default_factory=list)
    affines: list[np.ndarray] = field(default_factory=list)  # volumes: each original's affine
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    foreground: list[float] = field(default_factory=list)
    labels: Any | None = None  # (N,) long image-level classes (joint classification), 0 = negative
    has_mask: Any | None = None  # (N,) bool: False for label-only cases (zero mask placeholder)
    label_sources: list[str] = field(default_factory=list)  # where each class came from (csv, masks ...)

    def __len__(self) -> int:
        return len(self.ids)


def open_records(
    root: str, layout: str = "auto", split: str | None = None, prompt: str | None = None, text: str | None = None
) -> list[CaseRecord]:
    """Records of a dataset folder via the data layer's layout readers."""
    from covseg.data import open_dataset

    path = expand(root)
    if not path.exists():
        raise DataError("dataset folder not found", path)
    kwargs: dict[str, Any] = {"layout": layout, "split": split}
    if prompt is not None:
        kwargs["prompt"] = prompt
    if text is not None:
        kwargs["text"] = expand(text)
    return list(open_dataset(path, **kwargs).records)


def kfold_split(ids: list[str], folds: int, fold: int) -> tuple[list[str], list[str]]:
    """Deterministic k-fold split of case ids (sorted, then shuffled with a fixed seed)."""
    if fold >= folds:
        raise ConfigError(f"data.fold={fold} but data.folds={folds}")
    if len(ids) < folds:
        raise ConfigError(f"{len(ids)} cases cannot make {folds} folds")
    order = sorted(ids)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(order))
    chunks = np.array_split(np.array(order, dtype=object)[perm], folds)
    val = sorted(chunks[fold].tolist())
    train = sorted(i for k, c in enumerate(chunks) if k != fold for i in c.tolist())
    return train, val


def split_records(cfg: DataConfig, seed: int = 0) -> tuple[list[CaseRecord], list[CaseRecord], dict[str, Any]]:
    """Training and validation records plus a description for ``splits.json``."""
    from covseg.training import labels

    table = labels.labels_table(cfg)
    records = labels.add_csv_labels(open_records(cfg.root, cfg.layout, cfg.split, cfg.prompt, cfg.text), table)
    records = [r for r in records + labels.extra_records(cfg) if _has_label(r, cfg)]
    labels.check_unique_ids(records)
    if not records:
        raise DataError("no labelled cases found", expand(cfg.root))
    # data.extra sources marked train_only join every fold's training cases after the split
    always = [r for r in records if r.meta.get("train_only")]
    records = [r for r in records if not r.meta.get("train_only")]
    by_id = {r.case_id: r for r in records}
    if cfg.val_root and cfg.inner_folds is not None:
        raise ConfigError("data.inner_folds (nested cross-validation) needs k-fold on data.root, not data.val_root")
    if cfg.inner_folds is not None and cfg.inner_fold >= cfg.inner_folds:
        raise ConfigError(f"data.inner_fold={cfg.inner_fold} but data.inner_folds={cfg.inner_folds}")
    if cfg.val_root:
        val_records = labels.add_csv_labels(
            open_records(cfg.val_root, cfg.layout, cfg.val_split, cfg.prompt, cfg.text), table, False
        )
        val = [r for r in val_records if _has_label(r, cfg)]
        train_ids, val_ids = sorted(by_id), [r.case_id for r in val]
        info: dict[str, Any] = {"scheme": "separate", "val_root": cfg.val_root, "val_split": cfg.val_split}
    else:
        train_ids, val_ids = kfold_split(list(by_id), cfg.folds, cfg.fold)
        info = {"scheme": "kfold", "folds": cfg.folds, "fold": cfg.fold, "split_seed": SPLIT_SEED}
        if cfg.inner_folds is not None:
            outer_val = val_ids
            train_ids, val_ids = kfold_split(train_ids, cfg.inner_folds, cfg.inner_fold)
            info.update({"scheme": "nested_kfold", "inner_folds": cfg.inner_folds, "inner_fold": cfg.inner_fold, "outer_val": outer_val})
        val = [by_id[i] for i in val_ids]
    if cfg.limit is not None and cfg.limit < len(train_ids):
        keep = np.random.default_rng(SPLIT_SEED + 1).permutation(len(train_ids))[: cfg.limit]
        train_ids = sorted(train_ids[k] for k in keep)
        info["limit"] = cfg.limit
    if cfg.val_limit is not None and cfg.val_limit < len(val):
        val = val[: cfg.val_limit]
        val_ids = [r.case_id for r in val]
    train = [by_id[i] for i in train_ids] + always
    train_ids = [*train_ids, *(r.case_id for r in always)]
    info.update({"train": train_ids, "val": val_ids})
    return train, val, info


def _has_label(record: CaseRecord, cfg: DataConfig) -> bool:
    from covseg.training.labels import has_training_label

    return has_training_label(record, cfg)


def build_tensors(
    records: list[CaseRecord],
    pre: Preprocessing,
    cfg: DataConfig,
    keep_originals: bool = False,
    progress: Any = None,
    images: bool = True,
):
    """Read, normalise and resize every case once (``images=False``: labels and originals only,
    for validation, which prepares its inputs at the original size)."""
    import torch

    from covseg.data import load_sample
    from covseg.training.labels import class_label, is_label_only
    from covseg.transforms.preprocess import resize_tensor

    want_images = images
    images, masks, edges, texts, ids = [], [], [], [], []
    orig_masks, orig_images, spacings, shapes, foreground = [], [], [], [], []
    classes, label_sources, has_mask = [], [], []
    for rec in records:
        sample = load_sample(rec, channels=None)
        label = case_label(sample, rec, cfg)
        with_mask = not is_label_only(rec, cfg)
        cls, cls_source = class_label(rec, label if with_mask else None, cfg)
        classes.append(cls)
        label_sources.append(cls_source)
        has_mask.append(with_mask)
        size = pre.size or tuple(label.shape)
        if want_images:
            x = torch.from_numpy(pre.normalise(sample.image, sample.meta.get("intensity_space")))[None]
            images.append(resize_tensor(x, size)[0])
        lab = torch.from_numpy(label.astype(np.float32))[None, None]
        lab = resize_tensor(lab, size, mode="nearest")[0]
        masks.append(lab if cfg.num_classes == 1 else lab[0].long())
        if cfg.edges:
            edge = sample.edge if sample.edge is not None else _edge_from_mask(label)
            e = torch.from_numpy((edge > 0).astype(np.float32))[None, None]
            edges.append((resize_tensor(e, size, mode="bilinear")[0] > 0.25).float())
        texts.append(sample.text)
        ids.append(rec.case_id)
        shapes.append(tuple(int(v) for v in label.shape))
        foreground.append(float((label > 0).mean()))
        if keep_originals:
            orig_masks.append(label if with_mask else None)
            orig_images.append(sample.image)
            spacings.append(sample.spacing)
        if progress is not None:
            progress()
    return CaseTensors(
        ids=ids,
        images=torch.stack(images) if images else None,
        masks=torch.stack(masks),
        edges=torch.stack(edges) if edges else None,
        texts=texts,
        original_masks=orig_masks,
        original_images=orig_images,
        spacings=spacings,
        shapes=shapes,
        foreground=foreground,
        labels=torch.tensor(classes, dtype=torch.long),
        has_mask=torch.tensor(has_mask, dtype=torch.bool),
        label_sources=label_sources,
    )


def case_label(sample: Any, rec: CaseRecord, cfg: DataConfig) -> np.ndarray:
    """The training label map of a sample: binary 0/1, or checked class indices below ``num_classes``.

    Cases promised infection-free (``data.extra`` with ``masks: empty``) and label-only cases get an
    all-zero map (label-only ones are kept out of the segmentation loss by ``has_mask``).
    """
    from covseg.training.labels import has_training_label

    label = sample.masks.get("multiclass") if cfg.mask == "multiclass" else sample.mask
    if label is None and has_training_label(rec, cfg):
        return np.zeros(sample.spatial_shape, dtype=np.uint8)
    if label is None:
        raise DataError(f"no {cfg.mask} mask for case {rec.case_id}", rec.image)
    if cfg.num_classes == 1:
        return (label > 0).astype(np.uint8)
    if label.max() >= cfg.num_classes:
        raise DataError(f"mask has label {int(label.max())} but data.num_classes={cfg.num_classes}", rec.mask or rec.image)
    return label


def read_case(rec: CaseRecord, pre: Preprocessing, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """One case for the patch cache: normalised image ``(C, *spatial)`` at its size, and its label map."""
    from covseg.data import load_sample

    sample = load_sample(rec, channels=None)
    return pre.normalise(sample.image, sample.meta.get("intensity_space")), case_label(sample, rec, cfg)


def _edge_from_mask(mask: np.ndarray) -> np.ndarray:
    from covseg.transforms.edges import mask_to_edge

    return mask_to_edge(mask)


def dataset_summary(records: list[CaseRecord], tensors: CaseTensors, cfg: DataConfig) -> dict[str, Any]:
    """What a run was trained on, for ``dataset.json``."""
    shapes, fg = tensors.shapes, tensors.foreground
    return {
        "root": cfg.root,
        "resolved_root": str(expand(cfg.root)),
        "layout": cfg.layout,
        "split": cfg.split,
        "mask": cfg.mask,
        "num_classes": cfg.num_classes,
        "cases": len(records),
        "original_shape_min": [int(min(s[i] for s in shapes)) for i in range(len(shapes[0]))] if shapes else None,
        "original_shape_max": [int(max(s[i] for s in shapes)) for i in range(len(shapes[0]))] if shapes else None,
        "foreground_fraction_mean": float(np.mean(fg)) if fg else None,
        "with_text": sum(t is not None for t in tensors.texts),
    }


def build_image_tensors(
    records: list[CaseRecord], pre: Preprocessing, progress: Any = None, read: Any = None
) -> CaseTensors:
    """Images only (unlabelled data for semi-supervised training), at the network size. ``read``
    (record → raw image) replaces plain reading, e.g. to standardise the grey levels first."""
    import torch

    from covseg.data.imageio import read_image
    from covseg.data.intensity import space_of
    from covseg.transforms.preprocess import resize_tensor

    images, ids, texts, shapes = [], [], [], []
    for rec in records:
        image = read_image(rec.image) if read is None else read(rec)
        x = torch.from_numpy(pre.normalise(image, space_of(rec.image, image)))[None]
        size = pre.size or tuple(x.shape[-2:])
        images.append(resize_tensor(x, size)[0])
        ids.append(rec.case_id)
        texts.append(rec.text)
        shapes.append(tuple(int(v) for v in image.shape[:2]))
        if progress is not None:
            progress()
    if not images:
        raise DataError("no unlabelled images found", records[0].image.parent if records else None)
    return CaseTensors(ids=ids, images=torch.stack(images), texts=texts, shapes=shapes)
