"""Training configuration: YAML files validated by pydantic, with ``a.b=value`` overrides.

The whole config (:class:`TrainConfig`), reading it, overrides, the resolved YAML and resume
differences live here; its sections live beside it, by what they configure
(:mod:`~covseg.training.config_data`, :mod:`~covseg.training.config_sections`,
:mod:`~covseg.training.config_semi`) and are importable from here as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from covseg.errors import ConfigError
from covseg.training.config_data import DataConfig, ExtraSource, PreprocessConfig, VolumeConfig
from covseg.training.config_sections import (
    InfererConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RuntimeConfig,
    SamplerConfig,
    ScheduleConfig,
    TrainSettings,
    _Strict,
)
from covseg.training.config_semi import (
    CPSConfig,
    MeanTeacherConfig,
    PseudoSourceConfig,
    SemiConfig,
    SemiInfNetConfig,
    UIFConfig,
    UnlabeledConfig,
)
from covseg.transforms.augment import AugmentConfig
from covseg.utils.safe_yaml import YamlRefused, parse_yaml

__all__ = [
    "RESUME_FREE",
    "AugmentConfig",
    "CPSConfig",
    "DataConfig",
    "ExtraSource",
    "InfererConfig",
    "LossConfig",
    "MeanTeacherConfig",
    "ModelConfig",
    "OptimConfig",
    "PreprocessConfig",
    "PseudoSourceConfig",
    "RuntimeConfig",
    "SamplerConfig",
    "ScheduleConfig",
    "SemiConfig",
    "SemiInfNetConfig",
    "TrainConfig",
    "TrainSettings",
    "UIFConfig",
    "UnlabeledConfig",
    "VolumeConfig",
    "apply_overrides",
    "config_differences",
    "dump_config",
    "load_config",
    "parse_override",
    "resolve_config_path",
    "shipped_configs_dir",
]


class TrainConfig(_Strict):
    """The whole run: data, preprocessing, augmentation, model, loss, optimiser, schedule."""

    name: str = Field(
        "run", description="The run's name: a file name (the default run folder is runs/<name>)."
    )
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
        if (
            not v
            or v in (".", "..")
            or any(c in v for c in "/\\")
            or any(ord(c) < 32 for c in v)
            or len(v) > 128
        ):
            raise ValueError(f"name must be a plain file name (no folders, not '.' or '..'), got {v!r}")
        return v

    @model_validator(mode="after")
    def _monitor_class_exists(self) -> TrainConfig:
        if self.train.monitor.startswith("dice_c"):
            k = int(self.train.monitor[6:])
            if not 1 <= k < self.data.num_classes:
                raise ValueError(
                    f"train.monitor {self.train.monitor!r}: no class {k} with data.num_classes={self.data.num_classes}"
                )
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


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, raw: dict | None = None
) -> TrainConfig:
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
            raise ConfigError(
                f"invalid YAML ({exc.__class__.__name__}: {str(exc).splitlines()[0]})", p
            ) from None
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
