"""The Python API in one call each (TotalSegmentator's ``python_api`` idea): train, predict.

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
    device: str | None = None,
    amp: str | None = None,
) -> dict[str, Any]:
    """Train from a YAML config (or a shipped config's name); returns the training summary.

    With ``resume`` and an existing ``output``, the run's own saved config is continued.
    ``device`` / ``amp`` set ``runtime.device`` / ``runtime.amp`` (a resumed run may move devices).
    Under ``torchrun`` every process runs this and trains its share (DDP).
    """
    from covseg.training.config import load_config

    extra = list(overrides or [])
    if fold is not None:
        extra.append(f"data.fold={fold}")
    runtime = [f"runtime.{k}={v}" for k, v in (("device", device), ("amp", amp)) if v is not None]
    if resume and output is not None and (Path(output) / "config.yaml").exists() and not extra:
        cfg = load_config(Path(output) / "config.yaml", runtime)
    else:
        cfg = load_config(config, extra + runtime)
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
    sw_batch_size: int | None = None,
    strict: bool = False,
    on_done=None,
    device: str = "auto",
    amp: str = "off",
    engine: str = "torch",
    tta_axes: Sequence[int] | None = None,
    stack_spacing: tuple[float, float, float] | None = None,
    probs: bool = True,
):
    """Segment a file or folder with one run folder, or several averaged; returns the batch report.

    Volume runs (3D, 2.5D) segment NIfTI files, DICOM series folders and folders of slices named
    ``NAME_<k>`` (stacked, ``stack_spacing`` mm); ``tta_axes`` flips those spatial axes (all
    combinations) where ``tta`` flips one.

    ``engine``: ``torch`` (run folders), or ``onnx`` / ``torchscript`` (a folder written by
    ``covseg export``). Under ``torchrun`` each process predicts its share of the files and the
    main process writes ``predictions.csv`` (every output is written once).
    """
    from covseg.engine.runtime import Runtime
    from covseg.inference.batch import predict_files
    from covseg.inference.loading import load_predictors, text_resolver
    from covseg.inference.predictor import PostprocessOptions, list_inputs
    from covseg.viz.callbacks import prediction_overlay

    run_dirs = [models] if isinstance(models, (str, Path)) else list(models)
    runtime = Runtime.create(device, amp)
    if engine == "torch":
        predictor = load_predictors(run_dirs, checkpoint, runtime)
    else:
        from covseg.inference.exported import load_exported

        if len(run_dirs) != 1:
            from covseg.errors import CovsegError

            raise CovsegError(f"--engine {engine} takes one exported model folder, got {len(run_dirs)}")
        predictor = load_exported(run_dirs[0], engine, runtime)
    if sw_batch_size is not None:
        for segmenter in predictor.segmenters():
            if hasattr(segmenter.inferer, "sw_batch_size"):
                segmenter.inferer.sw_batch_size = int(sw_batch_size)
    files = list_inputs(Path(input), volumes=predictor.volumetric, stack_spacing=stack_spacing, series_folders=True)
    extra_for = text_resolver(predictor, text, None if text_file is None else Path(text_file), missing_text)
    return predict_files(
        predictor,
        files,
        Path(output),
        tta_flip=tuple(tta_axes) if tta_axes else tta,
        post=PostprocessOptions(largest=largest, min_size=min_size),
        window=window,
        strict=strict,
        overlays=prediction_overlay if overlays else None,
        extra_for=extra_for,
        on_done=on_done,
        batch_size=batch_size,
        runtime=runtime,
        probs=probs,
    )
