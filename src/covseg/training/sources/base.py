"""The types every training source shares: what it may use (:class:`SourceContext`) and what it returns
(:class:`TrainingData`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from covseg.data.sample import CaseRecord
from covseg.errors import ConfigError


@dataclass
class SourceContext:
    """What every source may use: settings and services, no trainer state."""

    cfg: Any
    run: Any  # RunFolder: where a source may copy what the run needs (the cascade's coarse stage)
    runtime: Any
    preprocessing: Any
    text: Any  # TextSettings or None
    num_classes: int
    global_batch_size: int
    min_batch: int
    progress: Callable[[], Any]  # a fresh rich Progress (disabled when quiet)
    log: Callable[[str], None]


@dataclass
class TrainingData:
    """The cases a run trains and validates on, and how its batches are drawn."""

    train_records: list[CaseRecord]
    val_records: list[CaseRecord]
    split_info: dict[str, Any]
    train: Any  # CaseTensors
    val: Any  # CaseTensors
    sampler: Any
    in_channels: int
    variants: list[list[str]] = field(default_factory=list)  # text prompt variants per training case
    adapters: list[Any] = field(default_factory=list)  # input adapters the data needs (the prior channel)
    volume_plan: Any = None
    cascade_stage: Any = None
    plan_record: dict[str, Any] | None = None

    @property
    def prior_adapter(self) -> Any:
        return next((a for a in self.adapters if a.name == "prior"), None)


def check_dimensions(cfg: Any, records: list[CaseRecord]) -> None:
    """One line when a 3D model meets 2D images (before any case is read). Volumes with a 2D
    model are the 2.5D mode (:mod:`covseg.training.sources.volumes`)."""
    from covseg.data.imageio import is_volume

    first = records[0].image
    if not is_volume(first) and int(cfg.model.params.get("spatial_dims", 2)) == 3:
        raise ConfigError(f"model.params.spatial_dims is 3 but data.root holds 2D images (first: {first})")


def progress_bar(quiet: bool) -> Any:
    """A transient rich progress bar on stderr (disabled when ``quiet``)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=quiet,
        transient=True,
    )
