"""Training configuration: YAML files validated by pydantic, with ``a.b=value`` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from covseg.errors import ConfigError
from covseg.transforms.augment import AugmentConfig
from covseg.utils.checks import (
    bounded_parallel,
    finite_means,
    ordered_window,
    positive_spacing,
    positive_stds,
)
from covseg.utils.safe_yaml import YamlRefused, parse_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _registered(kind: str, name: str) -> str:
    """``name`` if the registry of ``kind`` (samplers, optimisers, schedules) has it, else a one-line error."""
    from covseg.registry import REGISTRIES

    registry = REGISTRIES[kind]
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(registry.names())}")
    return name


class ExtraSource(_Strict):
    """More cases joined to ``data.root`` before the split, e.g. infection-free lung slices of another scan."""

    root: str
    layout: str = "auto"
    split: str | None = None
    label: int | None = Field(
        None, ge=0, description="Class of every case of this source (0 = no infection); default: the labels rule."
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
        None, ge=2, description="Nested CV: split the outer fold's training cases again; its held-out cases are never read."
    )
    inner_fold: int = Field(0, ge=0)
    mask: Literal["mask", "multiclass"] = "mask"
    num_classes: int = Field(1, ge=1, description="1 = binary (sigmoid); K >= 2 = K classes incl. background.")
    class_names: list[str] | None = None
    edges: bool = False
    limit: int | None = Field(None, ge=1, description="Use only this many training cases (label budget).")
    val_limit: int | None = Field(None, ge=1)
    prompt: str | None = None
    text: str | None = Field(
        None, description="Text source replacing the dataset's own (captions.csv, CRIS prompts JSON, ...), for root and val_root."
    )
    prior_run: str | None = Field(
        None, description="Binary run folder whose infection map becomes an extra input channel ({fold} → data.fold)."
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
        None, description="Classification class names, the negative class first (default: negative, positive)."
    )
    extra: list[ExtraSource] = Field(
        default_factory=list,
        description="More datasets joined to root before the k-fold split (with val_root: to training only).",
    )


class VolumeConfig(_Strict):
    """How CT volumes are planned and preprocessed (``covseg.transforms.volume``); used when the data are volumes."""

    spacing: Literal["auto"] | tuple[float, float, float] | None = Field(
        "auto", description="Target spacing in mm (RAS order); auto: the training set's median (nnU-Net's rule for "
        "anisotropic sets); null: keep each volume's own."
    )
    spacing_scale: float = Field(1.0, gt=0, description="Multiplies the planned spacing (2: a coarse, low-resolution stage).")
    window: Literal["auto"] | tuple[float, float] | None = Field(
        "auto", description="HU window to 0..1 (auto: the lung window -1250,250); volumes stored as 0..255 are divided by 255 instead."
    )
    normalise: Literal["zscore", "percentile", "none"] = "zscore"
    crop: Literal["auto", "body", "none"] = Field("auto", description="auto: body crop for HU volumes, none for 0..255 volumes.")
    crop_margin_mm: float = Field(10.0, ge=0)
    interpolation: Literal["linear", "bspline"] = "linear"
    patch_voxels: int = Field(
        64 * 64 * 48, ge=4096, description="Voxel budget of an automatic patch size (sampler.patch_size unset)."
    )
    context_slices: int = Field(
        0, ge=0, description="2D models on volumes (2.5D): this many neighbouring axial slices on each side as channels."
    )
    coarse_run: str | None = Field(
        None, description="Coarse-to-fine cascade: a (low-resolution) volume run whose foreground, grown by coarse_margin_mm, "
        "is the region this run trains and predicts in ({fold} → data.fold)."
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
        default_factory=VolumeConfig, description="Planning and preprocessing of 3D volumes (ignored for 2D images)."
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
                raise ValueError(f"{name} has {len(values)} values for {self.channels} channel(s); give 1{one_each}")
        return self


class ModelConfig(_Strict):
    name: str
    params: dict[str, Any] = {}


class SamplerConfig(_Strict):
    """How an epoch's batches are drawn: whole images held in memory, or patches read lazily."""

    name: str = Field("images", description="A registered sampler (covseg.registry.SAMPLERS): images, patches.")
    patch_size: tuple[int, ...] | None = Field(
        None, description="Patch size (2 or 3 numbers) for name: patches; for volumes, unset means planned."
    )
    foreground_fraction: float = Field(
        0.33, ge=0, le=1, description="Share of each batch forced to contain foreground (nnU-Net's oversampling)."
    )
    batches_per_epoch: int | None = Field(None, ge=1, description="Default: one pass over the training cases.")
    cache_dir: str | None = Field(
        None, description="Where preprocessed cases are cached for patches (default: $COVSEG_CACHE or ~/.cache/covseg)."
    )

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        return _registered("sampler", v)

    @model_validator(mode="after")
    def _patch_size(self) -> SamplerConfig:
        if self.patch_size is not None and (len(self.patch_size) not in (2, 3) or any(s < 1 for s in self.patch_size)):
            raise ValueError(f"patch_size must be 2 or 3 positive numbers, got {list(self.patch_size)}")
        return self


