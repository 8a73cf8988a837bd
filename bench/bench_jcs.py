"""JCS (joint classification + segmentation with explanations) on real CT slices and on phantoms.

Real slices: 5-fold cross-validation with the shipped ``jcs_covid_ct`` config (at 192² for 30
epochs, for CPU time: ``BUDGET``) on the 52 slices of
``covid19_ct100_jcs`` (51 with infection, slice 0048 with an empty mask) plus the 11 lung slices
of the non-COVID CT in ``ct3d_totalseg_example`` (cut with the lung window, ``covseg data
convert``; infection-free by assumption). The folds split the 63 cases together. Each fold is
scored with its last checkpoint on its held-out cases: p(infection) per image (classification
metrics pooled over the 63 held-out predictions), Dice at 0.5 on the slices with infection, and
the Grad-CAM / attention heatmaps against the ground truth (share of the heatmap inside the
lesion, pointing game). Fold 0 also runs the command line end to end (``covseg predict``,
``covseg explain --gt``, ``covseg evaluate --explanations``) and keeps its HTML report.

Phantoms: the same config (128², 40 epochs, no class weights) trained on 160 synthetic slices (half
lesion-free; 40 more validate), tested on 100 new ones: the in-domain check the real data cannot give.

Usage::

    python bench/bench_jcs.py --folds 0,1,2,3,4 --phantoms --parallel 1
    python bench/bench_jcs.py --report

Results: ``bench/results/jcs/`` (per-fold JSON, ``phantoms.json``, ``summary.json``, ``summary.md``,
``examples.png``, ``report_fold0.html``). Runs in ``runs/bench/jcs/`` (not versioned).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cv_common import ROOT, machine, run_jobs, train_fold

OUT = ROOT / "bench" / "results" / "jcs"
RUNS = ROOT / "runs" / "bench" / "jcs"
NEGATIVES = RUNS / "ct3d_lung_slices"
CONFIG = "jcs_covid_ct"
PHANTOM_SIZE = 128


def use_config(name: str) -> None:
    """Measure config ``name``: the shipped one writes where it always did, any other to its own subfolders."""
    global CONFIG, OUT, RUNS
    if name != CONFIG:
        CONFIG, OUT, RUNS = name, OUT / name, RUNS / name


def data_root() -> Path:
    from covseg.utils.paths import data_root as root

    return root()


def prepare_negatives() -> Path:
    """The 11 infection-free lung slices of the non-COVID CT (lung window), converted once."""
    if not (NEGATIVES / "images").is_dir():
        from covseg.data.convert import convert_dataset

        convert_dataset(data_root() / "ct3d_totalseg_example", NEGATIVES, "folder", window="lung",
                        labels=[10, 11, 12, 13, 14], skip_empty=True)
    return NEGATIVES


#: CPU budget: 192² and 30 epochs instead of the config's 256² and 40 (about 0.4 of the compute)
BUDGET = ["preprocess.size=[192,192]", "train.epochs=30"]


def real_overrides() -> list[str]:
    return [f"data.extra=[{{root: {NEGATIVES}, masks: empty, label: 0}}]", *BUDGET]


def held_out_cases(run_dir: Path) -> list[tuple[Any, np.ndarray, int, str]]:
    """``(record, ground truth, class, source)`` of a run's validation cases, rebuilt from its config."""
    from covseg.data import load_sample
    from covseg.training.config import load_config
    from covseg.training.data import case_label, split_records
    from covseg.training.labels import class_label

    cfg = load_config(run_dir / "config.yaml")
    _, val, _ = split_records(cfg.data)
    out = []
    for rec in val:
        gt = case_label(load_sample(rec), rec, cfg.data)
        cls, source = class_label(rec, gt, cfg.data)
        out.append((rec, gt, cls, "extra" if source == "extra" else "ct100"))
    return out


