"""Training on volumes: the plan, the cache of preprocessed volumes, validation volumes, unlabelled volumes.

When a dataset's cases are volumes (NIfTI, DICOM series), :func:`volume_data` replaces the
2D in-memory source (:mod:`covseg.training.sources.images`): it fingerprints the training volumes and plans the
preprocessing (:mod:`covseg.training.planning`; the fingerprint is cached beside the case cache),
preprocesses every training case once into the on-disk case cache
(:func:`covseg.transforms.volume.prepare_volume`; epoch 2 reads no NIfTI), and samples patches
with foreground oversampling. A 3D model (``spatial_dims: 3``) trains on 3D patches and predicts
with a sliding window; a 2D model trains on axial slices with ``context_slices`` neighbours as
channels (2.5D) and predicts slice by slice. Validation runs the saved run's own path on whole
volumes at their original geometry (:meth:`covseg.engine.segmenter.Segmenter.volume_probabilities`).
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import numpy as np

from covseg.data.sample import CaseRecord
from covseg.errors import ConfigError, DataError
from covseg.training.cache import CaseCache, _fingerprint, default_cache_root
from covseg.training.data import CaseTensors, case_label
from covseg.training.sources.base import SourceContext, TrainingData
from covseg.transforms.volume import VolumePlan, prepare_labels, prepare_volume
from covseg.utils.paths import expand


def is_volume_dataset(records: list[CaseRecord]) -> bool:
    """True when the cases are volumes (NIfTI files, DICOM series)."""
    from covseg.data.imageio import is_volume

    return bool(records) and is_volume(records[0].image)


def model_spatial_dims(cfg: Any) -> int:
    """2 or 3: the configured model's ``spatial_dims`` (2 for models without the parameter)."""
    return int(cfg.model.params.get("spatial_dims", 2))


def _read(rec: CaseRecord, cfg: Any, labelled: bool = True):
    from covseg.data import load_sample

    sample = load_sample(rec, channels=None, derive_edge=False)
    label = case_label(sample, rec, cfg.data) if labelled else None
    return sample, label


def sample_space(sample) -> str:
    """A training volume's intensity space: what the loader read from its header, else its values decide."""
    from covseg.data.intensity import intensity_space

    return sample.meta.get("intensity_space") or intensity_space(sample.image)


# --------------------------------------------------------------------------------------- planning
def fingerprint_cases(ctx: SourceContext, records: list[CaseRecord]) -> list[dict[str, Any]]:
    """Each training volume's fingerprint entry, cached beside the case cache (keyed by the files)."""
    from covseg.training.planning import case_fingerprint

    base = expand(ctx.cfg.sampler.cache_dir) if ctx.cfg.sampler.cache_dir else default_cache_root()
    path = base / f"fingerprint_{_fingerprint(records, {'fingerprint': 1, 'mask': ctx.cfg.data.mask})}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if len(meta) == len(records):
                    return [{**m, "sample": z[f"s{i}"], "foreground_sample": z[f"f{i}"]} for i, m in enumerate(meta)]
        except (OSError, ValueError, KeyError):
            pass  # rebuilt below
    cases = []
    with ctx.progress() as prog:
        task = prog.add_task("fingerprinting volumes", total=len(records), info="")
        for i, rec in enumerate(records):
            sample, label = _read(rec, ctx.cfg)
            cases.append(case_fingerprint(sample.image, sample.affine, label, seed=i, space=sample_space(sample)))
            prog.advance(task)
    try:
        from covseg.utils.atomic import write_with

        arrays = {f"s{i}": c["sample"] for i, c in enumerate(cases)} | {f"f{i}": c["foreground_sample"] for i, c in enumerate(cases)}
        meta = json.dumps([{k: v for k, v in c.items() if k not in ("sample", "foreground_sample")} for c in cases])
        base.mkdir(parents=True, exist_ok=True)
        write_with(path, lambda p: np.savez(p, meta=np.array(meta), **arrays))
    except OSError:
        pass  # a cache that cannot be written is only slower
    return cases


def plan_volumes(ctx: SourceContext, train_records: list[CaseRecord]) -> tuple[VolumePlan, dict[str, Any]]:
    """Fingerprint the training volumes and plan their preprocessing; the plan and its record for ``plan.json``."""
    from covseg.training.planning import dataset_fingerprint, make_plan

    cfg = ctx.cfg
    cases = fingerprint_cases(ctx, train_records)
    fingerprint = dataset_fingerprint(cases)
    dims = model_spatial_dims(cfg)
    patch = cfg.sampler.patch_size
    if patch is not None and len(patch) != dims:
        raise ConfigError(
            f"sampler.patch_size {list(patch)} has {len(patch)} numbers but the model is {dims}D "
            f"({'in-plane size of axial slices' if dims == 2 else '3 numbers'} expected)"
        )
    plan = make_plan(fingerprint, cases, cfg.preprocess.volume, patch_dims=dims, patch_size=patch)
    if dims == 3 and plan.context_slices:
        raise ConfigError("preprocess.volume.context_slices is for 2D models on volumes (2.5D); a 3D model sees the volume")
    return plan, {"fingerprint": fingerprint, "plan": plan.to_dict()}