class RuntimeConfig(_Strict):
    """Where and how training runs (``--device`` on the command line sets ``device``)."""

    device: str = Field("auto", description="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps.")
    amp: Literal["off", "bf16", "fp16"] = Field("off", description="Mixed precision; fp16 uses a gradient scaler.")
    compile: bool = Field(False, description="torch.compile the model (first steps are slower while it compiles).")
    workers: int = Field(
        0, ge=0, description="Data-loader worker processes preparing batches (0: in the main process); "
        "the run does not depend on this number."
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
            classic = {"main": "dice_bce", "aux_weight": 0.0, "edge_weight": 0.0, "edge_loss": "edge", "params": {}}
            changed = [k for k, default in classic.items() if getattr(self, k) != default]
            if changed:
                raise ValueError(f"give either terms or {', '.join(changed)}, not both")
            if not self.terms:
                raise ValueError("terms is empty")
        return self


class OptimConfig(_Strict):
    name: str = Field("adamw", description="A registered optimiser (covseg.registry.OPTIMISERS): adamw, adam, sgd.")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = 1e-4
    momentum: float = 0.9
    grad_clip: float | None = 1.0

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        return _registered("optimiser", v)


class ScheduleConfig(_Strict):
    name: str = Field("poly", description="A registered schedule (covseg.registry.SCHEDULES): poly, cosine, constant.")
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
    channels_last: bool = Field(True, description="NHWC tensors: about 2x faster depthwise convolutions on CPU.")
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="Average the weights over steps (EMA, this decay per step); validation and checkpoints use the average."
    )

    @field_validator("threads")
    @classmethod
    def _threads(cls, v: int | None) -> int | None:
        return bounded_parallel(v, "threads")

    @field_validator("monitor")
    @classmethod
    def _known_monitor(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"dice|iou|dice_c[0-9]+", v):
            raise ValueError(f"unknown validation metric {v!r}; use dice, iou or dice_c<k>")
        return v


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

    @model_validator(mode="after")
    def _labelled_start(self) -> SemiInfNetConfig:
        if self.initial_epochs == 0 and self.init_run is None:
            raise ValueError("initial_epochs 0 needs init_run (pseudo labels from an untrained model are noise)")
        return self


class SemiConfig(_Strict):
    unlabeled: UnlabeledConfig | None = None
    pseudo: PseudoSourceConfig | None = None
    cps: CPSConfig = CPSConfig()
    mean_teacher: MeanTeacherConfig = MeanTeacherConfig()
    semi_infnet: SemiInfNetConfig = SemiInfNetConfig()


