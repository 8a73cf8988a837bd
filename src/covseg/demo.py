"""The ``covseg demo`` pipeline: data → training → prediction → evaluation → report.

Without a dataset it writes deterministic synthetic chest-CT phantoms, so a fresh install
shows the whole toolkit working in about a minute on two CPU cores. The held-out cases are
the validation fold of the training run; they are scored with the *last* checkpoint (a fixed
schedule, not the best epoch on those same cases), so the reported numbers are not tuned to them.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from covseg.errors import CovsegError

PHANTOM_CASES = 60
PHANTOM_SIZE = 128
PHANTOM_EPOCHS = 20
REAL_SIZE = 192
REAL_EPOCHS = 40


#: what the demo writes into its output folder (besides the phantoms' ``data/``)
DEMO_OUTPUTS = ("run", "predictions", "evaluation", "report.html")


def demo_config(data_root: Path, size: int, epochs: int, seed: int) -> dict[str, Any]:
    """The demo's training config: a small U-Net, Dice + BCE, AdamW, poly schedule."""
    return {
        "name": "demo",
        "data": {"root": str(data_root), "folds": 5, "fold": 0},
        "preprocess": {"size": [size, size]},
        "model": {"name": "unet", "params": {"base_width": 12, "depth": 4}},
        "loss": {"main": "dice_bce"},
        "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 1e-4},
        "schedule": {"name": "poly", "warmup_epochs": 1},
        "train": {"epochs": epochs, "batch_size": 8, "seed": seed},
    }


