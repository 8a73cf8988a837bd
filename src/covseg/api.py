"""The Python API in one call each (TotalSegmentator's ``python_api`` idea): train, predict, explain.

These are what the CLI runs: training draws its curves, prediction writes overlays. For finer
control use :func:`covseg.training.trainer.build_trainer` and
:class:`covseg.inference.predictor.Predictor` directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

RUN_FILES = ("config.yaml", "model.json", "dataset.json", "splits.json", "history.csv", "curves.png", "checkpoints")


def fit(cfg: Any, run_dir: str | Path, resume: bool = False, quiet: bool = False, stop_after: int | None = None) -> dict[str, Any]:
    """Train a validated config (:class:`covseg.training.config.TrainConfig`) into ``run_dir``.

    The run folder is checked first (a folder holding someone else's ``dataset.json`` or
    ``config.yaml`` is refused, as is the dataset folder itself) and locked while training, so
    two trainings into one folder cannot mix their files.
    """
    import contextlib

    from covseg.engine.runtime import torchrun_env
    from covseg.runs.folder import RunFolder
    from covseg.training.trainer import build_trainer
    from covseg.utils.outputs import OutputFolder
    from covseg.utils.paths import expand
    from covseg.viz.callbacks import training_curves_callback

    folder = OutputFolder(run_dir, "train", [expand(cfg.data.root)], owned=RUN_FILES, legacy=("model.json",))
    folder.validate()
    primary = torchrun_env()[0] == 0  # under torchrun only rank 0 owns (locks, marks, writes) the folder
    with RunFolder(run_dir).lock() if primary else contextlib.nullcontext():
        if primary:
            folder.prepare()
        trainer = build_trainer(cfg, run_dir, resume=resume, quiet=quiet, callbacks=[training_curves_callback])
        summary = trainer.fit(stop_after=stop_after)
        trainer.runtime.close()  # under torchrun: end the process group before exit
        return summary


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

    With ``resume`` the run folder's own saved ``config.yaml`` is continued; a ``config``,
    ``fold`` or override that would change it is refused in one line (only ``train.threads``,
    ``sampler.cache_dir`` and the ``runtime`` section may differ: a resumed run may move devices),
    rather than silently rewriting the run. ``device`` / ``amp`` set ``runtime.device`` /
    ``runtime.amp``. Under ``torchrun`` every process runs this and trains its share (DDP).
    """
    from covseg.errors import ConfigError
    from covseg.training.config import config_differences, load_config

    extra = list(overrides or [])
    if fold is not None:
        extra.append(f"data.fold={fold}")
    extra += [f"runtime.{k}={v}" for k, v in (("device", device), ("amp", amp)) if v is not None]
    cfg = load_config(config, extra)
    if output is None:
        suffix = f"_fold{cfg.data.fold}" if not cfg.data.val_root else ""
        output = Path("runs") / f"{cfg.name}{suffix}"
    saved = Path(output) / "config.yaml"
    if resume and saved.is_file():
        differences = config_differences(load_config(saved), cfg)
        if differences:
            shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
            raise ConfigError(
                f"--resume continues the saved run, but the given config differs from it ({shown}); "
                f"drop the changes (or give --config {saved}), or train into a new --output",
                saved,
            )
    try:
        return fit(cfg, output, resume=resume, quiet=quiet)
    except ConfigError as exc:
        if exc.path is not None:
            raise
        from covseg.training.config import resolve_config_path

        raise ConfigError(exc.problem, resolve_config_path(config)) from None  # name the config it came from