class TrainConfig(_Strict):
    """The whole run: data, preprocessing, augmentation, model, loss, optimiser, schedule."""

    name: str = Field("run", description="The run's name: a file name (the default run folder is runs/<name>).")
    trainer: str = "supervised"
    data: DataConfig
    preprocess: PreprocessConfig = PreprocessConfig()
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainSettings = TrainSettings()
    sampler: SamplerConfig = SamplerConfig()
    inferer: InfererConfig = InfererConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    semi: SemiConfig = SemiConfig()
    extra: dict[str, Any] = Field(default_factory=dict, description="Settings of specialised trainers.")

    @field_validator("name")
    @classmethod
    def _file_name(cls, v: str) -> str:
        if not v or v in (".", "..") or any(c in v for c in "/\\") or any(ord(c) < 32 for c in v) or len(v) > 128:
            raise ValueError(f"name must be a plain file name (no folders, not '.' or '..'), got {v!r}")
        return v

    @model_validator(mode="after")
    def _monitor_class_exists(self) -> TrainConfig:
        if self.train.monitor.startswith("dice_c"):
            k = int(self.train.monitor[6:])
            if not 1 <= k < self.data.num_classes:
                raise ValueError(f"train.monitor {self.train.monitor!r}: no class {k} with data.num_classes={self.data.num_classes}")
        return self


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=3"`` → (["train", "epochs"], 3); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    key, value = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        parsed = parse_yaml(value) if value.strip() else None
    except YamlRefused as exc:
        raise ConfigError(f"override {text!r}: {exc}") from None
    except yaml.YAMLError:
        parsed = value
    return keys, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set nested keys in a raw config dict from ``key.path=value`` strings."""
    for item in overrides:
        keys, value = parse_override(item)
        node = raw
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, raw: dict | None = None) -> TrainConfig:
    """Load and validate a YAML config (a name like ``unet_covid_semiseg`` finds a shipped one)."""
    if raw is None:
        if path is None:
            raise ConfigError("no config given")
        p = resolve_config_path(path)
        if p.is_dir():
            raise ConfigError("a folder, not a config file", p)
        try:
            raw = parse_yaml(p.read_text(encoding="utf-8")) or {}
        except YamlRefused as exc:
            raise ConfigError(str(exc), p) from None
        except UnicodeDecodeError:
            raise ConfigError("config file is not UTF-8 text", p) from None
        except OSError as exc:
            raise ConfigError(f"cannot read config ({exc.strerror or type(exc).__name__})", p) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid YAML ({exc.__class__.__name__}: {str(exc).splitlines()[0]})", p) from None
        if not isinstance(raw, dict):
            raise ConfigError("config must be a mapping", p)
    else:
        p = None
    raw = apply_overrides(raw, list(overrides or []))
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ConfigError(f"{loc + ': ' if loc else ''}{msg}{more}", p) from None


def shipped_configs_dir() -> Path:
    """The ``configs/`` folder shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "configs"


def resolve_config_path(path: str | Path) -> Path:
    """A config file path, or the name of a shipped config (with or without ``.yaml``)."""
    p = Path(path)
    if p.exists():
        return p
    for candidate in (shipped_configs_dir() / p.name, shipped_configs_dir() / f"{p.name}.yaml"):
        if candidate.exists():
            return candidate
    raise ConfigError("config file not found (nor a shipped config of that name)", p)


def dump_config(cfg: TrainConfig) -> str:
    """The resolved config as YAML, for the run folder."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# Settings that may differ when a run is resumed: they do not change what is trained.
RESUME_FREE: tuple[str, ...] = ("train.threads", "sampler.cache_dir", "runtime.")


def config_differences(saved: TrainConfig, wanted: TrainConfig) -> list[str]:
    """``key: saved → wanted`` for every setting (outside :data:`RESUME_FREE`) that differs."""

    def flat(node: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for k, v in node.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out
        return {prefix[:-1]: node}

    a, b = flat(saved.model_dump(mode="json")), flat(wanted.model_dump(mode="json"))
    keys = sorted(set(a) | set(b))
    free = [k for k in RESUME_FREE if not k.endswith(".")]
    sections = tuple(k for k in RESUME_FREE if k.endswith("."))
    return [
        f"{k}: {a.get(k)!r} → {b.get(k)!r}"
        for k in keys
        if a.get(k) != b.get(k) and k not in free and not k.startswith(sections)
    ]
