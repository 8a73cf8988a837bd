"""Samplers: the batches of an epoch, each a function of (seed, epoch) alone.

- ``images`` (:class:`ImageSampler`): whole images resized once to the network size and held in
  memory (the field's 2D datasets are 50 to a few thousand slices); every batch is augmented
  in torch from the epoch's generator.
- ``patches`` (:class:`PatchSampler`): cases preprocessed once into an on-disk cache
  (:mod:`covseg.training.cache`) and read lazily, a patch at a time, through memory maps, so a
  dataset larger than RAM trains; a share of each batch is forced to contain foreground
  (nnU-Net's oversampling: a random foreground voxel becomes the patch centre). 3D patches get
  3D augmentation (:mod:`covseg.transforms.augment3d`); with ``context_slices`` a 2D model trains
  on volumes (2.5D): a 2D patch of an axial slice with its neighbours as channels.

Both give ``batches(generator)`` → index batches for one epoch, ``plan(indices, generator)`` → a
*job* holding every random number the batch needs (cheap, drawn in the main process in a fixed
order) and ``load(job)`` → the augmented batch dict (``image``, ``mask``, ``edge``, ``text`` …; the
heavy part, which data-loader workers may run). A job has one row per sample, so
:func:`shard_job` splits a global batch between processes with the same per-sample result as
one process would get: the stream of random numbers, and so the run, does not depend on the
number of workers or processes. Whole images also carry the
image-level ``label`` and, with label-only cases, ``has_mask``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from covseg.registry import SAMPLERS
from covseg.transforms.augment import AugmentConfig, apply_augmentation, draw_augmentation
from covseg.transforms.augment3d import apply_augmentation_3d, draw_augmentation_3d


def shard_slice(n: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous part of ``n`` samples split ``world`` ways (as ``numpy.array_split``)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def shard_job(job: Any, part: slice) -> Any:
    """The rows ``part`` of every per-sample entry of a job (tensors, lists, nested dicts)."""
    if isinstance(job, dict):
        return {k: shard_job(v, part) for k, v in job.items()}
    if isinstance(job, (torch.Tensor, list, tuple)):
        return job[part]
    return job


@dataclass
class SamplerRequest:
    """What a registered sampler is built from (``SAMPLERS.get(name).from_request(request)``).

    ``data`` holds the training cases in memory; ``case_cache()`` builds (or reuses) the on-disk
    cache of them for lazy readers; ``config`` is the config's ``sampler`` section;
    ``batch_size`` counts samples over all processes; ``extra_inputs`` is true when a text or
    prior input adapter takes part.
    """

    data: Any
    config: Any
    batch_size: int
    augment: AugmentConfig
    variants: list[list[str]] | None = None
    min_batch: int = 2
    case_cache: Callable[[], Any] | None = None
    extra_inputs: bool = False


class Sampler:
    """Base sampler over ``len(self)`` training cases."""

    name = "base"

    @classmethod
    def from_request(cls, request: SamplerRequest) -> Sampler:
        """The sampler the config names, built from the training data (what the registry builds)."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def batches(self, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """Index batches of one epoch, drawn from ``generator``."""
        raise NotImplementedError

    def plan(self, indices: torch.Tensor, generator: torch.Generator) -> dict[str, Any]:
        """Everything random about the batch of ``indices``, drawn from ``generator``."""
        raise NotImplementedError

    def load(self, job: dict[str, Any]) -> dict[str, Any]:
        """The augmented batch a job describes."""
        raise NotImplementedError

    def batch(self, indices: torch.Tensor, generator: torch.Generator) -> dict[str, Any]:
        """The augmented batch of the cases ``indices`` (``load(plan(...))``)."""
        return self.load(self.plan(indices, generator))


@SAMPLERS.register("images")
class ImageSampler(Sampler):
    """Whole in-memory images (``CaseTensors``), shuffled once per epoch; the last short batch is kept."""

    name = "images"

    def __init__(
        self, data: Any, batch_size: int, augment: AugmentConfig, variants: list[list[str]] | None = None, min_batch: int = 2
    ) -> None:
        self.data = data
        self.batch_size = int(batch_size)
        self.augment = augment
        self.variants = variants
        self.min_batch = int(min_batch)

    @classmethod
    def from_request(cls, request: SamplerRequest) -> ImageSampler:
        return cls(request.data, request.batch_size, request.augment, request.variants, request.min_batch)

    def __len__(self) -> int:
        return len(self.data)

    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.data) / self.batch_size))

    def batches(self, generator):
        perm = torch.randperm(len(self.data), generator=generator)
        for start in range(0, len(perm), self.batch_size):
            idx = perm[start : start + self.batch_size]
            if len(idx) < self.min_batch and len(perm) >= self.min_batch:
                idx = torch.cat([idx, perm[: self.min_batch - len(idx)]])  # batch norm needs two samples a process
            yield idx

    def plan(self, indices, generator):
        shape = (len(indices), *self.data.images.shape[1:])
        job: dict[str, Any] = {"indices": indices, "augment": draw_augmentation(shape, self.augment, generator)}
        if self.data.texts:
            job["text"] = [self.data.texts[int(i)] for i in indices]
        if self.variants is not None:
            job["text_variants"] = [self.variants[int(i)] for i in indices]
        return job

    def load(self, job):
        data, indices = self.data, job["indices"]
        labels: dict[str, torch.Tensor] = {}
        if data.masks is not None:
            labels["mask"] = data.masks[indices]
        if data.edges is not None:
            labels["edge"] = data.edges[indices]
        image, labels = apply_augmentation(data.images[indices], labels, self.augment, job["augment"])
        batch: dict[str, Any] = {"image": image, **labels, **image_level_targets(data, indices)}
        for key in ("text", "text_variants"):
            if key in job:
                batch[key] = list(job[key])
        return batch


def image_level_targets(data: Any, indices: torch.Tensor) -> dict[str, torch.Tensor]:
    """The batch's class labels and, when some cases are label-only, the per-sample ``has_mask`` / ``has_edge``
    that keep those cases out of the map losses (see :mod:`covseg.losses.terms`)."""
    out: dict[str, torch.Tensor] = {}
    if getattr(data, "labels", None) is not None:
        out["label"] = data.labels[indices]
    has_mask = getattr(data, "has_mask", None)
    if has_mask is not None and not bool(has_mask.all()):
        out["has_mask"] = has_mask[indices]
        if data.edges is not None:
            out["has_edge"] = has_mask[indices]
    return out


def _patch_start(shape: tuple[int, ...], patch: tuple[int, ...], centre: np.ndarray | None, rng: torch.Generator) -> list[int]:
    """Start of a patch inside (or, for small cases, around) an array of ``shape``."""
    starts = []
    for axis, (size, p) in enumerate(zip(shape, patch)):
        low, high = min(0, size - p), max(0, size - p)  # negative start = padding before
        if centre is not None:
            s = int(centre[axis]) - p // 2
            starts.append(int(np.clip(s, low, high)))
        else:
            starts.append(int(torch.randint(low, high + 1, (), generator=rng)))
    return starts


def _crop(array: np.ndarray, start: list[int], patch: tuple[int, ...], fill: float) -> np.ndarray:
    """``array[..., start:start+patch]`` over the trailing axes, padded with ``fill`` outside it."""
    lead = array.ndim - len(patch)
    src, dst = [], []
    for s, p, size in zip(start, patch, array.shape[lead:]):
        a, b = max(s, 0), min(s + p, size)
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    out = np.full((*array.shape[:lead], *patch), fill, dtype=array.dtype)
    out[(Ellipsis, *dst)] = array[(Ellipsis, *src)]
    return out


@SAMPLERS.register("patches")
class PatchSampler(Sampler):
    """Random patches of cached cases, ``foreground_fraction`` of each batch centred on foreground.

    ``cache`` is a :class:`covseg.training.cache.CaseCache`; images and labels are memory-mapped
    and only the patch is read. With ``foreground_fraction = f`` the last ``round(f · batch)``
    samples of every batch are centred on a random foreground voxel of their case (cases without
    foreground fall back to a random patch), as nnU-Net's ``oversample_foreground_percent``.
    2D patches are augmented like whole images; 3D patches get flips, rotation, scaling and
    intensity changes (:func:`covseg.transforms.augment3d.apply_augmentation_3d`).

    ``context_slices = k`` (2.5D, 3D cases and a 2D ``patch_size``): each sample is an in-plane
    patch of one axial slice (last axis) with its ``k`` neighbours on each side as channels,
    ``(C·(2k+1), *patch)`` channel-major (edge slices repeat), labelled by its centre slice: the
    layout the ``slices`` inferer gives the model at prediction.
    """

    name = "patches"

    def __init__(
        self,
        cache: Any,
        patch_size: tuple[int, ...],
        batch_size: int,
        augment: AugmentConfig,
        foreground_fraction: float = 0.33,
        batches_per_epoch: int | None = None,
        context_slices: int | None = None,
    ) -> None:
        self.cache = cache
        self.context = context_slices
        self.patch_size = tuple(int(p) for p in patch_size)
        self.batch_size = int(batch_size)
        self.augment = augment
        self.foreground_fraction = float(foreground_fraction)
        self.n_batches = batches_per_epoch

    @classmethod
    def from_request(cls, request: SamplerRequest) -> PatchSampler:
        from covseg.errors import ConfigError

        if request.extra_inputs:
            raise ConfigError("sampler: patches does not take a cascade prior or text yet; use sampler.name: images")
        s = request.config
        if s.patch_size is None:
            raise ConfigError("sampler: patches needs patch_size for 2D images (volumes plan their own)")
        cache = request.case_cache()
        return cls(cache, s.patch_size, request.batch_size, request.augment, s.foreground_fraction, s.batches_per_epoch)

    def __len__(self) -> int:
        return len(self.cache)

    def steps_per_epoch(self) -> int:
        return self.n_batches or max(1, math.ceil(len(self.cache) / self.batch_size))

    def batches(self, generator):
        for _ in range(self.steps_per_epoch()):
            yield torch.randint(len(self.cache), (self.batch_size,), generator=generator)

    def forced_foreground(self, n: int) -> list[bool]:
        """Which of ``n`` samples must contain foreground (the last ones, as nnU-Net)."""
        k = round(self.foreground_fraction * n)
        return [i >= n - k for i in range(n)]

    def plan(self, indices, generator):
        cases, starts = [], []
        slab = self.context is not None
        for case, force in zip(indices.tolist(), self.forced_foreground(len(indices))):
            spatial = tuple(self.cache.cases[int(case)]["shape"][1:])
            if len(spatial) != len(self.patch_size) + (1 if slab else 0):
                raise ValueError(f"patch_size {list(self.patch_size)} does not fit cases of {len(spatial)} dimensions")
            centre = None
            if force:
                fg = self.cache.foreground_locations(int(case))
                if len(fg):
                    centre = fg[int(torch.randint(len(fg), (), generator=generator))]
            if slab:  # in-plane start, then the centre slice (any slice: edges repeat, as at prediction)
                start = _patch_start(spatial[:-1], self.patch_size, None if centre is None else centre[:-1], generator)
                z = int(centre[-1]) if centre is not None else int(torch.randint(spatial[-1], (), generator=generator))
                starts.append([*start, z])
            else:
                starts.append(_patch_start(spatial, self.patch_size, centre, generator))
            cases.append(int(case))
        job: dict[str, Any] = {"cases": cases, "starts": starts}
        n = len(cases)
        channels = int(self.cache.cases[cases[0]]["shape"][0]) if cases else 1
        if len(self.patch_size) == 2:
            if slab:
                channels *= 2 * int(self.context) + 1
            job["augment"] = draw_augmentation((n, channels, *self.patch_size), self.augment, generator)
        else:
            job["augment3d"] = draw_augmentation_3d((n, channels, *self.patch_size), self.augment, generator)
        return job

    def _slab(self, image: np.ndarray, label: np.ndarray | None, start: list[int]):
        """2.5D sample: the in-plane patch of slice ``start[-1]`` and its neighbours as channels, its label."""
        k = int(self.context or 0)
        index = np.clip(np.arange(start[-1] - k, start[-1] + k + 1), 0, image.shape[-1] - 1)
        part = _crop(np.moveaxis(np.asarray(image[..., index]), -1, 1), start[:-1], self.patch_size, 0.0)
        part = part.reshape(-1, *self.patch_size)
        lab = None if label is None else _crop(np.asarray(label[..., start[-1]]), start[:-1], self.patch_size, 0)
        return part, lab

    def load(self, job):
        images, labels = [], []
        for case, start in zip(job["cases"], job["starts"]):
            image, label = self.cache.arrays(case)
            if self.context is not None:
                patch, lab = self._slab(image, label, start)
            else:
                patch = _crop(image, start, self.patch_size, 0.0)
                lab = None if label is None else _crop(label, start, self.patch_size, 0)
            images.append(torch.from_numpy(np.ascontiguousarray(patch, dtype=np.float32)))
            if lab is not None:
                labels.append(torch.from_numpy(np.ascontiguousarray(lab)))
        image = torch.stack(images)
        batch_labels: dict[str, torch.Tensor] = {}
        if labels:
            lab = torch.stack(labels)  # (B, 1, *spatial) uint8 class indices
            batch_labels["mask"] = lab.float() if self.cache.num_classes == 1 else lab[:, 0].long()
        if image.ndim == 4:
            image, batch_labels = apply_augmentation(image, batch_labels, self.augment, job["augment"])
        else:
            image, batch_labels = apply_augmentation_3d(image, batch_labels, self.augment, job["augment3d"])
        return {"image": image, **batch_labels}
