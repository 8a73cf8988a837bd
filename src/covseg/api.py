"""The Python API in one call each (TotalSegmentator's ``python_api`` idea): train, predict, explain.

These are what the CLI runs: training draws its curves, prediction writes overlays. For finer
control use :func:`covseg.training.trainer.build_trainer` and
:class:`covseg.inference.predictor.Predictor` directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def fit(cfg: Any, run_dir: str | Path, resume: bool = False, quiet: bool = False, stop_after: int | None = None) -> dict[str, Any]:
    """Train a validated config (:class:`covseg.training.config.TrainConfig`) into ``run_dir``."""
    from covseg.training.trainer import build_trainer
    from covseg.viz.callbacks import training_curves_callback

    trainer = build_trainer(cfg, run_dir, resume=resume, quiet=quiet, callbacks=[training_curves_callback])
    return trainer.fit(stop_after=stop_after)


def train(
    config: str | Path,
    output: str | Path | None = None,
    overrides: Sequence[str] = (),
    fold: int | None = None,
    resume: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train from a YAML config (or a shipped config's name); returns the training summary.

    With ``resume`` and an existing ``output``, the run's own saved config is continued.
    """
    from covseg.training.config import load_config

    extra = list(overrides or [])
    if fold is not None:
        extra.append(f"data.fold={fold}")
    if resume and output is not None and (Path(output) / "config.yaml").exists() and not extra:
        cfg = load_config(Path(output) / "config.yaml")
    else:
        cfg = load_config(config, extra)
    if output is None:
        suffix = f"_fold{cfg.data.fold}" if not cfg.data.val_root else ""
        output = Path("runs") / f"{cfg.name}{suffix}"
    return fit(cfg, output, resume=resume, quiet=quiet)


def predict(
    models: Sequence[str | Path] | str | Path,
    input: str | Path,
    output: str | Path,
    checkpoint: str = "best",
    tta: bool = False,
    text: str | None = None,
    text_file: str | Path | None = None,
    missing_text: str = "error",
    overlays: bool = True,
    largest: int = 0,
    min_size: int = 0,
    window: tuple[float, float] | None = None,
    batch_size: int = 8,
    strict: bool = False,
    on_done=None,
):
    """Segment a file or folder with one run folder, or several averaged; returns the batch report."""
    from covseg.inference.batch import predict_files
    from covseg.inference.loading import load_predictors, text_resolver
    from covseg.inference.predictor import PostprocessOptions, list_inputs
    from covseg.viz.callbacks import prediction_overlay

    run_dirs = [models] if isinstance(models, (str, Path)) else list(models)
    predictor = load_predictors(run_dirs, checkpoint)
    files = list_inputs(Path(input))
    extra_for = text_resolver(predictor, text, None if text_file is None else Path(text_file), missing_text)
    return predict_files(
        predictor,
        files,
        Path(output),
        tta_flip=tta,
        post=PostprocessOptions(largest=largest, min_size=min_size),
        window=window,
        strict=strict,
        overlays=prediction_overlay if overlays else None,
        extra_for=extra_for,
        on_done=on_done,
        batch_size=batch_size,
    )


def explain(
    model: str | Path,
    input: str | Path,
    output: str | Path,
    gt: str | Path | None = None,
    checkpoint: str = "best",
    layer: str | None = None,
    target_class: int | None = None,
    tolerance: float = 0.0,
    tta: bool = False,
    panels: bool = True,
    strict: bool = False,
    on_done=None,
):
    """Grad-CAM and attention maps of a joint run for a file or folder; returns ``(batch report, summary)``."""
    from covseg.inference.explain import Explainer, explain_files
    from covseg.inference.predictor import list_inputs
    from covseg.viz.explanations import explanation_panel

    explainer = Explainer.from_run(model, checkpoint, layer=layer, target_class=target_class)
    files = list_inputs(Path(input))
    return explain_files(
        explainer,
        files,
        Path(output),
        gt_dir=None if gt is None else Path(gt),
        tolerance=tolerance,
        panels=explanation_panel if panels else None,
        tta_flip=tta,
        strict=strict,
        on_done=on_done,
    )
