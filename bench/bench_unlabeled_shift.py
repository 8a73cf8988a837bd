"""Do COVID-SemiSeg's 1,600 unlabelled slices look like its 50 labelled ones, before and after standardisation?

Semi-Inf-Net's recipe (pseudo-label the unlabelled slices with a supervised model, pre-train on
them, fine-tune on the labels) needs pseudo labels worth learning from; 1,119 of the slices
(``coronacases``) are in another CT window. Two parts:

* **Shift** (no model; always run): each source's grey levels inside the body (``body_mask``)
  against the labelled slices, with no standardisation and with each ``semi.unlabeled.standardize``
  option (the reference learned, as a fold-0 run learns it, from fold 0's 40 labelled training
  slices; labelled slices are never changed): the 1-D Wasserstein distance and the Jensen–Shannon
  distance (base 2, 32 bins) of the pooled histograms, and how well a classifier tells the sources
  apart (logistic regression on each slice's 32-bin histogram, 5-fold stratified cross-validated
  ROC AUC: 0.5 = indistinguishable). As a control, the labelled slices themselves mapped onto the
  reference (each slice its own group) against the labelled slices as read: what the mapping alone
  leaves for the classifier to find. Writes ``shift.json`` and ``histograms.png``.
* **Model** (``--run``, when that run exists): the fold-0 100-epoch ResUNet of
  ``bench_covid_semiseg.py`` on every 10th unlabelled slice of each source against the fold's held-out
  labelled slices: grey-level statistics, the fraction it calls infection and how sure it is.
  Writes ``summary.json`` and ``examples.png``.

Usage: ``python bench/bench_unlabeled_shift.py [--run RUN_DIR]``.
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


CONDITIONS = {  # name -> (semi.unlabeled.standardize, standardize_per)
    "none": ("none", "volume"),
    "percentile_volume": ("percentile", "volume"),
    "histogram_volume": ("histogram", "volume"),
    "histogram_slice": ("histogram", "slice"),
}
BINS = 32


def _slice_histogram(image: np.ndarray, bins: int) -> np.ndarray:
    """Grey-level histogram (counts over 0..255) of one slice inside its body."""
    from covseg.transforms.standardize import body_mask, grey

    g = grey(image)
    return np.histogram(g[body_mask(g)], bins=bins, range=(0.0, 256.0))[0].astype(np.float64)


def _source_histograms(paths: list[Path], reference, per: str) -> np.ndarray:
    """256-bin histograms ``(slices, 256)`` of the slices, standardised onto ``reference`` (``None``: as read)."""
    from covseg.data.imageio import read_image
    from covseg.transforms.standardize import apply_reference, source_landmarks, volume_key

    groups: dict[str, list[Path]] = {}
    for path in paths:
        groups.setdefault(volume_key(path.stem) if per == "volume" else path.stem, []).append(path)
    rows = {}
    for members in groups.values():
        images = [read_image(p) for p in members]
        if reference is not None:
            source = source_landmarks(images, reference)
            images = [apply_reference(im, source, reference) for im in images]
        rows.update({p: _slice_histogram(im, 256) for p, im in zip(members, images)})
    return np.vstack([rows[p] for p in paths])


def _distances(labelled: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Wasserstein (grey levels) and Jensen–Shannon (base 2, 32 bins) distance of two pooled histograms."""
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import wasserstein_distance

    a, b = labelled.sum(axis=0), other.sum(axis=0)
    centres = np.arange(256) + 0.5
    coarse = lambda h: h.reshape(BINS, -1).sum(axis=1)  # noqa: E731
    return {
        "wasserstein_grey_levels": float(wasserstein_distance(centres, centres, a, b)),
        "jensen_shannon_32bins": float(jensenshannon(coarse(a), coarse(b), base=2)),
    }


