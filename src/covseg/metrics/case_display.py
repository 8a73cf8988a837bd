"""A scored case as the report shows it: image, ground truth and the prediction binarised as it was scored."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from covseg.data.formats import suffixes
from covseg.data.imageio import read_volume, suffix_of
from covseg.errors import DataError
from covseg.metrics._arrays import prediction_labels
from covseg.metrics.base import MetricAccumulator
from covseg.metrics.cases import Case, load_case
from covseg.metrics.sod import SodMetrics, prepare_sod_inputs


class ScoredRun(Protocol):
    """What the display needs of an :class:`covseg.metrics.evaluation.EvaluationRun`: its accumulator."""

    accumulator: MetricAccumulator


def reads_gt_as_toolbox(accumulator: MetricAccumulator) -> bool:
    """True when ground-truth files are binarised as the MATLAB toolbox does (``--toolbox matlab*``)."""
    return isinstance(accumulator, SodMetrics) and accumulator.matlab


def case_display_arrays(case: Case, run: ScoredRun) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, str]:
    """``(image or None, gt mask, predicted mask, note)`` of one scored case, 2D (3D: the slice with most gt).

    The prediction is binarised as the protocol scored it (medical: threshold / argmax;
    sod: min-max normalised map >= 0.5, for display only).
    """
    return case_display_arrays_nd(case, run, flatten=True)


def case_display_arrays_nd(
    case: Case, run: ScoredRun, flatten: bool = False
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, str]:
    """As :func:`case_display_arrays`; ``flatten`` False keeps a volume whole (the report's slice scroller)."""
    acc = run.accumulator
    num_classes = getattr(acc, "num_classes", 1)
    pred_type = getattr(acc, "pred_type", "auto")
    loaded = load_case(
        case,
        protocol=acc.protocol,
        num_classes=num_classes,
        pred_type=pred_type,
        toolbox_gt=reads_gt_as_toolbox(acc),
    )
    gt = loaded.gt
    if acc.protocol == "sod":
        p, _ = prepare_sod_inputs(loaded.pred, gt)
        pred = (p >= 0.5).astype(np.uint8)
        note = "prediction shown at min-max normalised p >= 0.5"
    else:
        pred = prediction_labels(
            loaded.pred,
            gt.shape,
            num_classes=num_classes,
            threshold=acc.threshold,
            pred_type=pred_type,  # type: ignore[attr-defined]
        )
        note = ""
    image = _read_display_image(case.image_path, gt.shape) if case.image_path else None
    # a volume flattened: three axial slices side by side, the most ground truth and halfway to either end of it
    if gt.ndim == 3 and flatten:
        area = (gt > 0).sum(axis=(0, 1)) + (pred > 0).sum(axis=(0, 1)) * 1e-6
        z = int(np.argmax(area))
        lit = np.flatnonzero(area > 0)
        lo, hi = (int(lit[0]), int(lit[-1])) if lit.size else (0, gt.shape[2] - 1)
        zs = sorted({(lo + z) // 2, z, (z + hi + 1) // 2})
        picked = f"slices {', '.join(map(str, zs))} of {gt.shape[2]} (middle: most ground truth)"
        note = f"{note}; {picked}" if note else picked
        has_image = image is not None and image.ndim == 3
        gt = np.concatenate([np.rot90(gt[:, :, k]) for k in zs], axis=1)
        pred = np.concatenate([np.rot90(pred[:, :, k]) for k in zs], axis=1)
        image = np.concatenate([np.rot90(image[:, :, k]) for k in zs], axis=1) if has_image else None
    return image, gt, pred, note


def _read_display_image(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The case's image for an overlay, resized to the mask's shape; None when it cannot be used."""
    from covseg.data.imageio import read_image

    try:
        if suffix_of(path) in suffixes("volume"):
            arr = read_volume(path)[0]
            return arr if arr.shape == tuple(shape) else None
        arr = read_image(path)
    except DataError:
        return None
    if arr.shape[:2] == tuple(shape):
        return arr
    if len(shape) != 2:
        return None
    from PIL import Image

    chans = [arr] if arr.ndim == 2 else [arr[..., i] for i in range(arr.shape[-1])]
    resized = [
        np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((shape[1], shape[0])))
        for c in chans
    ]
    return resized[0] if arr.ndim == 2 else np.stack(resized, axis=-1)
