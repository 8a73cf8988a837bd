"""``jcs`` side by side: the default (compact) variant against JCS as published (``--variant paper``), on phantoms.

Both variants train with the same data, seed, optimiser and epochs on synthetic slices (half lesion-free)
and are tested on new ones: Dice at 0.5 on the lesion slices, the background-inclusive mIoU JCS reports
(all slices), slice-level AUC, patient-level AUC / sensitivity / specificity, parameters, training seconds.
Phantoms have no patients, so the bench makes them: half the lesion-free test slices go two to a healthy
patient, every other test slice (one lesion slice with one lesion-free slice, where one is left) to an
infected patient. The paper variant uses small resnet backbones for
both branches here (CPU time); the shipped ``jcs_paper`` config uses the pretrained efficientnet-lite0 as
classification backbone.

Usage (tiny size; the machine's CPUs are shared)::

    python bench/bench_jcs_paper.py --variant default --variant paper --size 64 --epochs 15

Results: ``bench/results/jcs_paper/<size>px_<epochs>ep.json``; runs in ``runs/bench/jcs_paper/`` (not versioned).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "jcs_paper"
RUNS = ROOT / "runs" / "bench" / "jcs_paper"

WIDTHS = {"widths": [8, 16, 32, 64, 128]}
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {"encoder_kwargs": WIDTHS, "decoder_widths": [64, 32, 16, 8]},
    "paper": {
        "encoder_kwargs": WIDTHS, "decoder_widths": [64, 32, 16, 8], "efm": True, "aff": True, "deep_supervision": True,
        "dual_backbone": True, "classification_encoder": "resnet", "classification_encoder_kwargs": WIDTHS,
    },
}


def config(variant: str, data: Path, size: int, epochs: int) -> dict[str, Any]:
    terms: dict[str, Any] = {"seg": {"loss": "dice_bce", "params": {"batch": True}}, "cls": {"loss": "class_ce", "weight": 0.5}}
    if VARIANTS[variant].get("deep_supervision"):
        terms["aux"] = {"loss": "dice_bce", "params": {"batch": True}}
    return {
        "name": f"jcs_{variant}",
        "data": {"root": str(data), "folds": 4, "fold": 0, "labels": str(data / "labels.csv")},
        "preprocess": {"size": [size, size]},
        "augment": {"hflip": 0.5},
        "model": {"name": "jcs", "params": VARIANTS[variant]},
        "loss": {"terms": terms},
        "optim": {"lr": 5e-3},
        "train": {"epochs": epochs, "batch_size": 8, "threads": 1, "val_every": epochs, "seed": 0},
    }


def make_patients(labels: list[int]) -> list[str]:
    """Patient ids for the test slices (module docstring): healthy pairs of negatives, infected lesion+negative pairs."""
    negatives = [i for i, y in enumerate(labels) if not y]
    positives = [i for i, y in enumerate(labels) if y]
    healthy, rest = negatives[: len(negatives) // 2], negatives[len(negatives) // 2 :]
    patients = [""] * len(labels)
    for k, i in enumerate(healthy):
        patients[i] = f"healthy{k // 2}"
    for k, i in enumerate(positives):
        patients[i] = f"infected{k}"
    for k, i in enumerate(rest):
        patients[i] = f"infected{k % max(1, len(positives))}" if positives else f"healthy_rest{k}"
    return patients


def score(run_dir: Path, fresh: Path) -> dict[str, Any]:
    """Dice, mIoU, slice- and patient-level classification of a run on the fresh phantoms."""
    from covseg.data.imageio import read_image, read_mask
    from covseg.inference.predictor import Predictor
    from covseg.metrics.classification import classification_metrics, patient_level_metrics
    from covseg.metrics.overlap import overlap_metrics

    predictor = Predictor.from_run(run_dir, "last")
    labels, probs, dice, miou = [], [], [], []
    for path in sorted((fresh / "images").iterdir()):
        image, mask = read_image(path), read_mask(fresh / "masks" / path.name) > 0
        pred = predictor.predict_image(image)
        scores = overlap_metrics(pred.labels > 0, mask)
        miou.append(scores["miou"])
        if mask.any():
            dice.append(scores["dice"])
        labels.append(int(mask.any()))
        probs.append(pred.class_probs)
    p = np.stack(probs)
    patients = make_patients(labels)
    patient = patient_level_metrics(patients, labels, p)
    return {
        "dice_lesion_slices": float(np.mean(dice)),
        "miou_all_slices": float(np.nanmean(miou)),
        "slice_auc": classification_metrics(labels, p)["metrics"]["auc"],
        "patient": {k: patient["metrics"][k] for k in ("auc", "sensitivity", "specificity")},
        "patients": patient["num_patients"],
        "parameters": sum(t.numel() for t in predictor.model.parameters()),
    }


def main(argv: list[str] | None = None) -> None:
    import torch

    from covseg.data.synthetic import write_phantom_dataset
    from covseg.training.config import load_config
    from covseg.training.trainer import build_trainer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="repeat for several (default: both)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--train", type=int, default=48, help="training + validation phantoms")
    parser.add_argument("--test", type=int, default=40)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work = RUNS / f"{args.size}px"
    data = write_phantom_dataset(work / "data", n=args.train, size=args.size, seed=3, negatives=0.5) \
        if not (work / "data" / "images").is_dir() else work / "data"
    fresh = write_phantom_dataset(work / "fresh", n=args.test, size=args.size, seed=11, negatives=0.5, edges=False) \
        if not (work / "fresh" / "images").is_dir() else work / "fresh"
    results: dict[str, Any] = {"size": args.size, "epochs": args.epochs, "train_phantoms": args.train,
                               "test_phantoms": args.test, "variants": {}}
    for variant in args.variant or sorted(VARIANTS):
        run_dir = work / f"{variant}_{args.epochs}ep"
        t0 = time.perf_counter()
        build_trainer(load_config(raw=config(variant, data, args.size, args.epochs)), _fresh(run_dir), quiet=True).fit()
        row = score(run_dir, fresh)
        row["train_seconds"] = time.perf_counter() - t0
        results["variants"][variant] = row
        print(variant, json.dumps(row), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.size}px_{args.epochs}ep.json").write_text(json.dumps(results, indent=1))


def _fresh(run_dir: Path) -> Path:
    """The run folder, emptied of an earlier bench run (only ever under ``runs/bench/``)."""
    import shutil

    if run_dir.exists() and RUNS in run_dir.parents:
        shutil.rmtree(run_dir)
    return run_dir


if __name__ == "__main__":
    sys.exit(main())
