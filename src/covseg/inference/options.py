"""What a prediction is asked to do: :class:`PredictOptions`, one object from the CLI to the files
(and :class:`ExplainOptions`, :class:`ExportOptions` for ``covseg explain`` and ``covseg export``).

``covseg predict`` fills it from its options, :func:`covseg.api.predict` loads the models it names
and :func:`covseg.inference.batch.predict_files` writes what it asks for; the settings are no
longer passed by hand through each signature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from covseg.errors import ConfigError
from covseg.inference.postprocess import LUNG_MARGIN_MM
from covseg.inference.results import PostprocessOptions

ENGINES = ("torch", "onnx", "torchscript")
MISSING_TEXT = ("error", "image-only")


@dataclass(frozen=True)
class PredictOptions:
    """Every setting of one prediction run (the ``covseg predict`` options; the names of :func:`covseg.api.predict`'s keywords).

    ``tta`` flips the last axis (volume runs: left–right) and ``tta_axes`` these axes of the RAS grid
    (every combination); ``window`` is the HU window (default: :data:`covseg.data.intensity.LUNG_WINDOW`);
    ``lung_margin_mm`` None is :data:`covseg.inference.postprocess.LUNG_MARGIN_MM`."""

    checkpoint: str = "best"
    engine: str = "torch"
    device: str = "auto"
    amp: str = "off"
    tta: bool = False
    tta_axes: Sequence[int] | None = None
    text: str | None = None
    text_file: str | Path | None = None
    missing_text: str = "error"
    prompt_type: str | None = None
    largest: int = 0
    min_size: int = 0
    lungs_only: bool = False
    lung_margin_mm: float | None = None
    save_lung_mask: bool = False
    window: tuple[float, float] | None = None
    stack_spacing: tuple[float, float, float] | None = None
    batch_size: int = 8
    sw_batch_size: int | None = None
    overlays: bool = True
    probs: bool = True
    statistics: bool = False
    output_types: Sequence[str] = ("nifti",)
    strict: bool = False

    @property
    def tta_flip(self) -> bool | tuple[int, ...]:
        """What the segmenters get: the axes to flip, else whether to flip the last one."""
        return tuple(self.tta_axes) if self.tta_axes else self.tta

    @property
    def post(self) -> PostprocessOptions:
        """The postprocessing of the masks."""
        margin = LUNG_MARGIN_MM if self.lung_margin_mm is None else self.lung_margin_mm
        return PostprocessOptions(largest=self.largest, min_size=self.min_size, lungs_only=self.lungs_only, lung_margin_mm=margin)

    @property
    def writes_lung_mask(self) -> bool:
        return self.save_lung_mask and self.lungs_only

    def checked(self) -> PredictOptions:
        """These options, or a ``ConfigError`` naming the first bad one as its CLI option (``--largest: ...``)."""
        checks = {
            "largest": (self.largest >= 0, f"{self.largest} must be 0 (keep all) or more"),
            "min_size": (self.min_size >= 0, f"{self.min_size} must be 0 (keep all) or more"),
            "batch_size": (self.batch_size >= 1, f"{self.batch_size} must be at least 1"),
            "sw_batch_size": (self.sw_batch_size is None or self.sw_batch_size >= 1, f"{self.sw_batch_size} must be at least 1"),
            "missing_text": (self.missing_text in MISSING_TEXT, f"{self.missing_text!r} must be error or image-only"),
            "engine": (self.engine in ENGINES, f"{self.engine!r} must be torch, onnx or torchscript"),
            "lung_margin": (self.lung_margin_mm is None or (self.lungs_only and 0 <= self.lung_margin_mm <= 50),
                            f"{self.lung_margin_mm} needs --lungs-only and 0 to 50 mm"),
            "save_lung_mask": (self.lungs_only or not self.save_lung_mask, "needs --lungs-only"),
            "tta_axes": (self.tta_axes is None or all(0 <= a <= 2 for a in self.tta_axes),
                         f"{','.join(map(str, self.tta_axes or ()))!r}: axes are 0, 1 or 2 (of the RAS grid)"),
        }
        for name, (ok, problem) in checks.items():
            if not ok:
                raise ConfigError(f"--{name.replace('_', '-')}: {problem}")
        return self


@dataclass(frozen=True)
class ExplainOptions:
    """Every setting of ``covseg explain`` (the names of :func:`covseg.api.explain`'s keywords).

    ``gt`` holds ground-truth masks (a mask folder, or a dataset folder with ``masks/``) to score the
    heatmaps against; ``layer`` and ``target_class`` None are the model's own Grad-CAM layer and the
    most probable infection class; ``tolerance`` is the pointing game's distance in pixels."""

    checkpoint: str = "best"
    gt: str | Path | None = None
    layer: str | None = None
    target_class: int | None = None
    tolerance: float = 0.0
    tta: bool = False
    panels: bool = True
    strict: bool = False

    def checked(self) -> ExplainOptions:
        """These options, or a ``ConfigError`` naming the bad one as its CLI option."""
        if not self.tolerance >= 0:  # NaN too
            raise ConfigError(f"--tolerance: {self.tolerance} must be non-negative")
        return self


@dataclass(frozen=True)
class ExportOptions:
    """Every setting of ``covseg export``: ``format`` (``onnx``, ``torchscript`` or ``bundle``, a MONAI
    bundle), the ``checkpoint``, and for text-guided runs the ``prompts`` whose text features are written."""

    format: str = "onnx"
    checkpoint: str = "best"
    prompts: Sequence[str] = ()


@dataclass(frozen=True)
class PromptEvalOptions:
    """Every setting of ``covseg evaluate-prompts`` besides the models, the dataset and the output folder.

    ``prompt_types`` (``P0``, ``P1``...) are scored on the cases that have them all; ``texts`` is a text
    source replacing the dataset's own; ``limit`` > 0 scores that many cases spread evenly over the
    dataset; ``figure_case`` is the case drawn under each prompt (default: the first scored)."""

    prompt_types: Sequence[str] = ()
    texts: str | Path | None = None
    split: str | None = None
    checkpoint: str = "best"
    limit: int = 0
    figure_case: str | None = None
    batch_size: int = 8
