"""The data sections of the training config: datasets and extra sources, preprocessing, volume planning.

What is read and how it is prepared changes together with the data sources (``covseg.training.sources``);
the values are checked here, when the config is loaded, not after an epoch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from covseg.training.config_sections import _Strict
from covseg.utils.checks import (
    finite_means,
    ordered_window,
    positive_spacing,
    positive_stds,
)


class ExtraSource(_Strict):
    """More cases joined to ``data.root`` before the split, e.g. infection-free lung slices of another scan."""

    root: str
    layout: str = "auto"
    split: str | None = None
    label: int | None = Field(
        None,
        ge=0,
        description="Class of every case of this source (0 = no infection); default: the labels rule.",
    )
    masks: Literal["files", "empty", "none"] = Field(
        "files",
        description="files: the source's own masks; empty: infection-free, an empty mask trains segmentation "
        "too (label defaults to 0); none: label only (label required).",
    )
    train_only: bool = Field(
        False,
        description="Join every fold's training cases instead of the split: the cross-validation folds of data.root "
        "stay the same as without this source, and none of its cases is ever scored as validation.",
    )

    @model_validator(mode="after")
    def _label_for_maskless(self) -> ExtraSource:
        if self.masks == "none" and self.label is None:
            raise ValueError("masks: none (label-only cases) needs label")
        if self.masks == "empty" and self.label is None:
            self.label = 0
        return self


class DataConfig(_Strict):
    """Where the cases come from and how validation cases are chosen."""

    root: str
    layout: str = "auto"
    split: str | None = None
    val_root: str | None = Field(None, description="Separate validation dataset; otherwise k-fold on root.")
    val_split: str | None = None
    folds: int = Field(5, ge=2)
    fold: int = Field(0, ge=0)
    inner_folds: int | None = Field(
        None,
        ge=2,
        description="Nested CV: split the outer fold's training cases again; its held-out cases are never read.",
    )
    inner_fold: int = Field(0, ge=0)
    mask: Literal["mask", "multiclass"] = "mask"
    num_classes: int = Field(
        1, ge=1, description="1 = binary (sigmoid); K >= 2 = K classes incl. background."
    )
    class_names: list[str] | None = None
    edges: bool = False
    limit: int | None = Field(None, ge=1, description="Use only this many training cases (label budget).")
    val_limit: int | None = Field(None, ge=1)
    prompt: str | None = None
    text: str | None = Field(
        None,
        description="Text source replacing the dataset's own (captions.csv, CRIS prompts JSON, ...), for root and val_root.",
    )
    prior_run: str | None = Field(
        None,
        description="Binary run folder whose infection map becomes an extra input channel ({fold} → data.fold).",
    )
    prior_oof_runs: list[str] | None = Field(
        None,
        description="Nested-CV binary runs whose held-out predictions give the training cases' priors (out-of-fold, "
        "as nnU-Net's cascade); prior_run still serves validation and prediction.",
    )
    labels: str | None = Field(
        None,
        description="Image-level labels of a joint classification model: masks (non-empty = positive), layout "
        "(the dataset's own, e.g. JCS pair lists) or the path of a labels CSV (image,label). Default: masks.",
    )
    label_names: list[str] | None = Field(
        None,
        description="Classification class names, the negative class first (default: negative, positive).",
    )
    extra: list[ExtraSource] = Field(
        default_factory=list,
        description="More datasets joined to root before the k-fold split (with val_root: to training only).",
    )


class VolumeConfig(_Strict):
    """How CT volumes are planned and preprocessed (``covseg.transforms.volume``); used when the data are volumes."""

    spacing: Literal["auto"] | tuple[float, float, float] | None = Field(
        "auto",
        description="Target spacing in mm (RAS order); auto: the training set's median (nnU-Net's rule for "
        "anisotropic sets); null: keep each volume's own.",
    )
    spacing_scale: float = Field(
        1.0, gt=0, description="Multiplies the planned spacing (2: a coarse, low-resolution stage)."
    )
    window: Literal["auto"] | tuple[float, float] | None = Field(
        "auto",
        description="HU window to 0..1 (auto: the lung window -1250,250); volumes stored as 0..255 are divided by 255 instead.",
    )
    normalise: Literal["zscore", "percentile", "none"] = "zscore"
    crop: Literal["auto", "body", "none"] = Field(
        "auto", description="auto: body crop for HU volumes, none for 0..255 volumes."
    )
    crop_margin_mm: float = Field(10.0, ge=0)
    interpolation: Literal["linear", "bspline"] = "linear"
    patch_voxels: int = Field(
        64 * 64 * 48,
        ge=4096,
        description="Voxel budget of an automatic patch size (sampler.patch_size unset).",
    )
    context_slices: int = Field(
        0,
        ge=0,
        description="2D models on volumes (2.5D): this many neighbouring axial slices on each side as channels.",
    )
    coarse_run: str | None = Field(
        None,
        description="Coarse-to-fine cascade: a (low-resolution) volume run whose foreground, grown by coarse_margin_mm, "
        "is the region this run trains and predicts in ({fold} → data.fold).",
    )
    coarse_margin_mm: float = Field(20.0, ge=0)
    coarse_checkpoint: Literal["best", "last"] = "best"

    @model_validator(mode="after")
    def _positive(self) -> VolumeConfig:
        positive_spacing(self.spacing)
        ordered_window(self.window)
        return self


class PreprocessConfig(_Strict):
    """Checked here, not after an epoch: a zero std or an empty size would only fail at validation."""

    channels: int = Field(1, ge=1)
    size: tuple[int, int] | None = (352, 352)
    scale: float = Field(255.0, gt=0)
    mean: list[float] = [0.5]
    std: list[float] = [0.25]
    window: tuple[float, float] | None = None
    volume: VolumeConfig = Field(
        default_factory=VolumeConfig,
        description="Planning and preprocessing of 3D volumes (ignored for 2D images).",
    )

    @field_validator("size")
    @classmethod
    def _positive_size(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and any(s < 1 for s in v):
            raise ValueError(f"size must be positive, got {list(v)}")
        return v

    @field_validator("mean")
    @classmethod
    def _finite_mean(cls, v: list[float]) -> list[float]:
        return finite_means(v)

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: list[float]) -> list[float]:
        return positive_stds(v)

    @field_validator("window")
    @classmethod
    def _ordered_window(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        return ordered_window(v)

    @model_validator(mode="after")
    def _one_value_per_channel(self) -> PreprocessConfig:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.channels):
                one_each = f" or {self.channels}" if self.channels > 1 else ""
                raise ValueError(
                    f"{name} has {len(values)} values for {self.channels} channel(s); give 1{one_each}"
                )
        return self
