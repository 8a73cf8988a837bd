"""Accuracy per compute: held-out Dice reached after 10, 30 and 60 CPU-minutes (one thread).

The best CT recipe of ``bench_covid_semiseg.py`` (the co-supervised ResUNet, ``resunet_all``)
against MONAI's ``UNet`` trained the same way (same data, fold, 256² input, augmentation,
Dice + BCE, AdamW, poly schedule, batch 8). Each recipe trains once, in its own process with one
torch thread, for 60 minutes of *process CPU time* (``time.process_time``: the two recipes run
side by side on the two cores without counting each other's time). The schedule is fitted to the
hour: a short calibration measures the CPU seconds of an epoch and the run gets
``ceil(3600 / epoch_s)`` epochs. Every 5 CPU-minutes the weights are snapshotted; each snapshot is
scored afterwards on the fold's held-out slices with both protocols (``cv_common.score_run``).
So the 10- and 30-minute points are snapshots of the one-hour run (learning rate not yet decayed),
not runs scheduled for 10 or 30 minutes.

Usage::

    python bench/bench_compute_curve.py --fold 0            # both recipes, side by side
    python bench/bench_compute_curve.py --report            # table + figure from finished runs

Results: ``bench/results/compute_curve/<recipe>_fold<k>.json``, ``summary.md``, ``curve.png``.
Runs live in ``runs/bench/compute_curve/`` (not versioned).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cv_common import ROOT, machine, pooled, score_run

OUT = ROOT / "bench" / "results" / "compute_curve"
RUNS = ROOT / "runs" / "bench" / "compute_curve"
BUDGET_MIN = 60
SNAPSHOT_EVERY_MIN = 5
MARKS = (10, 30, 60)
CONFIG = "resunet_cosup_covid_semiseg"
COMMON = ["preprocess.size=[256,256]", "train.threads=1"]
MONAI_PARAMS = {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 3}
RECIPES: dict[str, list[str]] = {
    "resunet_all": [],
    # MONAI's UNet (2.41 M parameters) in the same recipe; it has no edge or auxiliary outputs.
    "monai_unet": ["model.name=monai_unet", "loss.aux_weight=0", "loss.edge_weight=0", "data.edges=false"],
}


class BudgetSpent(Exception):
    """Raised from the epoch callback when the CPU budget is used up."""


def recipe_config(recipe: str, fold: int, epochs: int):
    import yaml

    from covseg.training.config import apply_overrides, load_config, resolve_config_path

    raw = yaml.safe_load(resolve_config_path(CONFIG).read_text())
    raw = apply_overrides(raw, [*COMMON, *RECIPES[recipe], f"data.fold={fold}", f"train.epochs={epochs}", f"train.val_every={epochs + 1}"])
    if recipe == "monai_unet":
        raw["model"]["params"] = dict(MONAI_PARAMS)
    return load_config(raw=raw)


def epoch_cpu_seconds(recipe: str, fold: int, epochs: int = 3) -> float:
    """CPU seconds of one training epoch (median of ``epochs`` after one warm-up epoch)."""
    from covseg.training.trainer import build_trainer

    run = RUNS / f"{recipe}_fold{fold}_calibration"
    shutil.rmtree(run, ignore_errors=True)
    trainer = build_trainer(recipe_config(recipe, fold, 1000), run, quiet=True)
    trainer.setup()
    trainer.train_epoch(0, lambda info: None)
    times = []
    for epoch in range(1, epochs + 1):
        t0 = time.process_time()
        trainer.train_epoch(epoch, lambda info: None)
        times.append(time.process_time() - t0)
    shutil.rmtree(run, ignore_errors=True)
    return sorted(times)[len(times) // 2]


def train(recipe: str, fold: int) -> None:
    """Train one recipe for the CPU budget, snapshotting every few CPU-minutes, then score the snapshots."""
    import torch

    from covseg.training.trainer import build_trainer

    torch.set_num_threads(1)
    run = RUNS / f"{recipe}_fold{fold}"
    shutil.rmtree(run, ignore_errors=True)
    epoch_s = epoch_cpu_seconds(recipe, fold)
    epochs = math.ceil(BUDGET_MIN * 60 / epoch_s)
    print(f"[{recipe}] {epoch_s:.2f} CPU-s per epoch -> {epochs} epochs in {BUDGET_MIN} CPU-min", flush=True)
    snapshots: list[dict] = []
    start = {"cpu": 0.0}

    def on_epoch(trainer, event: str) -> None:
        if event != "epoch_end":
            return
        cpu_min = (time.process_time() - start["cpu"]) / 60
        due = (len(snapshots) + 1) * SNAPSHOT_EVERY_MIN
        last_epoch = len(trainer.history) == trainer.total_epochs
        if cpu_min >= due or cpu_min >= BUDGET_MIN or last_epoch:
            snap = run / "snapshots" / f"cpu{due:02d}"
            (snap / "checkpoints").mkdir(parents=True, exist_ok=True)
            for name in ("config.yaml", "model.json", "splits.json", "dataset.json", "history.csv"):
                shutil.copy2(run / name, snap / name)
            shutil.copy2(trainer.run.checkpoint("last"), snap / "checkpoints" / "last.pt")
            snapshots.append({"mark_min": due, "cpu_min": round(cpu_min, 2), "epochs": len(trainer.history), "dir": str(snap.relative_to(ROOT))})
            print(f"[{recipe}] snapshot at {cpu_min:.1f} CPU-min, epoch {len(trainer.history)}", flush=True)
        if cpu_min >= BUDGET_MIN:
            raise BudgetSpent

    trainer = build_trainer(recipe_config(recipe, fold, epochs), run, quiet=True, callbacks=[on_epoch])
    start["cpu"] = time.process_time()
    with contextlib.suppress(BudgetSpent):
        trainer.fit()
    points = []
    for snap in snapshots:
        scored = score_run(ROOT / snap["dir"])
        med, sod = scored["medical_records"], scored["sod_records"]
        point = {**snap, "dice@0.5": pooled(med, "dice")[0]}
        for m in ("mean_dice", "s_measure", "mae"):
            point[m] = pooled(sod, m)[0]
        points.append(point)
    result = {"recipe": recipe, "fold": fold, "config": CONFIG, "overrides": [*COMMON, *RECIPES[recipe]],
              "epoch_cpu_s": epoch_s, "scheduled_epochs": epochs, "points": points,
              "date": dt.date.today().isoformat(), "machine": machine()}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{recipe}_fold{fold}.json").write_text(json.dumps(result, indent=1))


def report() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [json.loads(f.read_text()) for f in sorted(OUT.glob("*_fold*.json"))]
    lines = ["| recipe | fold | CPU-s/epoch | " + " | ".join(f"{m} min: sod Dice / Dice@0.5 (epochs)" for m in MARKS) + " |",
             "|---|---|---|" + "---|" * len(MARKS)]
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        by_mark = {p["mark_min"]: p for p in r["points"]}
        cells = [f"{by_mark[m]['mean_dice']:.3f} / {by_mark[m]['dice@0.5']:.3f} ({by_mark[m]['epochs']})" if m in by_mark else "–" for m in MARKS]
        lines.append(f"| {r['recipe']} | {r['fold']} | {r['epoch_cpu_s']:.1f} | " + " | ".join(cells) + " |")
        ax.plot([p["cpu_min"] for p in r["points"]], [p["mean_dice"] for p in r["points"]], marker="o", label=f"{r['recipe']} (fold {r['fold']})")
    ax.set_xlabel("training CPU-minutes (one thread)")
    ax.set_ylabel("held-out sod mean Dice")
    ax.set_title("Accuracy per compute, COVID-SemiSeg")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "curve.png", dpi=110)
    (OUT / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--recipe", choices=sorted(RECIPES), help="train this recipe only (in this process)")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.report:
        report()
        return
    if args.recipe:
        train(args.recipe, args.fold)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COVSEG_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, "--recipe", r, "--fold", str(args.fold)], env=env) for r in RECIPES]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a recipe failed: exit codes {codes}")
    report()


if __name__ == "__main__":
    main()