def run_demo(
    output: Path,
    data: Path | None = None,
    epochs: int | None = None,
    size: int | None = None,
    seed: int = 0,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the whole pipeline into ``output``; returns the two protocol summaries and timings."""
    from rich.console import Console
    from rich.markup import escape

    from covseg.data.synthetic import write_phantom_dataset
    from covseg.training.config import load_config
    from covseg.training.trainer import build_trainer
    from covseg.utils.outputs import OutputFolder
    from covseg.viz.callbacks import training_curves_callback

    console = Console(stderr=True, highlight=False, quiet=quiet)
    output = Path(output)
    # a folder with someone's run/ or data/ is refused: the demo replaces its own run/ and predictions/
    OutputFolder(output, "demo", [data], owned=("data", *DEMO_OUTPUTS)).prepare()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if data is None:
        data_root = output / "data"
        if not (data_root / "images").is_dir():
            console.print(f"[bold]1/4[/] writing {PHANTOM_CASES} synthetic CT phantoms to {escape(str(data_root))}")
            write_phantom_dataset(data_root, n=PHANTOM_CASES, size=PHANTOM_SIZE, seed=seed)
        size = size or PHANTOM_SIZE
        epochs = epochs or PHANTOM_EPOCHS
        source = f"synthetic phantoms ({PHANTOM_CASES} slices of {PHANTOM_SIZE}², seed {seed})"
    else:
        data_root = Path(data)
        if not data_root.exists():
            raise CovsegError("dataset folder not found", data_root)
        size = size or REAL_SIZE
        epochs = epochs or REAL_EPOCHS
        source = str(data_root)
        console.print(f"[bold]1/4[/] using {escape(str(data_root))}")
    timings["data_s"] = time.perf_counter() - t0

    run_dir = output / "run"
    if (run_dir / "model.json").exists():
        shutil.rmtree(run_dir)  # the demo's own previous run
    cfg = load_config(raw=demo_config(data_root, size, epochs, seed))
    console.print(f"[bold]2/4[/] training a U-Net for {epochs} epochs at {size}² → {escape(str(run_dir))}")
    t1 = time.perf_counter()
    trainer = build_trainer(cfg, run_dir, quiet=quiet, callbacks=[training_curves_callback])
    train_summary = trainer.fit()
    timings["train_s"] = time.perf_counter() - t1

    console.print(f"[bold]3/4[/] predicting {len(trainer.val_records)} held-out cases")
    t2 = time.perf_counter()
    predictions = output / "predictions"
    if OutputFolder(predictions, "predict", legacy=("predictions.csv",)).written_by_us():
        shutil.rmtree(predictions)  # the demo's own previous predictions; anything else is refused by predict
    held_out = trainer.val_records
    _predict_held_out(run_dir, held_out, predictions)
    timings["predict_s"] = time.perf_counter() - t2

    console.print("[bold]4/4[/] evaluating (medical and sod protocols) and writing the report")
    t3 = time.perf_counter()
    summaries = _evaluate(held_out, predictions, output / "evaluation")
    timings["evaluate_s"] = time.perf_counter() - t3
    timings["total_s"] = time.perf_counter() - t0
    report = _write_report(output, source, cfg, train_summary, summaries, timings, held_out, predictions)
    med, sod = summaries["medical"], summaries["sod"]
    console.print(
        f"[bold green]done[/] in {timings['total_s']:.0f}s: held-out Dice {_mean(med, 'dice'):.3f} (medical, threshold 0.5), "
        f"mean Dice {_mean(sod, 'mean_dice'):.3f}, S-measure {_mean(sod, 's_measure'):.3f}, MAE {_mean(sod, 'mae'):.3f} (sod); report: {escape(str(report))}"
    )
    return {"summaries": summaries, "timings": timings, "report": str(report), "train": train_summary}


def _predict_held_out(run_dir: Path, records, out_dir: Path) -> None:
    from covseg.inference.batch import predict_files
    from covseg.inference.predictor import Predictor
    from covseg.viz.callbacks import prediction_overlay

    predictor = Predictor.from_run(run_dir, checkpoint="last")
    report = predict_files(predictor, [r.image for r in records], out_dir, overlays=prediction_overlay)
    if report.failed:
        raise CovsegError(f"{len(report.failed)} held-out images could not be predicted: {report.failed[0][1]}", report.failed[0][0])


def _evaluate(records, predictions: Path, out_dir: Path) -> dict[str, dict[str, Any]]:
    from covseg.data.imageio import stem_of
    from covseg.metrics.evaluation import Case, build_summary, evaluate_cases, make_accumulator, write_outputs
    from covseg.viz.evaluation_report import render_evaluation_report

    summaries = {}
    for protocol in ("medical", "sod"):
        cases = [Case(r.case_id, predictions / "probs" / f"{stem_of(r.image)}.png", r.mask, r.image) for r in records]
        run = evaluate_cases(cases, make_accumulator(protocol), strict=True)
        write_outputs(run, out_dir / protocol, report=render_evaluation_report)
        summaries[protocol] = build_summary(run)
    return summaries


def _mean(summary: dict[str, Any], metric: str) -> float:
    stats = summary.get("metrics", {}).get(metric)
    if isinstance(stats, dict):
        return float(stats.get("mean", float("nan")))
    return float("nan")


def _write_report(output: Path, source: str, cfg, train_summary, summaries, timings, records, predictions: Path) -> Path:
    from covseg.data.imageio import read_image, read_mask, stem_of
    from covseg.viz.overlay import overlay
    from covseg.viz.report import HtmlReport

    rep = HtmlReport("covseg demo", f"data: {source}")
    rep.heading("Pipeline")
    rep.table(
        [
            {"step": "data", "seconds": timings["data_s"]},
            {"step": "training", "seconds": timings["train_s"]},
            {"step": "prediction", "seconds": timings["predict_s"]},
            {"step": "evaluation", "seconds": timings["evaluate_s"]},
            {"step": "total", "seconds": timings["total_s"]},
        ],
        float_format=".1f",
    )
    rep.paragraph(
        f"Model {cfg.model.name} {cfg.model.params}, {cfg.train.epochs} epochs at "
        f"{cfg.preprocess.size[0]}×{cfg.preprocess.size[1]}; held-out cases = validation fold {cfg.data.fold} of "
        f"{cfg.data.folds}, scored with the last checkpoint at their original resolution."
    )
    curves = Path(train_summary["run_dir"]) / "curves.png"
    if curves.exists():
        rep.heading("Training curves")
        rep.image(curves.read_bytes(), "loss and validation metrics per epoch")
    rep.heading("Held-out results")
    rows = []
    for protocol, keys in (("medical", ("dice", "iou", "precision", "sensitivity", "hd95", "nsd")), ("sod", ("mean_dice", "s_measure", "mean_e_measure", "weighted_f", "mae"))):
        metrics = summaries[protocol].get("metrics", {})
        for key in keys:
            if key in metrics:
                stats = metrics[key]
                rows.append({"protocol": protocol, "metric": key, "mean": stats.get("mean"), "std": stats.get("std"), "median": stats.get("median")})
    rep.table(rows)
    rep.paragraph("Full per-case tables and reports: evaluation/medical/report.html, evaluation/sod/report.html.")
    rep.heading("Overlays (ground truth green, prediction red, overlap yellow)")
    items = []
    for rec in records[:8]:
        image = read_image(rec.image)
        gt = read_mask(rec.mask)
        pred = read_mask(predictions / "masks" / f"{stem_of(rec.image)}.png")
        items.append((overlay(image, gt, pred), rec.case_id))
    rep.gallery(items, width=220)
    return rep.write(output / "report.html")


# -- the second path: a shipped (zoo) model on real example images ---------------------------------
PRETRAINED_EXAMPLES = {  # model kind -> dataset folder (under COVSEG_DATA) whose images it predicts
    "CT": "covid_semiseg_infnet/train",
    "X-ray": "qata_cov19_sgseg/valid",
}


def example_records(model: str, cases: int) -> tuple[list, Path | None]:
    """Real example cases for a shipped model from COVSEG_DATA (empty when the data is absent).

    ``cases`` images spread over the model's dataset (CT: the 50 labelled slices, X-ray: QaTa
    ``valid``), restricted to the slices its card says were held out of training when it names
    any. The shipped models trained on all labelled images, so the report says they were seen."""
    from covseg import zoo
    from covseg.training.data import open_records
    from covseg.utils.paths import data_root

    card = zoo.card(model)
    folder = data_root() / PRETRAINED_EXAMPLES.get(card.get("modality", "CT"), PRETRAINED_EXAMPLES["CT"])
    if not (folder / "images").is_dir():
        return [], None
    records = sorted((r for r in open_records(str(folder)) if r.mask is not None), key=lambda r: r.case_id)
    held_out = set(card.get("validation", {}).get("held_out_case_ids", []))
    if held_out:
        records = [r for r in records if r.case_id in held_out]
    if len(records) > cases:
        records = [records[i] for i in sorted({round(k * (len(records) - 1) / (cases - 1)) for k in range(cases)})] if cases > 1 else records[:1]
    captions = folder / "captions.csv"
    return records, captions if captions.is_file() else None


def _example_status(card: dict[str, Any]) -> str:
    """Whether the demo's example images were held out of the model's training, in words."""
    if card.get("validation", {}).get("held_out_case_ids"):
        return "held out of the model's training"
    return ("seen in training: the model was trained on all labelled images, so these scores overstate it; "
            "its held-out accuracy is on its card")


def run_pretrained_demo(output: Path, model: str = "covid-ct-infection", cases: int = 8, quiet: bool = False) -> dict[str, Any] | None:
    """Predict real example images with a shipped model (no training), score them and write report.html.

    Returns None, after one line saying why, when COVSEG_DATA holds no example images (the
    datasets cannot be bundled with covseg)."""
    from rich.console import Console
    from rich.markup import escape

    from covseg import zoo
    from covseg.inference.batch import predict_files
    from covseg.inference.loading import load_predictor, text_resolver
    from covseg.utils.outputs import OutputFolder
    from covseg.utils.paths import DATA_ENV, data_root
    from covseg.viz.callbacks import prediction_overlay

    console = Console(stderr=True, highlight=False, quiet=quiet)
    if zoo.resolve(model) is None:
        raise CovsegError(f"no shipped model named {model!r} (shipped: {', '.join(zoo.names()) or 'none'})")
    records, captions = example_records(model, cases)
    if not records:
        Console(stderr=True, highlight=False).print(
            f"no example images: the datasets cannot be bundled with covseg and none were found under {escape(str(data_root()))} "
            f"(set {DATA_ENV}); predict your own with: covseg predict --model {escape(model)} -i FILE -o OUT"
        )
        return None
    output = Path(output)
    OutputFolder(output, "demo", [r.image for r in records], owned=DEMO_OUTPUTS).prepare()
    t0 = time.perf_counter()
    predictor = load_predictor(model)
    if predictor.num_classes != 1:
        raise CovsegError(f"the demo scores binary models; {model!r} has {predictor.num_classes} classes (use covseg predict)")
    console.print(f"[bold]1/2[/] predicting {len(records)} real example images with {escape(model)} (shipped weights, no training)")
    predictions = output / "predictions"
    if OutputFolder(predictions, "predict", legacy=("predictions.csv",)).written_by_us():
        shutil.rmtree(predictions)
    text_file = captions if predictor.text_guided else None
    extra_for = text_resolver(predictor, None, text_file)
    report = predict_files(predictor, [r.image for r in records], predictions, overlays=prediction_overlay, extra_for=extra_for)
    if report.failed:
        raise CovsegError(f"{len(report.failed)} example images could not be predicted: {report.failed[0][1]}", report.failed[0][0])
    timings = {"predict_s": time.perf_counter() - t0}
    console.print("[bold]2/2[/] evaluating and writing the report")
    summaries = _evaluate(records, predictions, output / "evaluation")
    timings["total_s"] = time.perf_counter() - t0
    card = zoo.card(model)
    source = f"{len(records)} images of {records[0].image.parent.parent} ({_example_status(card)})"
    page = _pretrained_report(output, model, card, source, summaries, timings, records, predictions)
    console.print(
        f"[bold green]done[/] in {timings['total_s']:.0f}s: Dice {_mean(summaries['medical'], 'dice'):.3f} (threshold 0.5), "
        f"sod mean Dice {_mean(summaries['sod'], 'mean_dice'):.3f} on {len(records)} example images "
        f"({escape(_example_status(card))}); report: {escape(str(page))}"
    )
    return {"summaries": summaries, "timings": timings, "report": str(page), "cases": [r.case_id for r in records]}


def _pretrained_report(output: Path, model: str, card: dict[str, Any], source: str, summaries, timings, records, predictions: Path) -> Path:
    from covseg.data.imageio import read_image, read_mask, stem_of
    from covseg.viz.overlay import overlay
    from covseg.viz.report import HtmlReport

    rep = HtmlReport(f"covseg demo: shipped model {model}", f"data: {source}")
    rep.paragraph(f"{card.get('task', '')}. {card.get('status', '')}")
    rep.table([{"step": "prediction", "seconds": timings["predict_s"]}, {"step": "total", "seconds": timings["total_s"]}], float_format=".1f")
    rows = []
    for protocol, keys in (("medical", ("dice", "iou", "sensitivity", "hd95")), ("sod", ("mean_dice", "s_measure", "mae"))):
        metrics = summaries[protocol].get("metrics", {})
        rows += [{"protocol": protocol, "metric": k, "mean": metrics[k].get("mean"), "std": metrics[k].get("std")} for k in keys if k in metrics]
    rep.table(rows)
    rep.heading("Overlays (ground truth green, prediction red, overlap yellow)")
    items = []
    for rec in records[:8]:
        pred = read_mask(predictions / "masks" / f"{stem_of(rec.image)}.png")
        items.append((overlay(read_image(rec.image), read_mask(rec.mask), pred), rec.case_id))
    rep.gallery(items, width=220)
    return rep.write(output / "report.html")
