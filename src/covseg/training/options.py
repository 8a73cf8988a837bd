"""What a training is asked to do beside its config: :class:`TrainOptions`, one object from the CLI to the run.

``covseg train`` fills it from its options and :func:`covseg.api.train` runs it; the Python API
fills it directly, or passes its fields as keywords.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainOptions:
    """The ``covseg train`` options besides the config and the run folder.

    ``overrides`` are ``key=value`` config overrides (``train.epochs=3``); ``fold``, ``prompt_type``,
    ``device`` and ``amp`` set ``data.fold``, ``data.prompt``, ``runtime.device`` and ``runtime.amp``
    (None: the config's own). ``resume`` continues the run folder's saved config."""

    overrides: Sequence[str] = ()
    fold: int | None = None
    resume: bool = False
    quiet: bool = False
    device: str | None = None
    amp: str | None = None
    prompt_type: str | None = None

    def config_overrides(self) -> list[str]:
        """Every override the config is loaded with: the given ones, then those the options set."""
        extra = list(self.overrides or [])
        if self.prompt_type:
            extra.append(f"data.prompt={self.prompt_type}")
        if self.fold is not None:
            extra.append(f"data.fold={self.fold}")
        extra += [
            f"runtime.{k}={v}" for k, v in (("device", self.device), ("amp", self.amp)) if v is not None
        ]
        return extra
