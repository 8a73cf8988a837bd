"""Do COVID-SemiSeg's 1,600 unlabelled slices look like its 50 labelled ones to a trained model?

Semi-Inf-Net's recipe (pseudo-label the unlabelled slices with a supervised model, pre-train on
them, fine-tune on the labels) needs pseudo labels worth learning from. This script compares the
two sets as the fold-0 100-epoch ResUNet of ``bench_covid_semiseg.py`` sees them: grey-level
statistics, and the fraction of pixels it calls infection (and how sure it is) on the fold's 10
held-out labelled slices against every 10th unlabelled slice of each source
(coronacases, radiopaedia). Writes
``bench/results/unlabeled_shift/summary.json`` and ``examples.png`` (unlabelled slices and the
model's maps).

Usage: ``python bench/bench_unlabeled_shift.py [--run RUN_DIR]`` (after the resunet_all_e100 folds).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from covseg.utils.paths import data_root
from cv_common import ROOT, machine

OUT = ROOT / "bench" / "results" / "unlabeled_shift"
SOURCES = ("coronacases", "radiopaedia")
DATA = data_root() / "covid_semiseg_infnet"


def describe(predictor, paths: list[Path], masks: Path | None = None) -> dict[str, float]:
    """Grey-level statistics of the slices and what the model predicts on them (and the truth, if known)."""
    from covseg.data.imageio import read_image, read_mask

    means, p95, fg, conf, truth = [], [], [], [], []
    for path in paths:
        if masks is not None:
            truth.append((read_mask(next(masks.glob(path.stem + ".*"))) > 0).mean())
        image = read_image(path, channels=1)
        probs = predictor.predict_image(image).probs
        means.append(image.mean())
        p95.append(np.percentile(image, 95))
        fg.append((probs > 0.5).mean())
        conf.append(np.abs(probs - 0.5).mean() * 2)  # 1 = every pixel at 0 or 1
    return {
        "slices": len(paths),
        "grey_mean": float(np.mean(means)),
        "grey_p95": float(np.mean(p95)),
        "predicted_infection_fraction": float(np.mean(fg)),
        "mean_confidence": float(np.mean(conf)),
        "true_infection_fraction": float(np.mean(truth)) if truth else None,
    }


def main() -> None:
    import torch

    from covseg.inference.predictor import Predictor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "bench" / "covid_semiseg" / "resunet_all_e100" / "fold0")
    args = ap.parse_args()
    torch.set_num_threads(1)
    predictor = Predictor.from_run(args.run, checkpoint="last")
    held_out = json.loads((args.run / "splits.json").read_text())["val"]
    labelled = sorted(p for p in (DATA / "train" / "images").iterdir() if p.stem in held_out)
    every_unlabelled = sorted((DATA / "unlabeled" / "images").iterdir())
    unlabelled = every_unlabelled[::10]
    summary = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "run": str(args.run.relative_to(ROOT) if args.run.is_relative_to(ROOT) else args.run),
        "unlabelled_slices_per_source": {source: sum(source in p.name for p in every_unlabelled) for source in SOURCES},
        "labelled_held_out": describe(predictor, labelled, DATA / "train" / "masks"),
        # the unlabelled folder mixes two sources, named in the file names
        **{f"unlabelled_{source}_every_10th": describe(predictor, [p for p in unlabelled if source in p.name]) for source in SOURCES},
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    _figure(predictor, labelled[:2], unlabelled[10::40][:4])


def _figure(predictor, labelled: list[Path], unlabelled: list[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from covseg.data.imageio import read_image

    paths = labelled + unlabelled
    fig, axes = plt.subplots(2, len(paths), figsize=(2.0 * len(paths), 4.2))
    for i, path in enumerate(paths):
        image = read_image(path, channels=1)
        axes[0, i].imshow(image, cmap="gray", vmin=0, vmax=255)
        axes[0, i].set_title(("labelled " if i < len(labelled) else "unlabelled ") + path.stem[-12:], fontsize=6)
        axes[1, i].imshow(predictor.predict_image(image).probs, vmin=0, vmax=1)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("fold-0 ResUNet (100 epochs): slices (top) and its infection maps (bottom)", fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "examples.png", dpi=50)


if __name__ == "__main__":
    main()
