"""``model.json`` as a typed object (nnU-Net's ``PlansManager`` idea): read in one place, used by fields.

Everything that predicts from a run folder (the predictor, the cascade's prior input, ensembles,
export) reads :class:`RunDescription`, never the raw JSON. Folders written before the typed
description (no ``inferer`` entry, no ``format`` number) load with the defaults they implied.
Impossible values (a zero standard deviation, a threshold outside (0, 1), a class count that
does not match the class names) are refused with one line naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from covseg.errors import CovsegError
from covseg.transforms.intensity import LUNG_WINDOW
from covseg.utils.checks import finite_means, ordered_window, positive_spacing, positive_stds

DESCRIPTION_FORMAT = 2  # 1: the untyped model.json of covseg ≤ 0.1 (no "format" key)


class _Described(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class PreprocessingSpec(_Described):
    """How an image becomes a network input (see :class:`covseg.transforms.preprocess.Preprocessing`)."""

    channels: int = Field(1, ge=1)
    size: tuple[int, ...] | None = (352, 352)
    scale: float = Field(255.0, gt=0)
    mean: list[float] = [0.5]
    std: list[float] = [0.25]
    window: tuple[float, float] | None = None

    @field_validator("mean")
    @classmethod
    def _finite_mean(cls, v: list[float]) -> list[float]:
        return finite_means(v)

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: list[float]) -> list[float]:
        return positive_stds(v)

    @field_validator("size")
    @classmethod
    def _positive_size(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (len(v) not in (2, 3) or any(s < 1 for s in v)):
            raise ValueError(f"size must be 2 or 3 positive numbers, got {list(v)}")
        return v

    @field_validator("window")
    @classmethod
    def _ordered_window(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        return ordered_window(v)

    @model_validator(mode="after")
    def _one_value_per_channel(self) -> PreprocessingSpec:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.channels):
                raise ValueError(f"{name} has {len(values)} values for {self.channels} channel(s)")
        return self


class VolumeSpec(_Described):
    """How a CT volume becomes a network input (see :class:`covseg.transforms.volume.VolumePlan`)."""

    spacing: tuple[float, float, float] | None = None
    window: tuple[float, float] | None = LUNG_WINDOW
    normalise: Literal["zscore", "percentile", "none"] = "zscore"
    mean: float = Field(0.0, allow_inf_nan=False)
    std: float = Field(1.0, gt=0, allow_inf_nan=False)
    percentiles: tuple[float, float] = (0.5, 99.5)
    crop: Literal["body", "none"] = "body"
    crop_threshold: float = 0.5
    crop_margin_mm: float = Field(10.0, ge=0)
    interpolation: Literal["linear", "bspline"] = "linear"
    patch_size: tuple[int, ...] | None = None
    context_slices: int = Field(0, ge=0)

    @field_validator("spacing")
    @classmethod
    def _positive_spacing(cls, v: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        return positive_spacing(v)

    @field_validator("window")
    @classmethod
    def _ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        return ordered_window(v)


class CascadeSpec(_Described):
    """A coarse run whose low-resolution map gives the region this (fine) run segments."""

    run: str
    checkpoint: str = "best"
    margin_mm: float = Field(20.0, ge=0)
    threshold: float = 0.5


class InfererSpec(_Described):
    """Which registered inferer turns an input into probabilities, and its settings."""

    name: str = "resize"
    params: dict[str, Any] = {}


class PriorSpec(_Described):
    """The cascade's binary run whose infection map is an extra input channel."""

    run: str
    checkpoint: str = "last"


class TextSpec(_Described):
    """How the text of an image reaches a text-guided model."""

    input: Literal["features", "ids", "attributes"] = "features"
    encoder: dict[str, Any] | None = None
    max_length: int | None = None
    prompt: str | None = None
    prompt_sampling: bool = False
    text_dropout: float = 0.0
    missing: Literal["error", "image-only"] = "error"
    flip_swap: float = 0.0
    cache_file: str | None = None


