"""Case files of ``covseg evaluate``: pair predictions with ground truth by stem, read them, fit shapes.

Predictions: PNG/JPG/TIFF/BMP soft maps (0..255 or 0..65535) or masks (palette, 1-bit, 0/1, 0/255),
``.npy`` soft maps or label maps (``(H, W)``, ``(C, H, W)`` probabilities, or 3D), NIfTI soft maps
or label maps. Ground truth: a folder of masks, or a dataset folder with a ``masks/`` subfolder
(its ``images/`` subfolder is then used for overlays unless ``images_dir`` is given).

A 2D prediction whose size differs from its ground truth is resized to the ground truth's size
(soft maps and probability channels bilinearly, masks by nearest neighbour) and the case records
``resized_from``; 3D predictions are never resampled (a shape mismatch there is a bad case).
Every problem is a ``DataError`` naming the file at fault; :mod:`covseg.metrics.evaluation`
scores the cases and writes the outputs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covseg.data.formats import format_of, suffixes
from covseg.data.imageio import IMAGE_SUFFIXES, read_volume, stem_of, suffix_of
from covseg.errors import DataError
from covseg.metrics._arrays import (
    PredType,
    gt_labels,
    guess_pred_type,
    prediction_labels,
    soft_map,
    soft_map_divisor,
)

# Derived from the FILE_FORMATS registry (built-ins at import); the pairing below asks the
# registry again, so a format registered later is paired too.
VOLUME_SUFFIXES: tuple[str, ...] = suffixes("volume")
FILE_SUFFIXES: tuple[str, ...] = suffixes(listed=True)


@dataclass(frozen=True)
class Case:
    """One prediction / ground-truth pair (and the image, when known); ``pred_path`` None: scored as empty."""

    case_id: str
    pred_path: Path | None
    gt_path: Path
    image_path: Path | None = None


@dataclass(frozen=True)
class BadCase:
    """A case that could not be scored: the file to look at and why.

    ``kind``: ``"bad"`` (unreadable or unusable), ``"no_prediction"`` (a ground-truth case nobody
    predicted) or ``"no_ground_truth"`` (an extra prediction: listed, but no failure).
    """

    path: str
    problem: str
    kind: str = "bad"

    @property
    def is_failure(self) -> bool:
        """True when a ground-truth case went unscored (the command then exits non-zero)."""
        return self.kind != "no_ground_truth"

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass
class LoadedCase:
    """Arrays ready for an accumulator: prediction at the ground truth's shape, labels, spacing."""

    pred: np.ndarray
    gt: np.ndarray
    spacing: tuple[float, ...] | None
    resized_from: tuple[int, ...] | None = None
    #: the ground truth was read with the MATLAB toolbox's rule and differs from covseg's (non-zero) reading
    toolbox_gt_differs: bool = False
    #: one voxel in ml from the ground truth's affine (|det|; NIfTI only), right on sheared grids
    voxel_ml: float | None = None


# ------------------------------------------------------------------------------------------ pairing
def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``2`` before ``10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _files_by_stem(folder: Path, suffixes: Sequence[str]) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or suffix_of(path) not in suffixes:
            continue
        found.setdefault(stem_of(path), []).append(path)
    return found


def resolve_gt_folder(gt_dir: Path) -> tuple[Path, Path | None]:
    """``(mask folder, image folder or None)`` for a mask folder or a dataset folder with ``masks/``."""
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise DataError("ground-truth folder not found", gt_dir)
    if (gt_dir / "masks").is_dir():
        images = gt_dir / "images"
        return gt_dir / "masks", images if images.is_dir() else None
    return gt_dir, None


def resolve_prediction_folder(pred_dir: Path) -> Path:
    """The folder of predictions inside ``pred_dir`` when it is a ``covseg predict`` output folder.

    ``covseg predict -o OUT`` writes ``OUT/probs`` (soft maps) and ``OUT/masks`` beside
    ``predictions.csv``; given ``OUT`` itself, evaluation reads ``probs`` (``masks`` when the run
    wrote no soft maps). Any other folder is returned unchanged.
    """
    pred_dir = Path(pred_dir)
    if not (pred_dir / "predictions.csv").is_file() or _files_by_stem(pred_dir, suffixes(listed=True)):
        return pred_dir
    for sub in ("probs", "masks"):
        if (pred_dir / sub).is_dir() and _files_by_stem(pred_dir / sub, suffixes(listed=True)):
            return pred_dir / sub
    return pred_dir


