"""Accumulating metric objects (the MONAI ``Cumulative`` pattern) and the statistics they report.

An accumulator scores one case per ``update`` call, keeps one record per case (per class for
multi-class protocols), and summarises them on ``aggregate``. Every result records the protocol
name and its parameters so a number can always be traced to how it was computed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np

Reduction = Literal["nanmean", "mean"]
REDUCTIONS: tuple[str, ...] = ("nanmean", "mean")


def summarize(values: Iterable[float], reduction: Reduction = "nanmean") -> dict[str, float | int]:
    """Mean, sample standard deviation (ddof=1), median, min and max of per-case values.

    ``reduction`` says what NaN (an undefined case, see the ``empty`` policies) does:

    * ``"nanmean"`` – NaN cases are left out of every statistic; ``n`` counts the cases used and
      ``n_nan`` those left out;
    * ``"mean"`` – NaN propagates: any NaN case makes every statistic NaN.

    ``std`` is NaN when fewer than two values are used.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    arr = np.asarray(list(values), dtype=np.float64)
    nan_mask = np.isnan(arr)
    n_nan = int(nan_mask.sum())
    used = arr[~nan_mask] if reduction == "nanmean" else arr
    nan = float("nan")
    if used.size == 0 or (reduction == "mean" and n_nan):
        stats = {"mean": nan, "std": nan, "median": nan, "min": nan, "max": nan}
    else:
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # inf - inf in std when a distance is inf
            stats = {
                "mean": float(np.mean(used)),
                "std": float(np.std(used, ddof=1)) if used.size > 1 else nan,
                "median": float(np.median(used)),
                "min": float(np.min(used)),
                "max": float(np.max(used)),
            }
    return {**stats, "n": int(used.size), "n_nan": n_nan}


class MetricAccumulator:
    """Base class: subclasses set ``protocol``, ``metric_names``, ``primary_metric`` and implement ``update``."""

    protocol: str = ""
    metric_names: tuple[str, ...] = ()
    primary_metric: str = ""
    higher_is_better: dict[str, bool] = {}

    def __init__(self) -> None:
        self._records: list[dict[str, Any]] = []
        self._case_ids: list[str] = []

    @property
    def params(self) -> dict[str, Any]:
        """The protocol's parameters, as recorded with every result."""
        return {}

    def _next_case_id(self, case_id: str | None) -> str:
        cid = f"case{len(self._case_ids):05d}" if case_id is None else str(case_id)
        self._case_ids.append(cid)
        return cid

    def __len__(self) -> int:
        """Number of cases scored so far."""
        return len(self._case_ids)

    @property
    def case_ids(self) -> list[str]:
        """Case ids in the order they were scored."""
        return list(self._case_ids)

    def per_case(self) -> list[dict[str, Any]]:
        """One dict per case (per case and class for multi-class protocols), copies of the records."""
        return [dict(r) for r in self._records]

    def case_records(
        self, pred: Any, gt: Any, spacing: Any = None, case_id: str | None = None, **kwargs: Any
    ) -> list[dict[str, Any]] | None:
        """One case's records as ``update`` would add them, recording nothing; None where the protocol
        cannot score apart from recording (then call ``update``).

        Pure and thread-safe where implemented: folder evaluation scores the next cases in threads
        and adds their records in order with :meth:`add_records`.
        """
        return None

    def add_records(self, case_id: str, records: list[dict[str, Any]]) -> None:
        """Add one case's records scored elsewhere (another process: MONAI's ``Cumulative`` sync)."""
        self._case_ids.append(str(case_id))
        self._records.extend(dict(r, case_id=str(case_id)) for r in records)

    def reset(self) -> None:
        """Forget every case."""
        self._records.clear()
        self._case_ids.clear()

    def case_scores(self, metric: str | None = None) -> dict[str, float]:
        """One number per case for ranking: ``metric`` (default: the primary one), NaN-mean over classes."""
        metric = metric or self.primary_metric
        grouped: dict[str, list[float]] = {cid: [] for cid in self._case_ids}
        for rec in self._records:
            grouped[rec["case_id"]].append(float(rec[metric]))
        out = {}
        for cid, vals in grouped.items():
            finite = [v for v in vals if not math.isnan(v)]
            out[cid] = float(np.mean(finite)) if finite else float("nan")
        return out

    def aggregate(self, reduction: Reduction = "nanmean") -> dict[str, Any]:
        """Statistics of every metric over the records (see ``summarize`` for ``reduction``)."""
        return {
            "protocol": self.protocol,
            "params": self.params,
            "reduction": reduction,
            "num_cases": len(self),
            "metrics": {m: summarize((r[m] for r in self._records), reduction) for m in self.metric_names},
        }
