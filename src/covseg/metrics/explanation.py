"""Are explanations where the lesion is? Two scores of a heatmap against a ground-truth mask.

- ``inside_share``: the share of the heatmap's mass inside the mask, ``Σ h·m / Σ h`` over the
  non-negative heatmap (the "energy-based pointing game" of Score-CAM, Wang et al. 2020). A
  heatmap spread evenly over the image scores the mask's area fraction, reported beside it
  (``mask_fraction``) as the chance level.
- ``pointing_hit``: whether the heatmap's peak lies in the mask, or within ``tolerance`` pixels
  of it (the pointing game of Zhang et al. 2016, which allows 15 pixels); its mean over cases
  is the hit rate. A peak shared by several pixels is scored at the first one in row-major order.

Both are undefined (NaN) for an empty mask, and ``inside_share`` for a heatmap that is zero
everywhere; :class:`ExplanationMetrics` counts such cases apart. Heatmaps and masks are 2D or
3D arrays of the same shape (resize the heatmap to the mask first).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from covseg.metrics.base import summarize

EXPLANATION_METRICS: tuple[str, ...] = ("inside_share", "pointing_hit", "mask_fraction")


def _pair(heatmap: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
    h = np.asarray(heatmap, dtype=np.float64)
    m = np.asarray(mask) > 0
    if h.shape != m.shape:
        raise ValueError(f"heatmap shape {h.shape} differs from mask shape {m.shape}")
    if not np.all(np.isfinite(h)):
        raise ValueError("heatmap has NaN or infinite values")
    return np.clip(h, 0.0, None), m


def inside_share(heatmap: Any, mask: Any) -> float:
    """``Σ heatmap·mask / Σ heatmap`` (negative heatmap values count as 0); NaN for an empty mask or zero heatmap."""
    h, m = _pair(heatmap, mask)
    total = float(h.sum())
    if not m.any() or total <= 0.0:
        return float("nan")
    return float(h[m].sum() / total)


def peak_location(heatmap: Any) -> tuple[int, ...]:
    """Index of the heatmap's maximum (the first one in row-major order)."""
    h = np.asarray(heatmap, dtype=np.float64)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(h)), h.shape))


def pointing_hit(heatmap: Any, mask: Any, tolerance: float = 0.0) -> float:
    """1.0 if the heatmap's peak lies in the mask or within ``tolerance`` pixels of it, else 0.0; NaN for an empty mask."""
    from scipy.ndimage import distance_transform_edt

    h, m = _pair(heatmap, mask)
    if not m.any():
        return float("nan")
    peak = peak_location(h)
    if m[peak]:
        return 1.0
    if tolerance <= 0:
        return 0.0
    return float(distance_transform_edt(~m)[peak] <= tolerance)


class ExplanationMetrics:
    """Accumulates ``inside_share`` and ``pointing_hit`` per case for one kind of heatmap (e.g. ``gradcam``)."""

    protocol = "explanation"
    metric_names = EXPLANATION_METRICS

    def __init__(self, name: str = "gradcam", tolerance: float = 0.0) -> None:
        if tolerance < 0:
            raise ValueError(f"tolerance must be non-negative, got {tolerance}")
        self.name = name
        self.tolerance = float(tolerance)
        self._records: list[dict[str, Any]] = []

    @property
    def params(self) -> dict[str, Any]:
        return {"heatmap": self.name, "tolerance_px": self.tolerance, "negative_values": "clipped to 0"}

    def __len__(self) -> int:
        return len(self._records)

    def update(self, heatmap: Any, mask: Any, case_id: str | None = None) -> dict[str, Any]:
        """Score one case (cases with an empty mask are kept as NaN and counted apart)."""
        h, m = _pair(heatmap, mask)
        record = {
            "case_id": f"case{len(self._records):05d}" if case_id is None else str(case_id),
            "inside_share": inside_share(h, m),
            "pointing_hit": pointing_hit(h, m, self.tolerance),
            "mask_fraction": float(m.mean()) if m.any() else float("nan"),
        }
        self._records.append(record)
        return dict(record)

    def per_case(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._records]

    def aggregate(self) -> dict[str, Any]:
        """Mean inside share, pointing-game hit rate and the chance level (mean mask fraction)."""
        stats = {m: summarize(r[m] for r in self._records) for m in self.metric_names}
        return {
            "protocol": self.protocol,
            "params": self.params,
            "num_cases": len(self),
            "num_empty_masks": sum(np.isnan(r["pointing_hit"]) for r in self._records),
            "metrics": stats,
            "pointing_game": stats["pointing_hit"]["mean"],
        }

    def reset(self) -> None:
        self._records.clear()