class ClassificationSpec(_Described):
    """A joint model's image-level classes: which output, their names (class 0 negative), where labels came from."""

    output: str = "class_logits"
    class_names: list[str] = ["negative", "positive"]
    labels: str = "masks"
    negative_class: int = 0

    @field_validator("class_names")
    @classmethod
    def _two_or_more(cls, v: list[str]) -> list[str]:
        if len(v) < 2:
            raise ValueError(f"a classifier needs at least two classes, got {v}")
        return v


class RunDescription(_Described):
    """What ``covseg predict`` needs from a run folder: model, preprocessing, classes, inputs, inferer."""

    format: int = 1
    name: str
    init_args: dict[str, Any] = {}
    preprocessing: PreprocessingSpec = PreprocessingSpec()
    num_classes: int = Field(1, ge=1)
    class_names: list[str] | None = None
    threshold: float = 0.5
    trainer: str = "supervised"
    prior: PriorSpec | None = None
    text: TextSpec | None = None
    inferer: InfererSpec = InfererSpec()
    classification: ClassificationSpec | None = None
    volume: VolumeSpec | None = None
    cascade: CascadeSpec | None = None
    covseg_version: str | None = None

    @field_validator("threshold")
    @classmethod
    def _threshold_inside(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {v}")
        return v

    @model_validator(mode="after")
    def _classes_agree(self) -> RunDescription:
        if self.class_names is not None:
            expected = 1 if self.num_classes == 1 else self.num_classes - 1
            if len(self.class_names) not in (expected, self.num_classes):
                raise ValueError(
                    f"num_classes={self.num_classes} but {len(self.class_names)} class_names {self.class_names}"
                )
        out = self.init_args.get("out_channels")
        if out is not None and int(out) != self.num_classes:
            raise ValueError(f"num_classes={self.num_classes} but the model has out_channels={out}")
        heads = self.init_args.get("heads")  # a model's heads; c2fvl's "heads" is its attention head count
        head = heads.get("classification") if isinstance(heads, dict) else None
        if self.classification is not None and head is not None:
            classes = int(head.get("classes", 2))
            if classes != len(self.classification.class_names):
                raise ValueError(
                    f"the classification head has {classes} classes but classification.class_names lists "
                    f"{len(self.classification.class_names)}"
                )
        return self

    # -- reading and writing -----------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: Any, source: str | Path | None = None) -> RunDescription:
        """Validate a parsed ``model.json``; a bad value is one line naming ``source``."""
        if not isinstance(raw, dict):
            raise CovsegError("model.json must be a JSON object", source)
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            raise CovsegError(f"invalid model description: {loc + ': ' if loc else ''}{msg}", source) from None

    @classmethod
    def read(cls, path: str | Path) -> RunDescription:
        path = Path(path)
        if not path.exists():
            raise CovsegError(f"not a covseg run folder (no {path.name})", path.parent)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise CovsegError("model.json is not UTF-8 text", path) from None
        except json.JSONDecodeError as exc:
            raise CovsegError(f"corrupt JSON ({exc.msg} at line {exc.lineno})", path) from None
        return cls.from_dict(raw, path)

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json")
        d["format"] = DESCRIPTION_FORMAT
        return d

    def write(self, folder: str | Path) -> Path:
        """``<folder>/model.json``, written atomically: the fields given (not the defaults filled in
        on reading), so a file written now reads back as this description in any later version."""
        from covseg.utils.atomic import write_json

        path = Path(folder) / "model.json"
        write_json(path, {**self.model_dump(mode="json", exclude_unset=True), "format": DESCRIPTION_FORMAT})
        return path

    @property
    def text_guided(self) -> bool:
        return self.text is not None

    @property
    def volumetric(self) -> bool:
        """True for runs that segment whole volumes through a volume plan (3D and 2.5D models)."""
        return self.volume is not None
