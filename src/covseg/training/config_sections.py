"""The sections of the training config that say how a run trains, and the strict base of every section.

Model, loss, optimiser, schedule, sampler, inferer, runtime and the train settings change together
with the training loop; the dataset sections are in :mod:`covseg.training.config_data`, the
semi-supervised ones in :mod:`covseg.training.config_semi`, the whole config and its loading in
:mod:`covseg.training.config` (the import path callers use).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from covseg.utils.checks import bounded_parallel


# The base of every config section: unknown keys are refused (a typo is an error, not a silent default).
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _registered(kind: str, name: str) -> str:
    """``name`` if the registry of ``kind`` (samplers, optimisers, schedules) has it, else a one-line error."""
    from covseg.registry import REGISTRIES

    registry = REGISTRIES[kind]
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(registry.names())}")
    return name


class ModelConfig(_Strict):
    name: str
    params: dict[str, Any] = {}


class SamplerConfig(_Strict):
    """How an epoch's batches are drawn: whole images held in memory, or patches read lazily."""

    name: str = Field(
        "images", description="A registered sampler (covseg.registry.SAMPLERS): images, patches."
    )
    patch_size: tuple[int, ...] | None = Field(
        None, description="Patch size (2 or 3 numbers) for name: patches; for volumes, unset means planned."
    )
    foreground_fraction: float = Field(
        0.33,
        ge=0,
        le=1,
        description="Share of each batch forced to contain foreground (nnU-Net's oversampling).",
    )
    batches_per_epoch: int | None = Field(
        None, ge=1, description="Default: one pass over the training cases."
    )
    cache_dir: str | None = Field(
        None,
        description="Where preprocessed cases are cached for patches (default: $COVSEG_CACHE or ~/.cache/covseg).",
    )

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        return _registered("sampler", v)

    @model_validator(mode="after")
    def _patch_size(self) -> SamplerConfig:
        if self.patch_size is not None and (
            len(self.patch_size) not in (2, 3) or any(s < 1 for s in self.patch_size)
        ):
            raise ValueError(f"patch_size must be 2 or 3 positive numbers, got {list(self.patch_size)}")
        return self


class RuntimeConfig(_Strict):
    """Where and how training runs (``--device`` on the command line sets ``device``)."""

    device: str = Field("auto", description="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps.")
    amp: Literal["off", "bf16", "fp16"] = Field(
        "off", description="Mixed precision; fp16 uses a gradient scaler."
    )
    compile: bool = Field(
        False, description="torch.compile the model (first steps are slower while it compiles)."
    )
    workers: int = Field(
        0,
        ge=0,
        description="Data-loader worker processes preparing batches (0: in the main process); "
        "the run does not depend on this number.",
    )
    pin_memory: bool = Field(True, description="Pinned host memory for batches going to a CUDA device.")

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int) -> int:
        return bounded_parallel(v, "workers")


class InfererConfig(_Strict):
    """How validation and prediction feed images to the network (see ``covseg.engine.inferers``)."""

    name: str = "resize"
    params: dict[str, Any] = {}


class LossConfig(_Strict):
    """Either named ``terms`` (output → loss and weight) or the classic main / aux / edge fields."""

    main: str = "dice_bce"
    aux_weight: float | list[float] = 0.0
    edge_weight: float = 0.0
    edge_loss: str = "edge"
    params: dict[str, Any] = {}
    terms: dict[str, str | dict[str, Any]] | None = Field(
        None,
        description="Named loss terms, e.g. {seg: dice_bce, aux: {loss: dice_bce, weight: 0.4}, "
        "align: {loss: value, weight: 0.1}}; replaces main/aux_weight/edge_weight/edge_loss/params.",
    )

    @model_validator(mode="after")
    def _one_format(self) -> LossConfig:
        if self.terms is not None:
            classic = {
                "main": "dice_bce",
                "aux_weight": 0.0,
                "edge_weight": 0.0,
                "edge_loss": "edge",
                "params": {},
            }
            changed = [k for k, default in classic.items() if getattr(self, k) != default]
            if changed:
                raise ValueError(f"give either terms or {', '.join(changed)}, not both")
            if not self.terms:
                raise ValueError("terms is empty")
        return self


class OptimConfig(_Strict):
    name: str = Field(
        "adamw", description="A registered optimiser (covseg.registry.OPTIMISERS): adamw, adam, sgd."
    )
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = 1e-4
    momentum: float = 0.9
    grad_clip: float | None = 1.0

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        return _registered("optimiser", v)


class ScheduleConfig(_Strict):
    name: str = Field(
        "poly", description="A registered schedule (covseg.registry.SCHEDULES): poly, cosine, constant."
    )
    warmup_epochs: float = 0.0
    power: float = 0.9
    min_lr: float = 0.0

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        return _registered("schedule", v)


class TrainSettings(_Strict):
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(8, ge=1)
    seed: int = 0
    deterministic: bool = True
    threads: int | None = None
    val_every: int = Field(1, ge=1)
    monitor: str = Field("dice", description="dice, iou or dice_c<k> (class k): what picks best.pt.")
    threshold: float = Field(0.5, gt=0, lt=1)
    val_batch_size: int = Field(8, ge=1)
    channels_last: bool = Field(
        True, description="NHWC tensors: about 2x faster depthwise convolutions on CPU."
    )
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Average the weights over steps (EMA, this decay per step); validation and checkpoints use the average.",
    )
    multiscale_rates: list[float] | None = Field(
        None,
        description="Inf-Net's multi-scale training: every batch is trained at each of these rates of the "
        "network size (e.g. [0.75, 1.0, 1.25]), one optimiser step each (covseg.training.multiscale); 2D images only.",
    )
    multiscale_multiple: int = Field(32, ge=1, description="Multi-scale sizes are rounded to a multiple of this.")

    @field_validator("threads")
    @classmethod
    def _threads(cls, v: int | None) -> int | None:
        return bounded_parallel(v, "threads")

    @field_validator("multiscale_rates")
    @classmethod
    def _rates(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return None
        if not v:
            raise ValueError("multiscale_rates must list at least one rate (or be null for off)")
        if any(not 0 < r <= 4 for r in v):
            raise ValueError(f"multiscale_rates must lie in (0, 4], got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"multiscale_rates has a repeated rate: {v}")
        return v

    @field_validator("monitor")
    @classmethod
    def _known_monitor(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"dice|iou|dice_c[0-9]+", v):
            raise ValueError(f"unknown validation metric {v!r}; use dice, iou or dice_c<k>")
        return v
