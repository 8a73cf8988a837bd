"""What the semi-supervised methods share: unlabelled images, pseudo targets, two-source steps."""

from __future__ import annotations

import math
from typing import Any

from covseg.training.sources.unlabelled import file_key, without_validation_images

__all__ = ["draw_unlabelled_batch", "file_key", "load_unlabeled", "split_outputs", "two_source_loss", "without_validation_images"]


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


def load_unlabeled(trainer) -> None:
    """The semi-supervised methods' data hook: ``trainer.unlabeled`` (images at the network size, or a
    :class:`~covseg.training.sources.volumes.VolumePool` for a volume run) from the unlabelled source."""
    from covseg.training.sources.unlabelled import unlabelled_data

    data = unlabelled_data(
        trainer.source_context(), trainer.train_records, trainer.val_records, trainer.volume_plan, trainer.cascade_stage
    )
    trainer.unlabeled_records, trainer.unlabeled = data.records, data.pool
    trainer.split_info["unlabeled"] = data.info


def draw_unlabelled_batch(trainer, pool_indices, batch_size: int, generator):
    """An augmented batch of unlabelled images (on the device) drawn from ``pool_indices``.

    ``batch_size`` is the global batch (all processes); each process gets its share. Volume runs
    draw augmented patches of the chosen unlabelled volumes through their sampler."""
    import torch

    from covseg.transforms.augment import apply_augmentation, draw_augmentation

    uidx = pool_indices[torch.randint(len(pool_indices), (batch_size,), generator=generator)]
    if trainer.volume_plan is not None:
        sampler = trainer.unlabeled.sampler
        xu = sampler.load(trainer.shard_rows(sampler.plan(uidx, generator)))["image"]
    else:
        draws = draw_augmentation((batch_size, *trainer.unlabeled.images.shape[1:]), trainer.augment_cfg, generator)
        uidx, draws = trainer.shard_rows(uidx), trainer.shard_rows(draws)
        xu, _ = apply_augmentation(trainer.unlabeled.images[uidx], {}, trainer.augment_cfg, draws)
    return trainer.runtime.to_device(xu)


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