# ------------------------------------------------------------------------------------------ cases
def read_volume_case(rec: CaseRecord, plan: VolumePlan, cfg: Any, coarse: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """A training case for the cache: the preprocessed volume ``(C, *grid)`` and its label map on the grid
    (cascade: cut to the coarse stage's region united with the label's, so no lesion is cut off)."""
    sample, label = _read(rec, cfg)
    x, geometry = prepare_volume(sample.image, sample.affine, plan, sample_space(sample))
    y = prepare_labels(label, geometry)
    if coarse is not None:
        from covseg.engine.cascade import crop_to

        box = coarse.box(sample.image, sample.affine, geometry, extra=label, space=sample_space(sample))
        if box is not None:
            x, _ = crop_to(x, geometry, box)
            y = np.ascontiguousarray(y[tuple(slice(a, b) for a, b in box)])
    return x, y


def _check_supported(ctx: SourceContext) -> None:
    cfg = ctx.cfg
    if ctx.text is not None or cfg.data.prior_run:
        raise ConfigError("volumes take no text or cascade prior channel yet (for a 3D cascade use preprocess.volume.coarse_run)")
    if cfg.data.edges:
        raise ConfigError("data.edges (edge supervision) is for 2D images; volumes train without edge maps")


def volume_data(
    ctx: SourceContext, train_records: list[CaseRecord], val_records: list[CaseRecord], split_info: dict[str, Any]
) -> TrainingData:
    """The cases when they are volumes: plan, coarse stage, validation volumes, patch sampler."""
    _check_supported(ctx)
    cfg = ctx.cfg
    plan, plan_record = plan_volumes(ctx, train_records)
    stage = coarse_stage(ctx) if cfg.preprocess.volume.coarse_run else None
    val_ids, images, affines, masks, spacings = [], [], [], [], []
    with ctx.progress() as prog:
        task = prog.add_task("reading validation volumes", total=len(val_records), info="")
        for rec in val_records:
            sample, label = _read(rec, cfg)
            val_ids.append(rec.case_id)
            images.append(sample.image)
            affines.append(sample.affine)
            masks.append(label)
            spacings.append(sample.spacing)
            prog.advance(task)
    channels = int(images[0].shape[-1]) if images and images[0].ndim == 4 else cfg.preprocess.channels
    in_channels = channels * (2 * plan.context_slices + 1) if model_spatial_dims(cfg) == 2 else channels
    val = CaseTensors(
        ids=val_ids, images=None, original_masks=masks, original_images=images, spacings=spacings, affines=affines,
        shapes=[tuple(int(s) for s in m.shape) for m in masks], foreground=[float((m > 0).mean()) for m in masks],
    )
    sampler = volume_sampler(ctx, plan, stage, train_records, split_info)
    cache = sampler.cache
    train = CaseTensors(
        ids=[str(r.case_id) for r in train_records],
        images=None,
        shapes=[tuple(int(v) for v in c["shape"][1:]) for c in cache.cases],
        foreground=[float(c.get("foreground_voxels", 0)) / float(np.prod(c["shape"][1:])) for c in cache.cases],
    )
    return TrainingData(
        train_records, val_records, split_info, train, val, sampler, in_channels,
        volume_plan=plan, cascade_stage=stage, plan_record=plan_record,
    )


def _cache(ctx: SourceContext, plan: VolumePlan, stage: Any, records: list[CaseRecord], read, what: str) -> CaseCache:
    cfg = ctx.cfg
    settings = {
        "volume_plan": plan.to_dict(),
        "mask": cfg.data.mask,
        "layout": cfg.data.layout,
        "what": what,
        "coarse": None if stage is None else str(stage.run_dir),
    }
    with ctx.progress() as prog:
        task = prog.add_task(f"caching {what} volumes", total=len(records), info="")
        cache = CaseCache.build(records, read, settings, ctx.num_classes, cfg.sampler.cache_dir, progress=lambda: prog.advance(task))
    return cache


def _patch_sampler(ctx: SourceContext, plan: VolumePlan, cache: CaseCache, foreground_fraction: float):
    from covseg.training.sampling import PatchSampler

    s = ctx.cfg.sampler
    context = plan.context_slices if model_spatial_dims(ctx.cfg) == 2 else None
    return PatchSampler(
        cache, plan.patch_size, ctx.global_batch_size, ctx.cfg.augment, foreground_fraction, s.batches_per_epoch, context
    )


def volume_sampler(ctx: SourceContext, plan: VolumePlan, stage: Any, records: list[CaseRecord], split_info: dict[str, Any]):
    """Patches of the cached training volumes, ``sampler.foreground_fraction`` of each batch on foreground."""
    cfg = ctx.cfg
    cache = _cache(ctx, plan, stage, records, lambda rec: read_volume_case(rec, plan, cfg, stage), "training")
    split_info["cache"] = str(cache.folder)
    return _patch_sampler(ctx, plan, cache, cfg.sampler.foreground_fraction)


def inferer_spec(cfg: Any, plan: VolumePlan) -> dict[str, Any]:
    """How a volume run meets its network: a sliding window of the patch size (3D; ``inferer`` settings
    kept), or the 2D model slice by slice along the axial axis with the plan's context (2.5D)."""
    spec = cfg.inferer.model_dump()
    if model_spatial_dims(cfg) == 2:
        return {"name": "slices", "params": {"axis": 2, "context": plan.context_slices, "inner": {"name": "resize", "params": {"size": None}}}}
    if spec["name"] == "resize":  # the 2D default: not for volumes
        spec = {"name": "sliding_window", "params": {}}
    if spec["name"] == "sliding_window":
        spec["params"].setdefault("roi_size", list(plan.patch_size))
    return spec


def coarse_stage(ctx: SourceContext):
    """The cascade's coarse stage, copied into ``<run>/coarse`` so the fine run folder predicts on its own."""
    from covseg.engine.cascade import CoarseStage
    from covseg.engine.segmenter import Segmenter
    from covseg.runs.folder import RunFolder

    v = ctx.cfg.preprocess.volume
    source = expand(str(v.coarse_run).replace("{fold}", str(ctx.cfg.data.fold)))
    checkpoint = RunFolder(source).resolve_checkpoint(v.coarse_checkpoint)
    if RunFolder(source).description().volume is None:
        raise ConfigError("preprocess.volume.coarse_run must be a volume run (trained on volumes)", source)
    target = ctx.run.path / "coarse"
    if ctx.runtime.is_main and not (target / "model.json").exists():
        (target / "checkpoints").mkdir(parents=True, exist_ok=True)
        for name in ("model.json", "config.yaml", "plan.json"):
            if (source / name).exists():
                shutil.copy2(source / name, target / name)
        shutil.copy2(checkpoint, target / "checkpoints" / checkpoint.name)
    ctx.runtime.barrier()
    segmenter = Segmenter.from_run(target, checkpoint.stem, ctx.runtime)
    return CoarseStage(segmenter, v.coarse_margin_mm, 0.5, source.resolve(), checkpoint.stem)


# --------------------------------------------------------------------------------------- unlabelled
class VolumePool:
    """Unlabelled volumes for semi-supervised training: cached, patched, scored whole."""

    def __init__(self, cache: CaseCache, sampler: Any, ids: list[str]) -> None:
        self.cache = cache
        self.sampler = sampler
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def volume(self, i: int):
        """Case ``i``'s preprocessed volume as a tensor ``(C, *grid)`` (for uncertainty scoring)."""
        import torch

        return torch.from_numpy(np.array(self.cache.arrays(i)[0], dtype=np.float32))


def unlabeled_volumes(ctx: SourceContext, plan: VolumePlan, stage: Any, records: list[CaseRecord]) -> VolumePool:
    """The unlabelled volumes of a semi-supervised run, preprocessed with the labelled run's plan."""
    if not is_volume_dataset(records):
        raise DataError("semi.unlabeled.root holds 2D images but the labelled cases are volumes", records[0].image if records else None)

    def read(rec):
        sample, _ = _read(rec, ctx.cfg, labelled=False)
        return prepare_volume(sample.image, sample.affine, plan, sample_space(sample))[0], None

    cache = _cache(ctx, plan, stage, records, read, "unlabelled")  # the stage only keys the cache, as ever
    return VolumePool(cache, _patch_sampler(ctx, plan, cache, 0.0), [str(r.case_id) for r in records])


def write_plan(run: Any, plan_record: dict[str, Any], stage: Any) -> None:
    """``plan.json``: the fingerprint and the plan (its preprocessing part is ``model.json``'s ``volume``)."""
    record = dict(plan_record)
    if stage is not None:
        record["cascade"] = {"coarse_run": str(stage.run_dir), "copied_to": "coarse"}
    run.write_json("plan.json", record)


def describe_cascade(stage: Any) -> dict[str, Any] | None:
    if stage is None:
        return None
    return {"run": "coarse", "checkpoint": stage.checkpoint, "margin_mm": stage.margin_mm, "threshold": stage.threshold}