def pair_cases(
    pred_dir: Path, gt_dir: Path, images_dir: Path | None = None, missing: str = "error"
) -> tuple[list[Case], list[BadCase], Path | None]:
    """Pair predictions and ground truth by file stem.

    Returns the pairs (natural order of stems), the bad ones (missing partner, ambiguous stem) and
    the image folder used for overlays. ``missing="empty"`` pairs a ground-truth case that has no
    prediction with an empty one instead of listing it.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError("prediction folder not found", pred_dir)
    if missing not in ("error", "empty"):
        raise DataError(f"missing must be 'error' or 'empty', got {missing!r}")
    mask_dir, dataset_images = resolve_gt_folder(gt_dir)
    if pred_dir.resolve() in (mask_dir.resolve(), Path(gt_dir).resolve()):
        raise DataError(
            "the prediction folder is the ground-truth folder; give the folder of predictions", pred_dir
        )
    if images_dir is not None and not Path(images_dir).is_dir():
        raise DataError("image folder not found", images_dir)
    image_folder = Path(images_dir) if images_dir is not None else dataset_images
    preds = _files_by_stem(pred_dir, suffixes(listed=True))
    gts = _files_by_stem(mask_dir, suffixes(listed=True))
    for stem in [s for s in preds if s not in gts]:  # nnU-Net / FLARE input names: case_0000 predicts case
        base = re.sub(r"_\d{4}$", "", stem)
        if base != stem and base in gts and base not in preds:
            preds[base] = preds.pop(stem)
    images = _files_by_stem(image_folder, suffixes("image", "volume")) if image_folder else {}
    cases: list[Case] = []
    bad: list[BadCase] = []
    for stem in sorted(set(preds) | set(gts), key=natural_key):
        p, g = preds.get(stem, []), gts.get(stem, [])
        if len(p) > 1:
            bad.append(
                BadCase(str(p[0]), f"several predictions share the stem {stem!r}: {[x.name for x in p]}")
            )
        elif len(g) > 1:
            bad.append(
                BadCase(
                    str(g[0]), f"several ground-truth files share the stem {stem!r}: {[x.name for x in g]}"
                )
            )
        elif not p and missing == "empty":
            cases.append(Case(stem, None, g[0], images.get(stem, [None])[0]))
        elif not p:
            bad.append(BadCase(str(g[0]), f"no prediction with this stem in {pred_dir}", "no_prediction"))
        elif not g:
            bad.append(BadCase(str(p[0]), f"no ground truth with this stem in {mask_dir}", "no_ground_truth"))
        else:
            img = images.get(stem, [None])[0]
            cases.append(Case(stem, p[0], g[0], img))
    return cases, bad, image_folder


# ------------------------------------------------------------------------------------------ reading
def read_prediction(path: Path) -> tuple[np.ndarray, bool]:
    """Raw prediction array and whether the file format says it is a mask (palette or 1-bit image).

    Colour images give their first channel (as the Inf-Net MATLAB toolbox does: ``resmap(:,:,1)``).
    """
    from covseg.data.imageio import require_file

    path = Path(path)
    require_file(path)
    suf = suffix_of(path)
    if suf in suffixes("volume"):
        return read_volume(path)[0], False
    if suf == ".npy":
        try:
            return np.load(path, allow_pickle=False), False
        except Exception as exc:
            raise DataError(f"unreadable .npy ({type(exc).__name__}: {exc})", path) from None
    fmt = format_of(suf)
    if fmt is not None and fmt.listed and not fmt.pillow:  # TIFF and registered array formats: stored values
        arr = np.asarray(fmt.stored(path))
    else:
        from covseg.data.imageio import _open_pil

        with _open_pil(path) as im:
            mode = im.mode
            if mode == "P":
                return np.asarray(im, dtype=np.uint8).copy(), True
            if mode == "1":
                return np.asarray(im, dtype=bool).copy(), True
            arr = np.asarray(im).copy()
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise DataError(
                "a colour image (an overlay?), not a soft map or mask; give the probs/ or masks/ folder", path
            )
        arr = arr[..., 0]  # grey stored as RGB: the first channel, as the MATLAB toolbox reads it
    return arr, False


def read_ground_truth(
    path: Path, num_classes: int = 1, *, file_spacing: bool = True
) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """Ground-truth label map and the spacing its file states (NIfTI header, PNG ``covseg:spacing``
    text chunk, TIFF resolution), or None; ``file_spacing=False`` skips a 2D file's spacing (a
    ``--spacing`` given overrides it: the header is not opened a second time)."""
    from covseg.data.imageio import analyse_mask, read_label_volume, read_spacing_2d

    path = Path(path)
    suf = suffix_of(path)
    spacing: tuple[float, ...] | None = None
    if suf in suffixes("volume"):
        arr, spacing, _ = read_label_volume(path)
    else:
        info = analyse_mask(path)
        if info.kind in ("ambiguous", "colour"):
            what = (
                f"{len(info.stored_values)}{'+' if len(info.stored_values) >= 64 else ''} grey levels"
                if info.kind == "ambiguous"
                else "several colours"
            )
            raise DataError(
                f"not a mask ({what}, not 0/1, 0/255 or class indices): an image folder given as ground truth?",
                path,
            )
        arr = info.labels
        if file_spacing and suf in (".png", ".tif", ".tiff"):
            spacing = read_spacing_2d(path)
    try:
        return gt_labels(arr, num_classes), spacing
    except ValueError as exc:
        raise DataError(str(exc), path) from None


def read_toolbox_ground_truth(path: Path) -> np.ndarray | None:
    """The logical ground truth Inf-Net's ``main.m`` makes of an image file (``gt(:,:,1) > 128``, colour
    through ``rgb2gray``, 1-bit kept: :func:`covseg.metrics.sod_matlab.toolbox_ground_truth`), from the
    values ``imread`` returns (palette images: their indices); None for files ``main.m`` cannot read
    (``.npy``, NIfTI), which keep covseg's reading."""
    from covseg.data.imageio import _open_pil, _read_tiff
    from covseg.metrics.sod_matlab import toolbox_ground_truth

    path = Path(path)
    suf = suffix_of(path)
    if suf not in IMAGE_SUFFIXES:
        return None
    if suf in (".tif", ".tiff"):
        stored = np.asarray(_read_tiff(path))
    else:
        with _open_pil(path) as im:
            stored = np.asarray(im, dtype=bool if im.mode == "1" else None).copy()
            if im.mode in ("LA", "La", "PA"):
                stored = stored[..., 0]  # imread returns the grey (or index) plane; alpha is another output
    return toolbox_ground_truth(stored)


