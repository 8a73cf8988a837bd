"""Turning user inputs (numpy arrays, torch tensors, soft maps, label maps) into what metrics score.

Rules, shared by both protocols and the CLI:

* torch tensors are detached and copied to the CPU (torch itself is never imported here);
* a *soft map* is a probability map: float in ``[0, 1]``, or integers scaled by their range
  (``uint8`` / values ≤ 255 → ``/255``, ``uint16`` / values ≤ 65535 → ``/65535``);
* a *label map* holds integers ``0..K`` (0 = background); ``bool`` arrays are label maps;
* ``pred_type="auto"`` decides per array: float values in ``[0, 1]`` are a soft map, other
  integral floats are labels; for a binary task (``num_classes=1``) integer arrays whose values
  are all 0/1 are a mask and any other integer array is a soft map (so 0/255 masks and 0..255
  soft maps both work); for ``num_classes > 1`` integer arrays are label maps. Pass
  ``pred_type="soft"`` or ``"mask"`` where the guess is not what you mean (for instance a
  ``uint8`` soft map whose values happen to be only 0 and 1).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

PredType = Literal["auto", "soft", "mask"]
PRED_TYPES: tuple[str, ...] = ("auto", "soft", "mask")


def to_numpy(x: Any) -> np.ndarray:
    """A numpy array from an array-like; torch tensors are detached and moved to the CPU first."""
    if hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _is_integral(arr: np.ndarray) -> bool:
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        return True
    return bool(np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)))


def soft_map_divisor(p: np.ndarray) -> int | None:
    """What :func:`soft_map` divides an array by (255 or 65535; None for bool and float maps), after its checks.

    Validates without building the float64 map: callers that only need to know the array is a
    valid soft map (or want to threshold it through a lookup table) skip a full-size copy.
    """
    if p.dtype == bool:
        return None
    if np.issubdtype(p.dtype, np.integer):
        if p.size and p.min() < 0:
            raise ValueError("integer soft map has negative values")
        top = int(p.max(initial=0))
        if p.dtype == np.uint8 or top <= 255:
            return 255  # the same operation as MATLAB's im2double and pysodmetrics' prepare_data
        if p.dtype == np.uint16 or top <= 65535:
            return 65535
        raise ValueError(f"integer soft map with values up to {top}: expected 0..255 or 0..65535")
    p = p.astype(np.float64, copy=False)
    if not np.all(np.isfinite(p)):
        raise ValueError("soft map contains NaN or infinite values")
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError(
            f"soft map values span [{p.min():.4g}, {p.max():.4g}], outside [0, 1] "
            "(logits? apply a sigmoid or softmax first)"
        )
    return None


def soft_map(pred: Any) -> np.ndarray:
    """A float64 probability map in ``[0, 1]``: integers are divided by 255 (or 65535), floats are checked.

    Raises ``ValueError`` for floats outside ``[0, 1]`` (logits: apply a sigmoid first) or NaN.
    """
    p = to_numpy(pred)
    divisor = soft_map_divisor(p)
    if divisor is not None:
        return p / divisor
    return p.astype(np.float64, copy=False)


def binarise_soft_map(pred: np.ndarray, threshold: float) -> np.ndarray:
    """``(soft_map(pred) >= threshold)`` as ``uint8``; 8/16-bit maps by one integer comparison, no float copy.

    ``value / divisor`` (the float64 operation :func:`soft_map` does per pixel) rises with the
    stored value, so the pixels at or above the threshold are exactly those whose stored value is
    at least the first value that passes: the same mask from the same comparisons.
    """
    p = to_numpy(pred)
    divisor = soft_map_divisor(p)
    if divisor is not None and p.dtype in (np.uint8, np.uint16):
        passing = np.flatnonzero(np.arange(np.iinfo(p.dtype).max + 1) / divisor >= threshold)
        if passing.size == 0:
            return np.zeros(p.shape, dtype=np.uint8)
        return (p >= passing[0]).view(np.uint8)
    values = p / divisor if divisor is not None else p.astype(np.float64, copy=False)
    return (values >= threshold).astype(np.uint8)


def gt_labels(gt: Any, num_classes: int = 1) -> np.ndarray:
    """Ground truth as a ``uint8`` label map; for a binary task every non-zero value is foreground.

    With ``num_classes > 1`` the values must lie in ``0..num_classes``.
    """
    g = to_numpy(gt)
    if g.dtype == bool:
        return g.astype(np.uint8)
    if not _is_integral(g):
        raise ValueError("ground truth must be a mask or label map (integer values), not a soft map")
    if g.size and g.min() < 0:
        raise ValueError("ground truth has negative labels")
    if num_classes == 1:
        return (g > 0).astype(np.uint8)
    top = int(g.max(initial=0))
    if top > num_classes:
        raise ValueError(f"ground truth has label {top} but num_classes={num_classes}")
    return g.astype(np.uint8)


def guess_pred_type(pred: np.ndarray, num_classes: int = 1) -> str:
    """``"soft"`` or ``"mask"`` for a prediction without a channel axis (see the module rules)."""
    if pred.dtype == bool:
        return "mask"
    if np.issubdtype(pred.dtype, np.integer):
        if num_classes > 1:
            return "mask"
        return "mask" if pred.size == 0 or (pred.min() >= 0 and pred.max() <= 1) else "soft"
    if not np.all(np.isfinite(pred)):
        raise ValueError("prediction contains NaN or infinite values")
    in_unit_range = pred.size == 0 or (pred.min() >= 0 and pred.max() <= 1)
    if num_classes == 1 and in_unit_range:
        return "soft"
    if _is_integral(pred) and pred.min(initial=0) >= 0:
        return "mask"
    if in_unit_range:
        raise ValueError("multi-class soft maps need a channel axis: (C, *spatial) with C = num_classes + 1")
    raise ValueError(
        "prediction is neither a soft map in [0, 1] nor a label map "
        f"(values span [{pred.min():.4g}, {pred.max():.4g}]; logits? apply a sigmoid or softmax first)"
    )


def prediction_labels(
    pred: Any,
    spatial_shape: tuple[int, ...],
    *,
    num_classes: int = 1,
    threshold: float = 0.5,
    pred_type: PredType = "auto",
) -> np.ndarray:
    """A ``uint8`` label map with exactly ``spatial_shape`` (no resizing: that is the caller's job).

    * channel-first arrays ``(C, *spatial)``: ``C == 1`` is squeezed; otherwise ``C`` must equal
      ``num_classes + 1`` (background first) and the label is the argmax over channels
      (probabilities or logits);
    * soft maps are binarised as ``p >= threshold`` (MONAI ``AsDiscrete(threshold=...)`` semantics);
    * label maps are kept (binary task: any non-zero label is foreground).
    """
    if pred_type not in PRED_TYPES:
        raise ValueError(f"pred_type must be one of {PRED_TYPES}, got {pred_type!r}")
    p = to_numpy(pred)
    spatial_shape = tuple(int(s) for s in spatial_shape)
    if p.ndim == len(spatial_shape) + 1 and tuple(p.shape[1:]) == spatial_shape:
        if p.shape[0] == 1:
            p = p[0]
        else:
            if p.shape[0] != num_classes + 1:
                raise ValueError(
                    f"prediction has {p.shape[0]} channels; expected num_classes + 1 = {num_classes + 1}"
                )
            if not np.all(np.isfinite(p)):
                raise ValueError("prediction contains NaN or infinite values")
            return np.argmax(p, axis=0).astype(np.uint8)
    if tuple(p.shape) != spatial_shape:
        raise ValueError(f"prediction shape {tuple(p.shape)} differs from ground truth {spatial_shape}")
    kind = guess_pred_type(p, num_classes) if pred_type == "auto" else pred_type
    if kind == "soft":
        if num_classes > 1:
            raise ValueError(
                "multi-class soft maps need a channel axis: (C, *spatial) with C = num_classes + 1"
            )
        return binarise_soft_map(p, threshold)
    if not _is_integral(p):
        raise ValueError("prediction given as a mask has non-integer values")
    if p.size and p.min() < 0:
        raise ValueError("prediction has negative labels")
    if num_classes == 1:
        return (p > 0).astype(np.uint8)
    top = int(p.max(initial=0))
    if top > num_classes:
        raise ValueError(f"prediction has label {top} but num_classes={num_classes}")
    return p.astype(np.uint8)


def normalise_spacing(spacing: Any, ndim: int) -> tuple[float, ...] | None:
    """``None`` or a tuple of ``ndim`` positive floats (a single number means isotropic)."""
    if spacing is None:
        return None
    values = [float(s) for s in np.atleast_1d(to_numpy(spacing)).ravel()]
    if len(values) == 1:
        values = values * ndim
    if len(values) != ndim:
        raise ValueError(f"spacing has {len(values)} values for a {ndim}D image")
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be positive, got {tuple(values)}")
    return tuple(values)
