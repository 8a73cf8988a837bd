"""2D images held in memory at the network size: the text of each case, the cascade's prior channel,
and the configured sampler (:data:`covseg.registry.SAMPLERS`) over them."""

from __future__ import annotations

from typing import Any

from covseg.data.sample import CaseRecord
from covseg.training.sources.base import SourceContext, TrainingData


def image_data(
    ctx: SourceContext, train_records: list[CaseRecord], val_records: list[CaseRecord], split_info: dict[str, Any]
) -> TrainingData:
    """Training and validation images as tensors (validation keeps the originals), then the sampler."""
    from covseg.training.data import build_tensors

    cfg = ctx.cfg
    with ctx.progress() as prog:
        task = prog.add_task("reading cases", total=len(train_records) + len(val_records), info="")
        step = lambda: prog.advance(task)  # noqa: E731
        train = build_tensors(train_records, ctx.preprocessing, cfg.data, progress=step)
        val = build_tensors(val_records, ctx.preprocessing, cfg.data, keep_originals=True, progress=step, images=False)
    data = TrainingData(train_records, val_records, split_info, train, val, None, cfg.preprocess.channels)
    if ctx.text is not None:
        add_texts(ctx, data)
    if cfg.data.prior_run:
        from covseg.training.sources.prior import add_prior_channel

        add_prior_channel(ctx, data)
    data.sampler = make_sampler(ctx, data)
    return data


def add_texts(ctx: SourceContext, data: TrainingData) -> None:
    """Each case's text checked against the text settings, and the prompt variants of the training cases."""
    from covseg.training import text as text_training

    data.train.texts = text_training.check_texts(data.train_records, data.train.texts, ctx.text)
    data.val.texts = text_training.check_texts(data.val_records, data.val.texts, ctx.text)
    data.variants = text_training.prompt_variants(data.train_records, ctx.text.prompt_types)
    for line in text_training.warnings_for(ctx.text, data.variants, ctx.cfg.augment.hflip, data.train.texts):
        ctx.log(line)


def make_sampler(ctx: SourceContext, data: TrainingData) -> Any:
    """The configured sampler (:data:`covseg.registry.SAMPLERS`) over the training cases."""
    from covseg.registry import SAMPLERS
    from covseg.training.sampling import SamplerRequest

    request = SamplerRequest(
        data.train,
        ctx.cfg.sampler,
        ctx.global_batch_size,
        ctx.cfg.augment,
        data.variants or None,
        ctx.min_batch,
        case_cache=lambda: case_cache(ctx, data),
        extra_inputs=bool(ctx.cfg.data.prior_run) or ctx.text is not None,
    )
    return SAMPLERS.get(ctx.cfg.sampler.name).from_request(request)


def case_cache(ctx: SourceContext, data: TrainingData) -> Any:
    """The on-disk cache of the preprocessed training cases (for samplers reading them lazily)."""
    from covseg.training.cache import CaseCache
    from covseg.training.data import read_case

    cfg = ctx.cfg
    settings = {"preprocessing": ctx.preprocessing.to_dict(), "mask": cfg.data.mask, "layout": cfg.data.layout}
    with ctx.progress() as prog:
        task = prog.add_task("caching cases", total=len(data.train_records), info="")
        cache = CaseCache.build(
            data.train_records,
            lambda rec: read_case(rec, ctx.preprocessing, cfg.data),
            settings,
            ctx.num_classes,
            cfg.sampler.cache_dir,
            progress=lambda: prog.advance(task),
        )
    data.split_info["cache"] = str(cache.folder)
    return cache
