"""What an evaluation is asked to do: :class:`EvaluateOptions`, checked once, in one place.

``covseg evaluate`` fills it from its options and :func:`covseg.api.evaluate` runs it; the Python
API fills it directly. A bad value is refused in one line naming the CLI option it came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from covseg.errors import ConfigError

PROTOCOLS = ("medical", "sod", "flare")
EMPTY_POLICIES = ("nan", "one", "zero")
PRED_TYPES = ("auto", "soft", "mask")
SPECIFICITY_RULES = ("pysodmetrics", "infnet")
REDUCTIONS = ("nanmean", "mean")
MISSING_PRED = ("error", "empty")
TOOLBOXES = ("pysodmetrics", "matlab", "matlab-2020-11")
PATIENT_RULES = ("max", "mean")


def _choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{option}: {value!r} is not one of {', '.join(allowed)}")
    return value


def parse_spacing(text: str | None) -> tuple[float, ...] | None:
    """``"0.7"`` → ``(0.7,)``; ``"0.7,0.7,3"`` (or ``x`` / space separated) → a tuple of floats."""
    if text is None or not text.strip():
        return None
    parts = [p for p in text.replace("x", ",").replace(" ", ",").split(",") if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--spacing: {text!r} is not a list of numbers") from None
    if not values or any(not (v > 0) for v in values) or len(values) > 3:
        raise ConfigError(f"--spacing: {text!r}: give 1 to 3 positive numbers (mm)")
    return values


def parse_empty_distance(text: str | float) -> str | float:
    """``nan`` | ``max`` | a non-negative number (``inf`` reproduces MONAI)."""
    if text in ("nan", "max"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--empty-distance: {text!r}: use nan, max or a number") from None
    if not value >= 0:
        raise ConfigError(f"--empty-distance: {text!r} must be non-negative")
    return value


def parse_tolerance(text: str | float, protocol: str, num_classes: int = 13) -> float | str:
    """NSD tolerance in mm: a non-negative number, or ``flare22`` (FLARE22's per-organ τ: flare protocol, 13 organs)."""
    if text == "flare22":
        if protocol != "flare" or num_classes != 13:
            raise ConfigError("--tolerance flare22: FLARE22's per-organ tolerances need --protocol flare --num-classes 13")
        return text
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--tolerance: {text!r}: give a number of mm (or flare22 with --protocol flare)") from None
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"--tolerance: {text} must be a finite non-negative number")
    return value


@dataclass(frozen=True)
class EvaluateOptions:
    """Every setting of one evaluation (the ``covseg evaluate`` options, same names and defaults).

    ``spacing`` may be given as text (``"0.7,0.7,3"``) or numbers and ``empty_distance`` as text or
    a number: :meth:`checked` turns them into values and refuses what makes no sense."""

    protocol: str = "medical"
    out: str | Path | None = None
    images: str | Path | None = None
    threshold: float = 0.5
    tolerance: float | str = 1.0
    spacing: str | tuple[float, ...] | None = None
    num_classes: int = 1
    empty: str = "nan"
    empty_distance: str | float = "nan"
    pred_type: str = "auto"
    specificity_rule: str = "pysodmetrics"
    reduction: str = "nanmean"
    missing_pred: str = "error"
    toolbox: str = "pysodmetrics"
    classes: str | Path | None = None
    labels: str | Path | None = None
    patient_pattern: str | None = None
    patient_rule: str = "max"
    explanations: str | Path | None = None
    pointing_tolerance: float = 0.0
    show: int = 6
    report: bool = True
    strict: bool = False
    timings: str | Path | None = None

    def checked(self) -> EvaluateOptions:
        """These options with spacing and empty distance parsed; a ``ConfigError`` for the first bad value."""
        _choice(self.protocol, PROTOCOLS, "--protocol")
        _choice(self.empty, EMPTY_POLICIES, "--empty")
        _choice(self.pred_type, PRED_TYPES, "--pred-type")
        _choice(self.specificity_rule, SPECIFICITY_RULES, "--specificity-rule")
        _choice(self.reduction, REDUCTIONS, "--reduction")
        _choice(self.missing_pred, MISSING_PRED, "--missing-pred")
        _choice(self.toolbox, TOOLBOXES, "--toolbox")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"--threshold: {self.threshold} must lie in [0, 1]")
        tolerance = parse_tolerance(self.tolerance, self.protocol, self.num_classes)
        if not self.pointing_tolerance >= 0:
            raise ConfigError(f"--pointing-tolerance: {self.pointing_tolerance} must be non-negative")
        if self.num_classes < 1:
            raise ConfigError(f"--num-classes: {self.num_classes} must be at least 1")
        if self.patient_rule not in PATIENT_RULES:
            raise ConfigError(f"--patient-rule: {self.patient_rule!r} is not max or mean")
        if self.show < 0:
            raise ConfigError(f"--show: {self.show} must be non-negative")
        if self.timings is not None and self.protocol != "flare":
            raise ConfigError("--timings: only the flare protocol reads predict's timings (--protocol flare)")
        spacing = self.spacing
        if isinstance(spacing, str) or spacing is None:
            spacing = parse_spacing(spacing)
        else:
            spacing = parse_spacing(",".join(str(float(v)) for v in spacing))
        paths = {k: Path(v) for k in ("out", "images", "classes", "labels", "explanations", "timings") if (v := getattr(self, k)) is not None}
        return replace(self, tolerance=tolerance, spacing=spacing, empty_distance=parse_empty_distance(self.empty_distance), **paths)

    def out_dir(self, pred: Path) -> Path:
        """Where the files go: ``out``, else ``outputs/evaluate/<pred folder>-<protocol>``."""
        return Path(self.out) if self.out is not None else Path("outputs") / "evaluate" / f"{Path(pred).resolve().name}-{self.protocol}"