def score_cases(run_dir: Path, cases) -> dict[str, Any]:
    """Class probability, Dice and heatmap scores of each case with the run's last checkpoint."""
    import torch

    from covseg.data import load_sample
    from covseg.inference.explain import Explainer
    from covseg.metrics.explanation import inside_share, pointing_hit
    from covseg.metrics.overlap import dice

    torch.set_num_threads(1)
    explainer = Explainer.from_run(run_dir, "last")  # Grad-CAM at the model's cam_layer (jcs: stride 8)
    bottleneck = Explainer(explainer.predictor, layer="head_input")  # the feature the classifier reads (stride 32)
    rows = []
    for rec, gt, cls, source in cases:
        image = load_sample(rec).image if not isinstance(rec, dict) else rec["image"]
        ex = explainer.explain(image)
        row = {
            "case_id": rec.case_id if not isinstance(rec, dict) else rec["case_id"],
            "source": source,
            "label": int(cls),
            "p_positive": float(1.0 - ex.prediction.class_probs[0]),
            "predicted_fraction": float((ex.prediction.labels > 0).mean()),
            "lesion_fraction": float((gt > 0).mean()),
        }
        if gt.any():
            row["dice"] = dice(ex.prediction.labels > 0, gt > 0)
            # the pointing game's own tolerance: 15 pixels on a 224-pixel input, scaled to this image
            tolerance = 15.0 * max(gt.shape) / 224.0
            maps = {"gradcam": ex.gradcam, "attention": ex.attention, "gradcam_bottleneck": bottleneck.explain(image).gradcam}
            for kind, heat in maps.items():
                if heat is None:  # no attention output (jcs_paper's decoder fuses by SE weights, it has no gates)
                    continue
                row[f"{kind}_inside"] = inside_share(heat, gt)
                row[f"{kind}_pointing"] = pointing_hit(heat, gt)
                row[f"{kind}_pointing_tol"] = pointing_hit(heat, gt, tolerance)
        rows.append(row)
    history = (run_dir / "history.csv").read_text().splitlines()
    import csv

    train_s = sum(float(r["time_s"]) for r in csv.DictReader(history))
    return {"cases": rows, "train_seconds": train_s, "epochs": len(history) - 1}


def children_cpu_seconds() -> float:
    """User + system CPU seconds of the finished child processes (the training subprocesses)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_real_fold(fold: int) -> None:
    result = OUT / "real" / f"fold{fold}.json"
    if result.exists():
        return
    run_dir = RUNS / "real" / f"fold{fold}"
    t0, cpu0 = time.perf_counter(), children_cpu_seconds()
    wall = train_fold(CONFIG, real_overrides(), run_dir, fold, RUNS / "logs" / f"real_fold{fold}.log")
    train_cpu, score_cpu0 = children_cpu_seconds() - cpu0, time.process_time()
    scored = score_cases(run_dir, held_out_cases(run_dir))
    scored.update({"fold": fold, "train_wall_seconds": wall, "total_wall_seconds": time.perf_counter() - t0,
                   "train_cpu_seconds": train_cpu, "score_cpu_seconds": time.process_time() - score_cpu0})
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(scored, indent=1))
    print(f"[real fold {fold}] done in {time.perf_counter() - t0:.0f} s", flush=True)
    if fold == 0:
        cli_report(run_dir)


def cli_report(run_dir: Path) -> None:
    """Fold 0's held-out slices through covseg predict, explain and evaluate; keep the HTML report."""
    from covseg.cli.main import main
    from covseg.data.imageio import write_mask

    folder = RUNS / "cli_fold0"
    shutil.rmtree(folder, ignore_errors=True)
    for rec, gt, _, _ in held_out_cases(run_dir):
        (folder / "data" / "images").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(rec.image, folder / "data" / "images" / f"{rec.case_id}.png")
        write_mask(folder / "data" / "masks" / f"{rec.case_id}.png", gt)
    commands = [
        ["predict", "-m", run_dir, "-i", folder / "data" / "images", "-o", folder / "pred", "--checkpoint", "last", "-q"],
        ["explain", "-m", run_dir, "-i", folder / "data" / "images", "-o", folder / "explain", "--gt", folder / "data",
         "--checkpoint", "last", "-q"],
        ["evaluate", "--pred", folder / "pred" / "probs", "--gt", folder / "data", "--explanations", folder / "explain",
         "--out", folder / "evaluate", "--show", "4"],
    ]
    for args in commands:
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            if exc.code:
                raise RuntimeError(f"covseg {args[0]} failed ({exc.code})") from None
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / "evaluate" / "report.html", OUT / "report_fold0.html")
    shutil.copyfile(folder / "evaluate" / "summary.json", OUT / "cli_fold0_summary.json")
    examples(folder / "explain" / "panels")


