"""Pseudo-labelling a folder of unlabelled images (Semi-Inf-Net's data step).

The output is an ordinary dataset folder (``images/ masks/ edges/``) that any trainer reads,
plus ``confidence.csv``: per image, 1 − the mean normalised entropy of the predicted
probabilities (1 = every pixel predicted with certainty, 0 = every pixel at p = 0.5).
Images are hard-linked (or copied) into ``images/``; the inputs are never modified.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from covseg.errors import DataError
from covseg.inference.batch import (
    BatchReport,
    EarlierIndex,
    distinct_stems,
    for_each_file,
    run_dirs_of,
    write_index,
)
from covseg.inference.options import PredictOptions
from covseg.inference.predictor import BasePredictor
from covseg.utils.atomic import atomic_path
from covseg.utils.outputs import OutputFolder


def prediction_confidence(probs: np.ndarray) -> float:
    """1 − mean normalised entropy of a binary ``(H, W)`` or K-class ``(K, H, W)`` probability map."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 2:
        p = np.stack([1.0 - p, p])
    p = np.clip(p, 1e-8, 1.0)
    entropy = -(p * np.log(p)).sum(axis=0)
    return float(1.0 - entropy.mean() / math.log(p.shape[0]))


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link (or copy) ``src`` to ``dst`` atomically; nothing to do where ``dst`` already is ``src``'s file."""
    if dst.exists() and os.path.samefile(src, dst):
        return
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def pseudo_label_files(
    predictor: BasePredictor,
    files: list[Path],
    out_dir: Path,
    tta_flip: bool = False,
    edge_width: int = 1,
    strict: bool = False,
    on_done: Callable[[], None] | None = None,
    extra_for: Callable[[Path], dict] | None = None,
) -> BatchReport:
    """Write ``images/``, ``masks/``, ``edges/`` and ``confidence.csv`` for each readable image.

    ``extra_for(path)`` gives a file's model inputs beside the image (its text, for text-guided runs).
    The folder is locked while it is written; a second run into it keeps the earlier rows of
    ``confidence.csv`` for the cases it did not redo.
    """
    folder = OutputFolder(
        out_dir, "pseudo-label", [*files, *run_dirs_of(predictor)],
        owned=("images", "masks", "edges", "confidence.csv", "failed.txt"), legacy=("confidence.csv",),
    )
    folder.validate()
    with folder.lock():
        folder.prepare()
        earlier = EarlierIndex(out_dir, "confidence.csv", key=lambda row: str(row.get("case_id", "")))
        return _pseudo_label_all(predictor, files, folder, earlier, tta_flip, edge_width, strict, on_done, extra_for)


def _pseudo_label_all(
    predictor: BasePredictor, files: list[Path], folder: OutputFolder, earlier: EarlierIndex, tta_flip: bool,
    edge_width: int, strict: bool, on_done: Callable[[], None] | None, extra_for: Callable[[Path], dict] | None,
) -> BatchReport:
    from covseg.data.imageio import is_volume, read_image, stem_of, write_mask
    from covseg.transforms.edges import mask_to_edge

    out_dir = folder.path
    all_files = list(files)
    files, clashes = distinct_stems(files)
    if clashes and strict:
        raise DataError(clashes[0][1], clashes[0][0])

    def work(path: Path) -> dict:
        if is_volume(path):
            raise DataError("pseudo-label writes 2D image/mask pairs and takes no volumes; cut it into slices first "
                            "(covseg data convert VOLUME DIR --to folder)", path)
        extra = extra_for(path) if extra_for else {}
        stem = stem_of(path)
        targets = [folder.check(t) for t in (out_dir / "images" / path.name, out_dir / "masks" / f"{stem}.png", out_dir / "edges" / f"{stem}.png")]
        image = read_image(path)
        pred = predictor.predict_array(image, options=PredictOptions(tta=tta_flip), **extra)
        _link_or_copy(path, targets[0])
        write_mask(targets[1], pred.labels, scale_binary=predictor.num_classes == 1)
        binary = (pred.labels > 0).astype(np.uint8)
        write_mask(targets[2], mask_to_edge(binary, width=edge_width))
        return {
            "case_id": stem,
            "image": path.name,
            "confidence": prediction_confidence(pred.probs),
            "foreground_fraction": float(binary.mean()),
        }

    report = for_each_file(files, work, strict, on_done)
    report.failed = clashes + report.failed
    rows, failed = earlier.merge(report, all_files)
    write_index(out_dir, "confidence.csv", rows, ["case_id", "image", "confidence", "foreground_fraction"], failed, float_format=".6f")
    return report