def _separability(labelled: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """5-fold stratified cross-validated ROC AUC of a logistic regression telling the slices' 32-bin
    histograms (fractions of the body) of the two sets apart: 0.5 = indistinguishable, 1 = always told."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def features(h):
        coarse = h.reshape(len(h), BINS, -1).sum(axis=2)
        return coarse / coarse.sum(axis=1, keepdims=True)

    x = np.vstack([features(labelled), features(other)])
    y = np.r_[np.zeros(len(labelled)), np.ones(len(other))]
    aucs, scores = [], np.zeros(len(y))
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(x, y):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced"))
        clf.fit(x[train], y[train])
        scores[test] = clf.predict_proba(x[test])[:, 1]
        aucs.append(roc_auc_score(y[test], scores[test]))
    return {"auc_mean_of_folds": float(np.mean(aucs)), "auc_std_of_folds": float(np.std(aucs)), "auc_pooled": float(roc_auc_score(y, scores))}


def measure_shift() -> dict:
    """Distances and separability of each source against the labelled slices, per standardisation."""
    from covseg.data.imageio import read_image
    from covseg.training.data import kfold_split
    from covseg.transforms.standardize import learn_reference

    labelled_paths = sorted((DATA / "train" / "images").iterdir())
    fold0_train, _ = kfold_split([p.stem for p in labelled_paths], 5, 0)
    reference_paths = [p for p in labelled_paths if p.stem in set(fold0_train)]
    unlabelled = sorted((DATA / "unlabeled" / "images").iterdir())
    sources = {source: [p for p in unlabelled if source in p.name] for source in SOURCES}
    labelled = _source_histograms(labelled_paths, None, "slice")
    result: dict = {"labelled_slices": len(labelled_paths), "reference_slices": len(reference_paths),
                    "slices": {s: len(p) for s, p in sources.items()}, "conditions": {}}
    histograms = {"labelled": labelled.sum(axis=0)}
    for name, (method, per) in CONDITIONS.items():
        reference = None if method == "none" else learn_reference((read_image(p) for p in reference_paths), method)
        rows = {}
        for source, paths in sources.items():
            h = _source_histograms(paths, reference, per)
            histograms[f"{source}/{name}"] = h.sum(axis=0)
            centres = np.arange(256) + 0.5
            rows[source] = {"grey_mean_in_body": float((h.sum(axis=0) * centres).sum() / h.sum()),
                            **_distances(labelled, h), **_separability(labelled, h)}
            print(f"{name:18s} {source:12s} " + " ".join(f"{k} {v:.3f}" for k, v in rows[source].items()), flush=True)
        if reference is not None:  # control: the labelled slices themselves mapped (one slice, one mapping)
            h = _source_histograms(labelled_paths, reference, "slice")
            rows["labelled_itself_mapped"] = {**_distances(labelled, h), **_separability(labelled, h)}
            print(f"{name:18s} labelled itself " + " ".join(f"{k} {v:.3f}" for k, v in rows["labelled_itself_mapped"].items()), flush=True)
        result["conditions"][name] = {"standardize": method, "per": per, **rows}
        if reference is not None:
            result["conditions"][name]["reference"] = reference.to_dict()
    result["labelled_grey_mean_in_body"] = float((labelled.sum(axis=0) * (np.arange(256) + 0.5)).sum() / labelled.sum())
    _histogram_figure(histograms)
    return result


def _histogram_figure(histograms: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CONDITIONS), figsize=(3.0 * len(CONDITIONS), 2.6), sharey=True)
    density = lambda h: h.reshape(64, -1).sum(axis=1) / h.sum()  # noqa: E731
    x = np.arange(64) * 4 + 2
    for ax, name in zip(axes, CONDITIONS):
        ax.plot(x, density(histograms["labelled"]), c="k", lw=1.5, label="labelled (50)")
        for source, colour in zip(SOURCES, ("tab:red", "tab:blue")):
            ax.plot(x, density(histograms[f"{source}/{name}"]), c=colour, lw=1, label=source)
        ax.set_title(name.replace("_", " per "), fontsize=8)
        ax.set_xlabel("grey level (inside the body)", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0].legend(fontsize=6)
    fig.suptitle("COVID-SemiSeg grey levels: labelled vs unlabelled sources, by standardisation", fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "histograms.png", dpi=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "bench" / "covid_semiseg" / "resunet_all_e100" / "fold0")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    shift = {"date": dt.date.today().isoformat(), "machine": machine(), **measure_shift()}
    (OUT / "shift.json").write_text(json.dumps(shift, indent=1))
    if not (args.run / "checkpoints" / "last.pt").exists():
        print(f"no trained run at {args.run}: the model part is skipped (the shift part needs none)")
        return
    model_part(args.run)


def model_part(run: Path) -> None:
    """What the trained run predicts on held-out labelled slices against each unlabelled source."""
    import torch

    from covseg.inference.predictor import Predictor

    torch.set_num_threads(1)
    predictor = Predictor.from_run(run, checkpoint="last")
    held_out = json.loads((run / "splits.json").read_text())["val"]
    labelled = sorted(p for p in (DATA / "train" / "images").iterdir() if p.stem in held_out)
    every_unlabelled = sorted((DATA / "unlabeled" / "images").iterdir())
    unlabelled = every_unlabelled[::10]
    summary = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "run": str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run),
        "unlabelled_slices_per_source": {source: sum(source in p.name for p in every_unlabelled) for source in SOURCES},
        "labelled_held_out": describe(predictor, labelled, DATA / "train" / "masks"),
        # the unlabelled folder mixes two sources, named in the file names
        **{f"unlabelled_{source}_every_10th": describe(predictor, [p for p in unlabelled if source in p.name]) for source in SOURCES},
    }
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
