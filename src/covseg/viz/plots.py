"""Small matplotlib figures rendered to PNG bytes with the Agg canvas (no pyplot, no global state).

Using ``matplotlib.figure.Figure`` with ``FigureCanvasAgg`` directly keeps these functions safe in
headless runs, threads and tests, and leaves any interactive backend the user chose untouched.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any


def new_figure(width: float = 5.0, height: float = 3.2, dpi: int = 100) -> Any:
    """A matplotlib Figure attached to an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Any) -> bytes:
    """PNG bytes of a Figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def histogram_png(
    values: Sequence[float],
    *,
    title: str = "",
    xlabel: str = "",
    bins: int = 20,
    value_range: tuple[float, float] | None = None,
) -> bytes:
    """Histogram of the finite values (NaN/inf are counted in the title, not plotted)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    skipped = len(values) - len(finite)
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    if finite:
        ax.hist(finite, bins=bins, range=value_range, color="#3b75af", edgecolor="white")
    else:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
    suffix = f" ({skipped} not finite, not shown)" if skipped else ""
    ax.set_title(f"{title}{suffix}", fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("cases")
    if value_range is not None:
        ax.set_xlim(*value_range)
    return figure_png(fig)


def curves_png(
    x: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    ylim: tuple[float, float] | None = None,
) -> bytes:
    """Line plot of named curves over a shared x axis (threshold curves, training curves)."""
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for name, ys in curves.items():
        ax.plot(list(x), list(ys), label=name, linewidth=1.5)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    return figure_png(fig)


def training_curves_png(history: Sequence[Mapping[str, Any]], monitor: str = "dice") -> bytes:
    """Two panels per epoch: training loss parts (left) and validation metrics (right, 0..1)."""
    fig = new_figure(width=10.0, height=3.6)
    ax_loss, ax_val = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    epochs = [int(r["epoch"]) + 1 for r in history]
    for key in sorted({k for r in history for k in r if k.startswith("train_")}):
        ax_loss.plot(epochs, [float(r.get(key, "nan") or "nan") for r in history], label=key[6:], linewidth=1.2)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("training loss", fontsize=10)
    ax_loss.legend(fontsize=7)
    val_keys = sorted({k for r in history for k in r if k.startswith("val_")})
    for key in val_keys:
        pts = [(int(r["epoch"]) + 1, float(r[key])) for r in history if r.get(key) not in (None, "")]
        if pts:
            ax_val.plot(*zip(*pts), marker=".", label=key[4:], linewidth=2 if key == f"val_{monitor}" else 1)
    ax_val.set_xlabel("epoch")
    ax_val.set_title("validation", fontsize=10)
    ax_val.set_ylim(0, 1)
    ax_val.grid(alpha=0.3)
    if val_keys:
        ax_val.legend(fontsize=7)
    fig.tight_layout()
    return figure_png(fig)