def predict(
    models: Sequence[str | Path] | str | Path,
    input: str | Path,
    output: str | Path,
    checkpoint: str = "best",
    tta: bool = False,
    text: str | None = None,
    text_file: str | Path | None = None,
    missing_text: str = "error",
    prompt_type: str | None = None,
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
    lungs_only: bool = False,
    lung_margin_mm: float | None = None,
    save_lung_mask: bool = False,
    statistics: bool = False,
    output_types: Sequence[str] = ("nifti",),
):
    """Segment a file or folder with one run folder, or several averaged; returns the batch report.

    Volume runs (3D, 2.5D) segment NIfTI files, DICOM series folders and folders of slices named
    ``NAME_<k>`` (stacked, ``stack_spacing`` mm); ``tta_axes`` flips those spatial axes (all
    combinations) where ``tta`` flips one.

    ``lungs_only`` (CT volumes in HU) sets everything outside the input's classical lung mask
    (:func:`covseg.transforms.lungmask.lung_mask`, grown by ``lung_margin_mm``, default
    :data:`covseg.inference.postprocess.LUNG_MARGIN_MM`) to background in
    masks and soft maps, as TotalSegmentator-style postprocessing; ``predictions.csv`` gains the
    lung volume (``lung_ml``), and ``save_lung_mask`` writes the mask into ``lungs/``. 2D images
    are refused (a folder of them: each listed as failed), and so is a volume without lungs. Folders
    of slices ``NAME_<k>`` are then stacked into volumes for 2D runs too.

    ``statistics`` writes each case's numbers (:func:`covseg.inference.statistics.case_statistics`:
    per class the volume in ml or area, HU inside it, share of each lung, components) into
    ``statistics/<stem>.json``, the row's ``statistics`` and the batch's ``statistics.csv``, and (unless
    ``overlays`` is off) a volume's three-view picture into ``previews/<stem>.png``.

    ``engine``: ``torch`` (run folders), or ``onnx`` / ``torchscript`` (a folder written by
    ``covseg export``). Under ``torchrun`` each process predicts its share of the files and the
    main process writes ``predictions.csv`` (every output is written once).

    ``output_types`` adds ``dicom-seg`` (``dicom_seg/NAME.seg.dcm``, needs the ``dicom`` extra) and/or
    ``rtstruct`` (``rtstruct/NAME.rtstruct.dcm``) beside the NIfTI mask of each DICOM series input,
    referencing that series; any other input is then listed as failed.
    """
    from covseg.data.imageio import is_volume
    from covseg.engine.runtime import Runtime
    from covseg.inference.batch import predict_files
    from covseg.inference.dicom_out import check_output_types
    from covseg.inference.loading import load_predictors, text_resolver
    from covseg.inference.postprocess import LUNG_MARGIN_MM
    from covseg.inference.predictor import PostprocessOptions, list_inputs
    from covseg.viz.callbacks import prediction_overlay
    from covseg.viz.preview import three_view_preview

    run_dirs = [models] if isinstance(models, (str, Path)) else list(models)
    dicom_outputs = check_output_types(output_types)
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
    files = list_inputs(Path(input), volumes=predictor.volumetric or lungs_only, stack_spacing=stack_spacing, series_folders=True)
    if lungs_only and not any(is_volume(f) for f in files):
        from covseg.errors import DataError
        from covseg.inference.postprocess import LUNGS_NEED_VOLUME

        raise DataError(f"{LUNGS_NEED_VOLUME} (NIfTI, DICOM series or a stack of HU slices); no volume among the inputs", input)
    extra_for = text_resolver(predictor, text, None if text_file is None else Path(text_file), missing_text, prompt_type)
    report = predict_files(
        predictor,
        files,
        Path(output),
        tta_flip=tuple(tta_axes) if tta_axes else tta,
        post=PostprocessOptions(largest=largest, min_size=min_size, lungs_only=lungs_only,
                                 lung_margin_mm=LUNG_MARGIN_MM if lung_margin_mm is None else lung_margin_mm),
        window=window,
        strict=strict,
        overlays=prediction_overlay if overlays else None,
        extra_for=extra_for,
        on_done=on_done,
        batch_size=batch_size,
        runtime=runtime,
        probs=probs,
        save_lung_mask=save_lung_mask,
        statistics=statistics,
        preview=three_view_preview if statistics and overlays else None,
        dicom_outputs=dicom_outputs,
    )
    runtime.close()  # under torchrun: end the process group before exit (gloo threads left alive can abort it)
    return report


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


def import_weights(format: str, file: str | Path, output: str | Path, prior: str | Path | None = None) -> Path:
    """Turn an author's released checkpoint into a covseg run folder (``covseg weights import``).

    ``format`` names a registered checkpoint format (``covseg weights formats``); the file is read
    with ``weights_only=True``. Returns the run folder, which ``predict``, ``evaluate``,
    ``explain`` and ``export`` use like a trained one; ``provenance.json`` records the source.
    ``prior`` is the binary run a cascade format (``infnet-multiclass``) reads its map from.
    """
    from covseg.runs.importers import import_weights as run_import

    return run_import(format, file, output, prior)