def _resize_2d(arr: np.ndarray, shape: tuple[int, int], nearest: bool) -> np.ndarray:
    from PIL import Image

    if nearest:
        # Sample each output pixel's centre, as PIL's NEAREST does.
        rows = (
            ((np.arange(shape[0]) + 0.5) * arr.shape[0] / shape[0]).astype(np.int64).clip(0, arr.shape[0] - 1)
        )
        cols = (
            ((np.arange(shape[1]) + 0.5) * arr.shape[1] / shape[1]).astype(np.int64).clip(0, arr.shape[1] - 1)
        )
        return arr[np.ix_(rows, cols)]
    im = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), mode="F")
    out = np.asarray(im.resize((shape[1], shape[0]), Image.Resampling.BILINEAR), dtype=np.float64)
    return np.clip(out, 0.0, 1.0)


def fit_prediction(
    raw: np.ndarray,
    is_mask_file: bool,
    gt_shape: tuple[int, ...],
    *,
    protocol: str,
    num_classes: int = 1,
    pred_type: PredType = "auto",
) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """Prediction brought to ``gt_shape`` (2D only) and the original spatial shape if it was resized.

    Raises ``ValueError`` when the shapes cannot be reconciled.
    """
    ndim = len(gt_shape)
    channels = raw.ndim == ndim + 1 and not (raw.ndim == 3 and ndim == 2 and raw.shape[-1] in (3, 4))
    spatial = tuple(raw.shape[1:]) if channels else tuple(raw.shape)
    if len(spatial) != ndim:
        raise ValueError(f"prediction has shape {raw.shape}; ground truth is {ndim}D {gt_shape}")
    kind = "channels" if channels else ("mask" if is_mask_file and pred_type == "auto" else pred_type)
    if kind == "auto":
        kind = guess_pred_type(raw, num_classes)
    if protocol == "sod":
        if kind == "channels":
            raise ValueError("the sod protocol needs a single-channel soft map, got channels")
        values = raw > 0 if kind == "mask" else raw
        if spatial == gt_shape:
            return values, None
        prepared = soft_map(values)
    elif kind == "mask":
        prepared = prediction_labels(raw, spatial, num_classes=num_classes, pred_type="mask")
    elif kind == "soft":
        if spatial == gt_shape and pred_type == "auto":
            soft_map_divisor(raw)  # checked here, converted by the accumulator: no float copy now
            return raw, None
        prepared = soft_map(raw)
        if spatial == gt_shape:
            return prepared, None
    else:
        prepared = raw
    if spatial == gt_shape:
        return prepared, None
    if ndim != 2:
        raise ValueError(
            f"prediction shape {spatial} differs from ground truth {gt_shape}; 3D volumes are not resampled "
            "(resample the prediction into the ground truth's grid first)"
        )
    if kind == "channels":
        chans = np.asarray(raw, dtype=np.float64)
        if np.all(np.isfinite(chans)) and chans.min() >= 0 and chans.max() <= 1:
            return np.stack([_resize_2d(c, gt_shape, nearest=False) for c in chans]), spatial
        raise ValueError("probability channels to resize must lie in [0, 1] (softmax them first)")
    return _resize_2d(prepared, gt_shape, nearest=(kind == "mask" and protocol != "sod")), spatial  # type: ignore[arg-type]


