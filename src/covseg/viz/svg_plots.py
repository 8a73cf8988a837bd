"""Small plots as inline SVG text, for HTML reports that must stay cheap to write.

``covseg evaluate`` writes its report after scoring; a matplotlib histogram there cost about 3 CPU
seconds (most of it importing matplotlib), a quarter of evaluating 1,000 cases. A histogram is a
few rectangles, so it is written as SVG directly: no import, a few kilobytes, sharp at any zoom,
and every text escaped (titles may hold case or metric names from other people's files).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np

WIDTH, HEIGHT = 480, 300
LEFT, RIGHT, TOP, BOTTOM = 52, 16, 30, 44  # plot margins in px
BAR, AXIS = "#3b75af", "#444"


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return format(v, ".4g")


def histogram_svg(
    values: Sequence[float | None],
    *,
    title: str = "",
    xlabel: str = "",
    bins: int = 20,
    value_range: tuple[float, float] | None = None,
) -> str:
    """Histogram of the finite values as an ``<svg>`` element (NaN/inf/None are counted in the title).

    Bin edges are numpy's (``np.histogram(finite, bins, value_range)``), so the bars' counts are
    exactly those a matplotlib histogram of the same values shows.
    """
    finite = np.array([float(v) for v in values if v is not None and math.isfinite(float(v))], dtype=float)
    skipped = len(values) - finite.size
    full_title = f"{title} ({skipped} not finite, not shown)" if skipped else title
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="histogram" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11" role="img" '
        f'aria-label="{html.escape(full_title)}">',
        f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" font-size="12">{html.escape(full_title)}</text>',
    ]
    if finite.size == 0:
        parts.append(
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no finite values</text></svg>'
        )
        return "".join(parts)
    lo, hi = value_range if value_range is not None else (float(finite.min()), float(finite.max()))
    if hi <= lo:  # one distinct value: a bin of width 1 around it, as numpy does
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(finite, bins=bins, range=(lo, hi))
    top = max(int(counts.max()), 1)

    def x_of(v: float) -> float:
        return LEFT + (v - lo) / (hi - lo) * plot_w

    def y_of(c: float) -> float:
        return TOP + plot_h - c / top * plot_h

    for count, left, right in zip(counts, edges[:-1], edges[1:]):
        if count:
            x0, x1, y = x_of(left), x_of(right), y_of(count)
            parts.append(
                f'<rect class="bar" data-count="{int(count)}" x="{x0:.2f}" y="{y:.2f}" width="{max(x1 - x0 - 1, 0.5):.2f}" '
                f'height="{TOP + plot_h - y:.2f}" fill="{BAR}"><title>{_fmt(left)} – {_fmt(right)}: {int(count)}</title></rect>'
            )
    base = TOP + plot_h
    parts.append(f'<path d="M{LEFT} {TOP}V{base}H{LEFT + plot_w}" fill="none" stroke="{AXIS}"/>')
    for t in _ticks(lo, hi):
        x = x_of(t)
        parts.append(
            f'<path d="M{x:.2f} {base}v4" stroke="{AXIS}"/><text x="{x:.2f}" y="{base + 16}" text-anchor="middle">{_fmt(t)}</text>'
        )
    for t in _ticks(0, top, 4):
        if t == int(t):
            y = y_of(t)
            parts.append(
                f'<path d="M{LEFT} {y:.2f}h-4" stroke="{AXIS}"/><text x="{LEFT - 6}" y="{y + 4:.2f}" text-anchor="end">{int(t)}</text>'
            )
    parts.append(
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 8}" text-anchor="middle">{html.escape(xlabel)}</text>'
    )
    parts.append(
        f'<text transform="translate(14 {TOP + plot_h / 2}) rotate(-90)" text-anchor="middle">cases</text></svg>'
    )
    return "".join(parts)