def examples(panels: Path, n: int = 4) -> None:
    """``examples.png``: a few fold-0 panels (the two sources, with and without infection) stacked."""
    from PIL import Image

    files = sorted(panels.glob("*.png"))
    chosen = [f for f in files if not f.stem.startswith("example_ct")][: n - 1] + [f for f in files if f.stem.startswith("example_ct")][:1]
    images = [Image.open(f).convert("RGB") for f in chosen]
    if not images:
        return
    width = max(im.width for im in images)
    canvas = Image.new("RGB", (width, sum(im.height for im in images)), "white")
    y = 0
    for im in images:
        canvas.paste(im, (0, y))
        y += im.height
    canvas.resize((canvas.width * 3 // 5, canvas.height * 3 // 5), Image.Resampling.LANCZOS).save(OUT / "examples.png", optimize=True)


def phantom_test_cases() -> list:
    from covseg.data.imageio import read_image, read_mask

    test = RUNS / "phantoms" / "test"
    cases = []
    for path in sorted((test / "images").iterdir()):
        gt = read_mask(test / "masks" / path.name)
        cases.append(({"case_id": path.stem, "image": read_image(path)}, gt, int(gt.any()), "phantom"))
    return cases


def rescore() -> None:
    """Score the finished runs again with the current code (explanations changed, training did not)."""
    for result in sorted((OUT / "real").glob("fold*.json")):
        old = json.loads(result.read_text())
        run_dir = RUNS / "real" / f"fold{old['fold']}"
        t0 = time.process_time()
        fresh = score_cases(run_dir, held_out_cases(run_dir))
        old.update({"cases": fresh["cases"], "score_cpu_seconds": time.process_time() - t0})
        result.write_text(json.dumps(old, indent=1))
        print(f"[real fold {old['fold']}] rescored", flush=True)
    if (OUT / "phantoms.json").exists():
        old = json.loads((OUT / "phantoms.json").read_text())
        old["cases"] = score_cases(RUNS / "phantoms" / "run", phantom_test_cases())["cases"]
        (OUT / "phantoms.json").write_text(json.dumps(old, indent=1))


def run_phantoms() -> None:
    """The shipped config on 160 phantoms (half lesion-free), tested on 100 new ones."""
    from covseg.data.synthetic import write_phantom_dataset

    result = OUT / "phantoms.json"
    if result.exists():
        return
    train = RUNS / "phantoms" / "train"
    test = RUNS / "phantoms" / "test"
    if not (train / "images").is_dir():
        write_phantom_dataset(train, n=200, size=PHANTOM_SIZE, seed=5, negatives=0.5, edges=False)
        write_phantom_dataset(test, n=100, size=PHANTOM_SIZE, seed=6, negatives=0.5, edges=False)
    run_dir = RUNS / "phantoms" / "run"
    overrides = [
        f"data.root={train}", "data.extra=[]", "data.label_names=[negative,positive]", "loss.terms.cls.params={}",
        f"preprocess.size=[{PHANTOM_SIZE},{PHANTOM_SIZE}]",
    ]
    cpu0 = children_cpu_seconds()
    wall = train_fold(CONFIG, overrides, run_dir, 0, RUNS / "logs" / "phantoms.log")
    train_cpu = children_cpu_seconds() - cpu0
    scored = score_cases(run_dir, phantom_test_cases())
    scored.update({"train_wall_seconds": wall, "train_cpu_seconds": train_cpu})
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(scored, indent=1))


# ------------------------------------------------------------------------------------------ report
def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from covseg.metrics.classification import classification_metrics

    labels = [r["label"] for r in rows]
    p = np.array([r["p_positive"] for r in rows])
    cls = classification_metrics(labels, p)
    positives = [r for r in rows if "dice" in r]

    def mean(key: str) -> float:
        vals = np.array([r[key] for r in positives if r.get(key) is not None], dtype=float)
        vals = vals[np.isfinite(vals)]
        return float(vals.mean()) if vals.size else float("nan")

    return {
        "cases": len(rows),
        "negatives": int(sum(1 for v in labels if v == 0)),
        "positives": int(sum(1 for v in labels if v > 0)),
        "classification": cls["metrics"],
        "confusion_matrix": cls["confusion_matrix"],
        "roc": cls["roc"],
        "dice_positives": mean("dice"),
        "dice_positives_std": float(np.std([r["dice"] for r in positives], ddof=1)) if len(positives) > 1 else float("nan"),
        **{f"{kind}_{score}": mean(f"{kind}_{score}") for kind in ("gradcam", "attention", "gradcam_bottleneck")
           for score in ("inside", "pointing", "pointing_tol")},
        "lesion_fraction": mean("lesion_fraction"),
    }


def report() -> None:
    folds = [json.loads(p.read_text()) for p in sorted((OUT / "real").glob("fold*.json"))]
    summary: dict[str, Any] = {"date": dt.date.today().isoformat(), "machine": machine(), "config": CONFIG}
    if folds:
        rows = [r for f in folds for r in f["cases"]]
        real = summarise(rows)
        real["folds"] = [f["fold"] for f in folds]
        real["wall_minutes_per_fold"] = [round(f["train_wall_seconds"] / 60, 1) for f in folds]
        real["train_cpu_minutes_per_fold"] = [round(f["train_cpu_seconds"] / 60, 1) if "train_cpu_seconds" in f else None for f in folds]
        real["in_domain_negative"] = [r for r in rows if r["source"] == "ct100" and r["label"] == 0]
        ct100 = [r for r in rows if r["source"] == "ct100"]
        real["p_positive_ct100_min"] = float(min(r["p_positive"] for r in ct100))
        real["p_positive_extra_max"] = float(max((r["p_positive"] for r in rows if r["source"] == "extra"), default=float("nan")))
        summary["real"] = real
    if (OUT / "phantoms.json").exists():
        ph = json.loads((OUT / "phantoms.json").read_text())
        summary["phantoms"] = {
            **summarise(ph["cases"]),
            "wall_minutes": round(ph["train_wall_seconds"] / 60, 1),
            "train_cpu_minutes": round(ph["train_cpu_seconds"] / 60, 1) if "train_cpu_seconds" in ph else None,
        }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    (OUT / "summary.md").write_text(markdown(summary))
    print(markdown(summary))


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"JCS benchmark, {summary['date']}, {summary['machine']}", ""]
    head = "| data | cases (neg / pos) | AUC | accuracy | sensitivity | specificity | F1 | Dice (slices with infection) |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for key, name in (("real", "real CT slices, 5-fold CV"), ("phantoms", "phantoms, 100 new slices")):
        s = summary.get(key)
        if not s:
            continue
        c = s["classification"]
        lines.append(
            f"| {name} | {s['cases']} ({s['negatives']} / {s['positives']}) | {c['auc']:.3f} | {c['accuracy']:.3f} | "
            f"{c['sensitivity']:.3f} | {c['specificity']:.3f} | {c['f1']:.3f} | {s['dice_positives']:.3f} ± {s['dice_positives_std']:.3f} |"
        )
    head = "| data | heatmap | share inside the lesion | pointing game (peak in lesion) | pointing game, 15 px at 224 px | chance (lesion area share) |"
    lines += ["", head, "|" + "---|" * (head.count("|") - 1)]
    kinds = {"gradcam": "Grad-CAM, encoder stride 8 (default)", "gradcam_bottleneck": "Grad-CAM, bottleneck (stride 32)",
             "attention": "finest attention gate"}
    for key, name in (("real", "real CT slices"), ("phantoms", "phantoms")):
        s = summary.get(key)
        for kind, label in kinds.items() if s else ():
            lines.append(
                f"| {name} | {label} | {s[kind + '_inside']:.3f} | {s[kind + '_pointing']:.3f} | {s[kind + '_pointing_tol']:.3f} | "
                f"{s['lesion_fraction']:.3f} |"
            )
    real = summary.get("real")
    if real:
        lines += ["", f"Confusion matrix (rows true no_infection / infection): {real['confusion_matrix']}"]
        for r in real["in_domain_negative"]:
            lines.append(f"In-domain negative {r['case_id']} (CT100, empty mask): p(infection) = {r['p_positive']:.3f}")
        lines.append(f"Lowest p(infection) of a CT100 slice: {real['p_positive_ct100_min']:.3f}; highest of a converted negative: {real['p_positive_extra_max']:.3f}")
        lines.append(f"Training per fold: wall minutes {real['wall_minutes_per_fold']}, CPU minutes {real['train_cpu_minutes_per_fold']}")
    if summary.get("phantoms"):
        ph = summary["phantoms"]
        lines.append(f"Phantom run: {ph['wall_minutes']} wall minutes, {ph['train_cpu_minutes']} CPU minutes of training")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", default="", help="real-slice folds to run, e.g. 0,1,2,3,4")
    ap.add_argument("--phantoms", action="store_true", help="run the phantom benchmark")
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--report", action="store_true", help="only summarise finished results")
    ap.add_argument("--cli-report", action="store_true", help="redo fold 0's command-line run and HTML report")
    ap.add_argument("--rescore", action="store_true", help="score the finished runs again (no training)")
    ap.add_argument("--config", default=CONFIG, help="jcs config to measure (results of another config go to a subfolder)")
    args = ap.parse_args()
    use_config(args.config)
    if args.rescore:
        rescore()
    if args.cli_report:
        cli_report(RUNS / "real" / "fold0")
    if not args.report:
        prepare_negatives()
        jobs = [("real", int(f), None) for f in args.folds.split(",") if f.strip()]
        if args.phantoms:
            jobs.append(("phantoms", 0, None))
        run_jobs(jobs, lambda kind, fold, _: run_real_fold(fold) if kind == "real" else run_phantoms(), args.parallel)
    report()


if __name__ == "__main__":
    main()
