"""Shared machinery of the cross-validation benchmarks: run a fold, score its held-out cases.

Each (variant, fold) trains with ``covseg train`` in its own process (one thread, so two run
side by side on two cores), then the *last* checkpoint (a fixed schedule, no epoch picked on
the held-out fold) predicts the fold's validation cases at their original size, and both
protocols score them. Results go to one JSON per fold; finished folds are skipped, so a
benchmark can be stopped and restarted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def train_fold(config: str, overrides: list[str], run_dir: Path, fold: int, log: Path) -> float:
    """Train one fold in a subprocess; returns wall seconds."""
    cmd = [sys.executable, "-m", "covseg.cli.main", "train", "--config", config, "--fold", str(fold),
           "--output", str(run_dir), "--quiet", *overrides]
    if (run_dir / "checkpoints" / "last.pt").exists():
        cmd.append("--resume")
    env = {**os.environ, "COVSEG_THREADS": os.environ.get("COVSEG_THREADS", "1"), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"training failed ({proc.returncode}); see {log}")
    return time.perf_counter() - t0


def score_run(run_dir: Path | list[Path], num_classes: int = 1, tta_flip: bool = False, cases: str = "val") -> dict[str, Any]:
    """Predict the run's validation cases with its last checkpoint and score both protocols.

    Several run folders of the same fold are scored as one ensemble (their soft maps averaged).
    ``cases="unused"`` scores instead the labelled cases a ``data.limit`` run neither trained nor
    validated on (30 a fold at 10 labels): held out as much as the validation cases, 4x as many.
    """
    import torch

    from covseg.data import load_sample
    from covseg.inference.loading import load_predictors
    from covseg.metrics.medical import MedicalMetrics
    from covseg.metrics.sod import SodMetrics
    from covseg.training.config import load_config
    from covseg.training.data import open_records

    torch.set_num_threads(1)
    run_dirs = run_dir if isinstance(run_dir, list) else [run_dir]
    cfg = load_config(run_dirs[0] / "config.yaml")
    splits = json.loads((run_dirs[0] / "splits.json").read_text())
    for other in run_dirs[1:]:
        if json.loads((other / "splits.json").read_text())["val"] != splits["val"]:
            raise RuntimeError(f"{other} holds out other cases than {run_dirs[0]}")
    records = {r.case_id: r for r in open_records(cfg.data.root, cfg.data.layout, cfg.data.split)}
    predictor = load_predictors(run_dirs, checkpoint="last")
    fg_classes = 1 if num_classes == 1 else num_classes - 1
    medical = MedicalMetrics(num_classes=fg_classes, empty="one")
    sod = SodMetrics() if num_classes == 1 else None
    per_case = []
    if cases == "val":
        case_ids = list(splits["val"])
    elif cases == "unused":
        seen = set(splits["train"]) | set(splits["val"])
        case_ids = [c for c in records if c not in seen]
    else:
        raise ValueError(f"cases must be 'val' or 'unused', got {cases!r}")
    for case_id in case_ids:
        sample = load_sample(records[case_id])
        gt = sample.masks["multiclass"] if cfg.data.mask == "multiclass" else sample.mask
        if num_classes == 1:
            gt = (gt > 0).astype(np.uint8)
        probs = predictor.predict_image(sample.image, tta_flip=tta_flip).probs
        medical.update(probs, gt, case_id=case_id)
        if sod is not None:
            sod.update(probs, gt, case_id=case_id)
        per_case.append(case_id)
    import csv

    history = []
    for d in run_dirs:  # an ensemble costs the training time of all its members
        with (d / "history.csv").open(newline="") as f:
            history += list(csv.DictReader(f))
    train_s = sum(float(r["time_s"]) for r in history)
    # CPU seconds per epoch (history.csv's cpu_s, recorded since 2026-12-06; None for older runs)
    cpu = [r.get("cpu_s") for r in history]
    train_cpu_s = sum(float(c) for c in cpu) if cpu and all(c not in (None, "") for c in cpu) else None
    return {
        "train_cpu_seconds": train_cpu_s,
        "cases": per_case,
        "medical_records": medical.per_case(),
        "sod_records": sod.per_case() if sod is not None else [],
        "train_seconds": train_s,
        "epochs": len(history) // len(run_dirs),
    }


def run_jobs(jobs: list[tuple[str, int, Any]], worker, parallel: int) -> None:
    """Run ``worker(variant, fold, spec)`` for each job, ``parallel`` at a time, reporting as they end."""
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {pool.submit(worker, v, f, s): (v, f) for v, f, s in jobs}
        for fut, (v, f) in futures.items():
            try:
                fut.result()
            except Exception as exc:  # one failed fold must not stop the others
                print(f"[{v} fold {f}] FAILED: {exc}", flush=True)


def pooled(records: list[dict[str, Any]], metric: str) -> tuple[float, float]:
    """Mean and std of a metric over every held-out case of every fold (NaN left out)."""
    vals = np.array([float(r[metric]) for r in records if r.get(metric) is not None], dtype=float)
    vals = vals[np.isfinite(vals)]
    return (float(vals.mean()), float(vals.std(ddof=1))) if vals.size else (float("nan"), float("nan"))


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (else what ``platform`` knows)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    import platform

    text = f"{os.cpu_count()} cores ({cpu_name()}), {platform.system()} {platform.machine()}, Python {platform.python_version()}"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text
