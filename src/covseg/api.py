"""The Python API in one call each (TotalSegmentator's ``python_api`` idea): train, predict, explain, evaluate, export.

These are what the CLI runs: training draws its curves, prediction writes overlays. For finer
control use :func:`covseg.training.trainer.build_trainer` and
:class:`covseg.inference.predictor.Predictor` directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
        trainer.close()  # under torchrun: release DDP and end the process group before exit
        return summary


def train(config: str | Path, output: str | Path | None = None, options: Any = None, **settings: Any) -> dict[str, Any]:
    """Train from a YAML config (or a shipped config's name) into ``output`` (default ``runs/<name>[_fold<k>]``);
    returns the training summary. The settings are a :class:`covseg.training.options.TrainOptions`
    (``options``), or its fields as keywords (``train(cfg, out, fold=1, overrides=["train.epochs=3"])``).

    With ``resume`` the run folder's own saved ``config.yaml`` is continued; a ``config``,
    ``fold`` or override that would change it is refused in one line (only ``train.threads``,
    ``sampler.cache_dir`` and the ``runtime`` section may differ: a resumed run may move devices),
    rather than silently rewriting the run. Under ``torchrun`` every process runs this and trains its share (DDP).
    """
    import dataclasses

    from covseg.errors import ConfigError
    from covseg.training.config import config_differences, load_config
    from covseg.training.options import TrainOptions

    opts = dataclasses.replace(options or TrainOptions(), **settings)
    cfg = load_config(config, opts.config_overrides())
    if output is None:
        suffix = f"_fold{cfg.data.fold}" if not cfg.data.val_root else ""
        output = Path("runs") / f"{cfg.name}{suffix}"
    saved = Path(output) / "config.yaml"
    if opts.resume and saved.is_file():
        differences = config_differences(load_config(saved), cfg)
        if differences:
            shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
            raise ConfigError(
                f"--resume continues the saved run, but the given config differs from it ({shown}); "
                f"drop the changes (or give --config {saved}), or train into a new --output",
                saved,
            )
    try:
        return fit(cfg, output, resume=opts.resume, quiet=opts.quiet)
    except ConfigError as exc:
        if exc.path is not None:
            raise
        from covseg.training.config import resolve_config_path

        raise ConfigError(exc.problem, resolve_config_path(config)) from None  # name the config it came from


def predict(
    models: Sequence[str | Path] | str | Path,
    input: str | Path,
    output: str | Path,
    options: Any = None,
    *,
    on_done: Callable[[], None] | None = None,
    **settings: Any,
):
    """Segment a file or folder with one run folder, or several averaged; returns the batch report.

    The settings are a :class:`covseg.inference.options.PredictOptions` (``options``), or its fields
    as keywords (``predict(run, "in/", "out/", tta=True, lungs_only=True)``), which override ``options``'s.

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
    import dataclasses

    from covseg.inference.batch import predict_files
    from covseg.inference.dicom_out import check_output_types
    from covseg.inference.onnx_start import torch_free_predictor
    from covseg.inference.options import PredictOptions
    from covseg.viz.callbacks import prediction_overlay
    from covseg.viz.preview import three_view_preview

    opts = dataclasses.replace(options or PredictOptions(), **settings)
    run_dirs = [models] if isinstance(models, (str, Path)) else list(models)
    check_output_types(opts.output_types)
    light = torch_free_predictor(run_dirs, Path(input), opts)  # a shipped 2D model with its cached ONNX export: no torch
    if light is not None:
        return predict_files(light, light.files, Path(output), opts, runtime=light.runtime, on_done=on_done,
                             overlays=prediction_overlay if opts.overlays else None)  # fmt: skip

    from covseg.data.imageio import is_volume
    from covseg.engine.runtime import Runtime
    from covseg.inference.loading import load_predictors, text_resolver
    from covseg.inference.predictor import list_inputs

    runtime = Runtime.create(opts.device, opts.amp)
    if opts.engine == "torch":
        predictor = load_predictors(run_dirs, opts.checkpoint, runtime)
    else:
        from covseg.inference.exported import load_exported

        if len(run_dirs) != 1:
            from covseg.errors import CovsegError

            raise CovsegError(f"--engine {opts.engine} takes one exported model folder, got {len(run_dirs)}")
        predictor = load_exported(run_dirs[0], opts.engine, runtime)
    if opts.sw_batch_size is not None:
        for segmenter in predictor.segmenters():
            if hasattr(segmenter.inferer, "sw_batch_size"):
                segmenter.inferer.sw_batch_size = int(opts.sw_batch_size)
    files = list_inputs(Path(input), volumes=predictor.volumetric or opts.lungs_only, stack_spacing=opts.stack_spacing, series_folders=True)
    if opts.lungs_only and not any(is_volume(f) for f in files):
        from covseg.errors import DataError
        from covseg.inference.postprocess import LUNGS_NEED_VOLUME

        raise DataError(f"{LUNGS_NEED_VOLUME} (NIfTI, DICOM series or a stack of HU slices); no volume among the inputs", input)
    text_file = None if opts.text_file is None else Path(opts.text_file)
    extra_for = text_resolver(predictor, opts.text, text_file, opts.missing_text, opts.prompt_type)
    report = predict_files(
        predictor, files, Path(output), opts, runtime=runtime, extra_for=extra_for, on_done=on_done,
        overlays=prediction_overlay if opts.overlays else None,
        preview=three_view_preview if opts.statistics and opts.overlays else None,
    )  # fmt: skip
    runtime.close()  # under torchrun: end the process group before exit (gloo threads left alive can abort it)
    return report


def pseudo_label(
    models: Sequence[str | Path] | str | Path, input: str | Path, output: str | Path, *, checkpoint: str = "best",
    tta: bool = False, edge_width: int = 1, text: str | None = None, text_file: str | Path | None = None,
    missing_text: str = "error", device: str = "auto", strict: bool = False, on_done: Callable[[], None] | None = None,
):
    """Pseudo-label a folder of unlabelled 2D images with one run folder or several averaged (``covseg
    pseudo-label``): ``images/``, ``masks/``, ``edges/`` and ``confidence.csv`` in ``output``, a dataset a
    trainer reads as its ``semi.pseudo`` source; returns the batch report (volumes are listed as failed)."""
    from covseg.engine.runtime import Runtime
    from covseg.inference.loading import load_predictors, text_resolver
    from covseg.inference.predictor import list_inputs
    from covseg.inference.pseudo import pseudo_label_files

    run_dirs = [models] if isinstance(models, (str, Path)) else list(models)
    predictor = load_predictors(run_dirs, checkpoint, Runtime.create(device, distributed=False))
    files = list_inputs(Path(input))
    extra_for = text_resolver(predictor, text, None if text_file is None else Path(text_file), missing_text)
    return pseudo_label_files(
        predictor, files, Path(output), tta_flip=tta, edge_width=edge_width, strict=strict, on_done=on_done, extra_for=extra_for
    )


def lung_masks(input: str | Path, output: str | Path, *, strict: bool = False, on_done: Callable[[], None] | None = None):
    """Classical lung masks (threshold + morphology, no network) of a CT volume in HU or a folder of them
    (``covseg lungmask``): ``<name>.nii.gz`` in each input's geometry and ``lungs.csv`` (ml); returns the batch report."""
    from covseg.inference.lung_masks import lung_mask_files
    from covseg.inference.predictor import list_inputs

    return lung_mask_files(list_inputs(Path(input), series_folders=True), Path(output), strict=strict, on_done=on_done)


def make_captions(masks: str | Path, out: str | Path, **settings: Any) -> tuple[list, list]:
    """QaTa-style captions made from 2D masks (``covseg text make-captions``): ``out`` as ``captions.csv``, a
    text source; keywords as :func:`covseg.data.captions.write_captions`. Returns the rows and the failures."""
    from covseg.data.captions import write_captions

    return write_captions(masks, out, **settings)


def explain(
    model: str | Path, input: str | Path, output: str | Path, options: Any = None, *, on_done: Callable[[], None] | None = None,
    **settings: Any,
):
    """Grad-CAM and attention maps of a joint run for a file or folder; returns ``(batch report, summary)``.
    The settings are a :class:`covseg.inference.options.ExplainOptions` (``options``), or its fields as keywords."""
    import dataclasses

    from covseg.inference.explain import Explainer, explain_files
    from covseg.inference.options import ExplainOptions
    from covseg.inference.predictor import list_inputs
    from covseg.viz.explanations import explanation_panel

    opts = dataclasses.replace(options or ExplainOptions(), **settings).checked()
    explainer = Explainer.from_run(model, opts.checkpoint, layer=opts.layer, target_class=opts.target_class)
    files = list_inputs(Path(input))
    return explain_files(
        explainer,
        files,
        Path(output),
        gt_dir=None if opts.gt is None else Path(opts.gt),
        tolerance=opts.tolerance,
        panels=explanation_panel if opts.panels else None,
        tta_flip=opts.tta,
        strict=opts.strict,
        on_done=on_done,
    )


@dataclass
class EvaluateResult:
    """What :func:`evaluate` scored and wrote: the run (cases, problems, notes), the protocol's
    summary, the files written and where."""

    run: Any
    summary: dict[str, Any]
    paths: dict[str, Path]
    out_dir: Path


#: ``listener(event, value)`` of :func:`evaluate`: ``"predictions"`` (the folder read inside the one
#: given), ``"skipped"`` (a case left out while pairing), ``"start"`` (the number of cases to score)
EvaluateListener = Callable[[str, Any], None]


def evaluate(
    pred: str | Path,
    gt: str | Path,
    options: Any = None,
    *,
    listener: EvaluateListener | None = None,
    on_case: Callable[[Any, Any], None] | None = None,
) -> EvaluateResult:
    """Score a folder of predictions against ground truth with :class:`covseg.metrics.options.EvaluateOptions`;
    writes ``per_case.csv``, ``summary.json`` and (``options.report``) ``report.html``.

    A ``covseg predict`` output folder is read through its soft maps (else its masks). Joint
    models' class probabilities (``predictions.csv`` beside the predictions, or ``options.classes``)
    and ``covseg explain`` heatmaps (``options.explanations``) are scored too. Raises ``DataError``
    when no case could be scored; cases that failed are in ``result.run.bad``."""
    import functools

    from covseg.errors import ConfigError, DataError
    from covseg.metrics import evaluation as ev
    from covseg.metrics import joint
    from covseg.metrics.options import EvaluateOptions
    from covseg.utils.outputs import OutputFolder

    opts = (options or EvaluateOptions()).checked()
    say = listener or (lambda event, value: None)
    pred, gt = Path(pred), Path(gt)
    inner = ev.resolve_prediction_folder(pred)
    if opts.protocol == "flare" and inner.name == "probs" and (inner.parent / "masks").is_dir():
        inner = inner.parent / "masks"  # FLARE scores label masks, the ones predict wrote
        say("flare_masks", inner)
    elif inner != pred:
        say("predictions", inner)
    pred = inner
    out_dir = opts.out_dir(pred)
    cases, bad, image_dir = ev.pair_cases(pred, gt, opts.images, missing=opts.missing_pred)
    folder = OutputFolder(
        out_dir, "evaluate", [pred, gt, gt / "masks", image_dir],
        owned=("per_case.csv", "summary.json", "report.html"), legacy=("summary.json",),
    )  # fmt: skip
    folder.validate()
    if opts.strict and bad:
        raise DataError(bad[0].problem, bad[0].path)
    accumulator = ev.make_accumulator(
        opts.protocol, threshold=opts.threshold, tolerance=opts.tolerance, num_classes=opts.num_classes, empty=opts.empty,
        empty_distance=opts.empty_distance, pred_type=opts.pred_type, specificity_rule=opts.specificity_rule, toolbox=opts.toolbox,
    )  # type: ignore[arg-type]  # fmt: skip
    for b in bad:
        say("skipped", b)
    say("start", len(cases))
    run = ev.evaluate_cases(cases, accumulator, num_classes=opts.num_classes, pred_type=opts.pred_type,  # type: ignore[arg-type]
                            spacing=opts.spacing, strict=opts.strict, on_case=on_case)  # type: ignore[arg-type]  # fmt: skip
    run.bad = bad + run.bad
    run.options = {
        "pred": str(pred), "gt": str(gt), "images": str(image_dir) if image_dir else None,
        "spacing": list(opts.spacing) if opts.spacing else None, "strict": opts.strict, "missing_pred": opts.missing_pred,
    }  # fmt: skip
    folder.prepare()
    if run.cases:  # classification of joint models (per image and per patient) and explanation scores
        scores = joint.joint_options(pred, opts.classes)
        if scores is not None:
            joint.attach_classification(run, scores, opts.labels, opts.num_classes, opts.patient_pattern, opts.patient_rule)
        elif opts.labels is not None:
            raise ConfigError("--labels needs class probabilities: predictions.csv of a joint model beside --pred, or --classes")
        if opts.explanations is not None:
            joint.attach_explanations(run, opts.explanations, opts.pointing_tolerance, opts.num_classes, opts.show)
    if not run.cases:
        summary_path = ev.write_outputs(run, out_dir, reduction=opts.reduction)["summary"]  # type: ignore[arg-type]
        raise DataError(f"no case could be scored ({len(run.bad)} problem(s), listed in {summary_path})", pred)
    if opts.protocol == "flare":  # FLARE22's table: DSC, NSD per class; seconds and peak memory per case
        from covseg.metrics import flare

        timings = opts.timings if opts.timings is not None else flare.find_timings(pred)
        if timings is not None:
            flare.attach_timings(run, flare.read_timings(timings))
        table = flare.flare_table(run, opts.reduction)  # type: ignore[arg-type]
        table["timings"] = str(timings) if timings is not None else None
        run.extras.setdefault("summary", {})["flare"] = table
    renderer = None
    if opts.report:  # metrics writes the files; the HTML page comes from viz, one layer up
        from covseg.viz.evaluation_report import render_evaluation_report

        renderer = functools.partial(render_evaluation_report, show=opts.show)
    paths = ev.write_outputs(run, out_dir, reduction=opts.reduction, report=renderer)  # type: ignore[arg-type]
    return EvaluateResult(run, accumulator.aggregate(opts.reduction), paths, out_dir)  # type: ignore[arg-type]


def evaluate_prompts(
    models: Sequence[str], data: str | Path, out: str | Path, options: Any = None, *,
    on_start: Callable[[int], None] | None = None, on_case: Callable[[], None] | None = None, **settings: Any,
):
    """Dice and IoU of text-guided models (``[LABEL=]RUN_DIR`` or a CLIPSeg weights folder, zero-shot) under each
    prompt type of ``data``, written into ``out`` with a figure of one case (``covseg evaluate-prompts``);
    returns ``(scores, summary)``. The settings are a :class:`covseg.inference.options.PromptEvalOptions`
    (``options``), or its fields as keywords (``evaluate_prompts(runs, data, out, prompt_types=["P0", "P1"])``)."""
    import dataclasses

    from covseg.inference.options import PromptEvalOptions
    from covseg.inference.prompt_run import run_prompt_evaluation
    from covseg.viz.prompts import prompt_figure

    opts = dataclasses.replace(options or PromptEvalOptions(), **settings)
    return run_prompt_evaluation(models, data, out, opts, figure=prompt_figure, on_start=on_start, on_case=on_case)


def export(model: str | Path, output: str | Path, options: Any = None, **settings: Any) -> Path:
    """Export a run folder or a shipped model's name (``covseg export``): ``onnx`` or ``torchscript`` (one
    file + ``model_card.json``, run with ``covseg predict --engine``) or ``bundle`` (a MONAI bundle).
    The settings are a :class:`covseg.inference.options.ExportOptions` (``options``), or its fields as
    keywords (``export(run, "out/", format="bundle")``).

    Text-guided runs need ``prompts`` (their text features are computed now and written beside the
    model). Returns the model file, or the bundle folder."""
    import dataclasses

    from covseg.inference.exported import export_run
    from covseg.inference.options import ExportOptions

    if isinstance(options, str):  # the format was once the third argument
        from covseg.errors import ConfigError

        raise ConfigError(f"export(model, output, options): give the format by name, format={options!r}")
    opts = dataclasses.replace(options or ExportOptions(), **settings)
    return export_run(model, opts.format, output, opts.checkpoint, prompts=list(opts.prompts))


def import_weights(
    format: str,
    file: str | Path,
    output: str | Path,
    prior: str | Path | None = None,
    text_encoder: str | Path | None = None,
    tokenizer: str | Path | None = None,
    classifier: str | Path | None = None,
) -> Path:
    """Turn an author's released checkpoint into a covseg run folder (``covseg weights import``).

    ``format`` names a registered checkpoint format (``covseg weights formats``); the file is read
    with ``weights_only=True``. Returns the run folder, which ``predict``, ``evaluate``,
    ``explain`` and ``export`` use like a trained one; ``provenance.json`` records the source.
    ``prior`` is the binary run a cascade format (``infnet-multiclass``) reads its map from;
    ``text_encoder`` the local Hugging Face folder a text-guided format (``lvit``: BERT-base) reads captions with.
    Format ``clip`` writes a CLIP model folder for ``cris`` instead (``tokenizer``: OpenAI's
    ``bpe_simple_vocab_16e6.txt.gz`` or a CLIP tokenizer folder; see docs/weights.md).
    ``classifier`` is JCS's separate classification checkpoint (``res2net_cls.pth``) for format ``jcs``.
    """
    from covseg.runs.importers import import_weights as run_import

    return run_import(
        format, file, output, prior, text_encoder=text_encoder, tokenizer=tokenizer, classifier=classifier
    )
