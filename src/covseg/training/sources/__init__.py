"""What a run trains on: sources that read the cases and return a typed :class:`TrainingData`.

A source is a function of a :class:`SourceContext` (the config, the run folder, the runtime,
how to report progress) and the split's records; it never reads or writes the trainer's fields,
so the trainer is the epoch loop and its hooks, and a new kind of data is a new source:

- :mod:`~covseg.training.sources.images`: 2D images held in memory at the network size (with
  text, the cascade's prior channel), batched by the configured sampler;
- :mod:`~covseg.training.sources.volumes`: volumes planned, cached and patched (3D and 2.5D);
- :mod:`~covseg.training.sources.unlabelled`: the unlabelled images or volumes of semi-supervised
  methods.
"""

from __future__ import annotations

from covseg.training.sources.base import SourceContext, TrainingData, check_dimensions, progress_bar

__all__ = ["SourceContext", "TrainingData", "load_training_data", "progress_bar"]


def load_training_data(ctx: SourceContext) -> TrainingData:
    """The split's cases through the source their kind needs: volumes, else in-memory images."""
    from covseg.training.data import split_records
    from covseg.training.sources.volumes import is_volume_dataset, volume_data

    train_records, val_records, split_info = split_records(ctx.cfg.data, ctx.cfg.train.seed)
    check_dimensions(ctx.cfg, train_records)
    if is_volume_dataset(train_records):  # planned, cached, patched, validated as whole volumes
        return volume_data(ctx, train_records, val_records, split_info)
    from covseg.training.sources.images import image_data

    return image_data(ctx, train_records, val_records, split_info)
