"""The semi-supervised sections of the training config: unlabelled images, CPS, pseudo labels, Semi-Inf-Net.

Only the semi-supervised trainers (``covseg.training.semi``) read them; the supervised run keeps their defaults.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from covseg.training.config_sections import _Strict


class UnlabeledConfig(_Strict):
    """Unlabelled images for semi-supervised trainers (masks, if any, are ignored)."""

    root: str
    layout: str = "auto"
    split: str | None = None
    include: list[str] | None = Field(
        None,
        description="Keep only images whose file name matches one of these glob patterns "
        "(e.g. one source of a mixed folder, '*radiopaedia*').",
    )
    limit: int | None = Field(None, ge=1)
    standardize: Literal["none", "histogram", "percentile"] = Field(
        "none",
        description="Map the unlabelled slices' grey levels onto the run's labelled training slices "
        "(covseg.transforms.standardize): histogram = Nyúl–Udupa deciles, percentile = 1st/99th "
        "percentiles inside the body. Labelled and prediction inputs are never changed.",
    )
    standardize_per: Literal["volume", "slice"] = Field(
        "volume",
        description="One mapping per volume (the slices <volume>_<k> of a file-name stem share it) or per slice.",
    )


class UIFConfig(_Strict):
    """Uncertainty-based image filtering: train only on the most certain unlabelled images."""

    enabled: bool = False
    keep_fraction: float = Field(0.5, gt=0, le=1)
    score: Literal["disagreement", "entropy"] = "disagreement"
    rescore_every: int = Field(1, ge=1)


class CPSConfig(_Strict):
    """Cross pseudo supervision between two networks of the same architecture."""

    weight: float = Field(1.0, ge=0)
    rampup_epochs: float = Field(5.0, ge=0)
    unlabeled_batch_size: int | None = Field(None, ge=1)
    cutmix: bool = Field(
        False,
        description="CPS + CutMix: each network learns the other's labels on unlabelled images with a "
        "box pasted from another image of the batch (labels mixed with the same box).",
    )
    cutmix_area: tuple[float, float] = Field((0.25, 0.5), description="Range of the box's area fraction.")
    uif: UIFConfig = UIFConfig()

    @model_validator(mode="after")
    def _area_range(self) -> CPSConfig:
        lo, hi = self.cutmix_area
        if not 0 < lo <= hi < 1:
            raise ValueError(f"cutmix_area must satisfy 0 < low <= high < 1, got {self.cutmix_area}")
        return self


class MeanTeacherConfig(_Strict):
    """The mean-teacher baseline: consistency of the student with its EMA teacher on unlabelled images."""

    decay: float = Field(0.99, gt=0, lt=1, description="EMA decay per optimiser step of the teacher's weights.")
    weight: float = Field(0.1, ge=0, description="Weight of the consistency term (ramped up over rampup_epochs).")
    rampup_epochs: float = Field(5.0, ge=0)
    noise_std: float = Field(0.1, ge=0, description="Gaussian input noise (clipped at 2 std) for student and teacher.")
    unlabeled_batch_size: int | None = Field(None, ge=1)


class PseudoSourceConfig(_Strict):
    """A pseudo-labelled folder (from ``covseg pseudo-label``) used as a second source."""

    root: str
    layout: str = "auto"
    split: str | None = None
    weight: float = Field(0.5, ge=0)
    min_confidence: float = Field(0.0, ge=0, le=1)


class SemiInfNetConfig(_Strict):
    """Semi-Inf-Net's schedule: labelled start, grouped pseudo-labelling, pre-train, fine-tune."""

    group_size: int = Field(5, ge=1)
    max_groups: int | None = Field(None, ge=1)
    init_run: str | None = Field(
        None,
        description="Start from this trained run folder's weights (same model and preprocessing); "
        "'{fold}' is replaced by data.fold. The labelled start then adds initial_epochs (0 allowed).",
    )
    init_checkpoint: Literal["best", "last"] = "last"
    initial_epochs: int = Field(10, ge=0)
    epochs_per_group: int = Field(1, ge=1)
    pretrain_epochs: int = Field(10, ge=0)
    finetune_epochs: int = Field(10, ge=0)
    finetune_lr_scale: float = Field(0.1, gt=0)
    pseudo_weight: float = Field(1.0, ge=0)
    soft_labels: bool = Field(False, description="Pseudo labels are the model's probabilities instead of 0/1 masks (binary models).")
    round_data: Literal["two_source", "hybrid"] = Field(
        "two_source",
        description="What a group's epochs train on: two_source = each labelled batch plus an equal batch drawn "
        "from the pool, weighted by pseudo_weight; hybrid = labelled slices and pool as one training set, each "
        "seen once an epoch (the published PseudoGenerator.py), so epochs grow with the pool.",
    )
    pretrain_data: Literal["pool", "hybrid"] = Field(
        "pool",
        description="What the fresh model pre-trains on: the pseudo-labelled pool, or pool plus labelled "
        "slices (hybrid, as published: the Pseudo-label folder holds both).",
    )
    fresh_optimizer_per_group: bool = Field(
        False, description="A new optimiser (no moment estimates) for each group, as published (Adam re-made every round)."
    )
    group_lr_scale: float = Field(
        1.0, gt=0, description="Learning rate of the group epochs relative to optim.lr (published: 3e-4 against 1e-4)."
    )
    group_batch_size: int | None = Field(
        None, ge=1, description="Batch size of the group epochs (published: 16 against 24); default train.batch_size."
    )

    @model_validator(mode="after")
    def _labelled_start(self) -> SemiInfNetConfig:
        if self.initial_epochs == 0 and self.init_run is None:
            raise ValueError(
                "initial_epochs 0 needs init_run (pseudo labels from an untrained model are noise)"
            )
        return self


class SemiConfig(_Strict):
    unlabeled: UnlabeledConfig | None = None
    pseudo: PseudoSourceConfig | None = None
    cps: CPSConfig = CPSConfig()
    mean_teacher: MeanTeacherConfig = MeanTeacherConfig()
    semi_infnet: SemiInfNetConfig = SemiInfNetConfig()