def load_case(
    case: Case,
    *,
    protocol: str,
    num_classes: int = 1,
    pred_type: PredType = "auto",
    spacing: tuple[float, ...] | None = None,
    toolbox_gt: bool = False,
) -> LoadedCase:
    """Read and reconcile one pair; every problem becomes a ``DataError`` naming the file at fault.

    ``toolbox_gt``: binarise an image file's ground truth as the MATLAB toolbox does (``gt > 128``)
    once covseg's checks have passed it (see :func:`read_toolbox_ground_truth`).
    """
    gt, gt_spacing = read_ground_truth(case.gt_path, num_classes, file_spacing=spacing is None)
    differs = False
    toolbox = read_toolbox_ground_truth(case.gt_path) if toolbox_gt else None
    if toolbox is not None:
        if toolbox.shape != gt.shape:
            raise DataError(
                f"read as the MATLAB toolbox reads it, the mask has shape {toolbox.shape}, not {gt.shape}",
                case.gt_path,
            )
        differs = not np.array_equal(toolbox, gt > 0)
        gt = toolbox.astype(np.uint8)
    if case.pred_path is None:  # --missing-pred empty: nothing predicted
        return LoadedCase(
            np.zeros(gt.shape, dtype=np.uint8), gt, _spacing_for(spacing, gt_spacing, gt, case), None, differs
        )
    raw, is_mask_file = read_prediction(case.pred_path)
    if suffix_of(case.pred_path) in suffixes("volume") and suffix_of(case.gt_path) in suffixes("volume"):
        _same_geometry(case.pred_path, case.gt_path)
    try:
        pred, resized_from = fit_prediction(
            raw, is_mask_file, gt.shape, protocol=protocol, num_classes=num_classes, pred_type=pred_type
        )
    except ValueError as exc:
        raise DataError(str(exc), case.pred_path) from None
    loaded = LoadedCase(pred, gt, _spacing_for(spacing, gt_spacing, gt, case), resized_from, differs)
    if spacing is None and suffix_of(case.gt_path) in suffixes("volume"):
        from covseg.transforms.orientation import voxel_volume_ml

        loaded.voxel_ml = voxel_volume_ml(read_volume(case.gt_path, check_finite=False)[2])
    return loaded


def _spacing_for(spacing, gt_spacing, gt: np.ndarray, case: Case) -> tuple[float, ...] | None:
    sp = spacing if spacing is not None else gt_spacing
    if sp is not None and len(sp) == 1:
        sp = sp * gt.ndim
    if sp is not None and len(sp) != gt.ndim:
        raise DataError(f"spacing {sp} has {len(sp)} values for a {gt.ndim}D ground truth", case.gt_path)
    return sp


def _same_geometry(pred_path: Path, gt_path: Path) -> None:
    """NIfTI prediction and ground truth must lie in the same grid: the same affine (orientation, spacing, origin)."""
    pred_affine = read_volume(pred_path, check_finite=False)[2]
    gt_affine = read_volume(gt_path, check_finite=False)[2]
    if not np.allclose(pred_affine, gt_affine, atol=1e-3):
        raise DataError(
            f"affine differs from the ground truth's ({Path(gt_path).name}): a flipped or shifted grid would "
            "score the same physical mask as a different one (resample the prediction into its grid)",
            pred_path,
        )
