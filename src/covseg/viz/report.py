"""A self-contained HTML report writer (images embedded as base64 PNG), reusable by any command.

Build a report block by block and write it atomically::

    report = HtmlReport("Evaluation", subtitle="medical protocol")
    report.heading("Summary")
    report.table(rows, columns=["metric", "mean", "std"])
    report.image(overlay_rgb, caption="case 0001")
    report.write(out_dir / "report.html")

Text is HTML-escaped; only ``raw_html`` inserts markup as given.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from covseg.utils.atomic import write_text


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of a 2D grey or RGB(A) uint8 array (other dtypes are clipped to 0..255)."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` URI of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def format_value(value: Any, float_format: str = ".4f") -> str:
    """Table cell text: floats with ``float_format``, NaN as ``–``, None as empty."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "–"
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        return format(v, float_format)
    return str(value)


def _template() -> Template:
    from importlib.resources import files

    return Template(files("covseg.viz").joinpath("templates/report.html").read_text(encoding="utf-8"))


class HtmlReport:
    """An HTML page assembled from headings, paragraphs, tables, embedded images and galleries."""

    def __init__(self, title: str, subtitle: str | None = None) -> None:
        self.title = title
        self.subtitle = subtitle
        self._blocks: list[str] = []

    def heading(self, text: str, level: int = 2) -> HtmlReport:
        """Add a heading (``level`` 2 or 3 inside a report)."""
        level = min(max(int(level), 2), 4)
        self._blocks.append(f"<h{level}>{html.escape(text)}</h{level}>")
        return self

    def paragraph(self, text: str, css_class: str | None = None) -> HtmlReport:
        """Add a paragraph of plain text."""
        cls = f' class="{html.escape(css_class)}"' if css_class else ""
        self._blocks.append(f"<p{cls}>{html.escape(text)}</p>")
        return self

    def note(self, text: str) -> HtmlReport:
        """Add a highlighted note (warnings such as resized predictions or skipped cases)."""
        return self.paragraph(text, css_class="note")

    def bullet_list(self, items: Sequence[str]) -> HtmlReport:
        """Add an unordered list of plain-text items."""
        lis = "".join(f"<li>{html.escape(str(i))}</li>" for i in items)
        self._blocks.append(f"<ul>{lis}</ul>")
        return self

    def preformatted(self, text: str) -> HtmlReport:
        """Add a block of monospaced text (JSON, parameters)."""
        self._blocks.append(f"<pre>{html.escape(text)}</pre>")
        return self

    def raw_html(self, markup: str) -> HtmlReport:
        """Add trusted markup as it is."""
        self._blocks.append(markup)
        return self

    def table(
        self,
        rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]],
        columns: Sequence[str] | None = None,
        *,
        caption: str | None = None,
        float_format: str = ".4f",
    ) -> HtmlReport:
        """Add a table from dict rows (``columns`` picks and orders keys) or list rows (``columns`` = header)."""
        rows = list(rows)
        if rows and isinstance(rows[0], Mapping):
            if columns is None:
                columns = []
                for r in rows:
                    columns.extend(k for k in r if k not in columns)  # type: ignore[union-attr]
            body = [[r.get(c) for c in columns] for r in rows]  # type: ignore[union-attr]
        else:
            body = [list(r) for r in rows]
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in (columns or []))
        cells = "".join(
            "<tr>" + "".join(f"<td>{html.escape(format_value(v, float_format))}</td>" for v in r) + "</tr>"
            for r in body
        )
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        thead = f"<thead><tr>{head}</tr></thead>" if head else ""
        self._blocks.append(f"<table>{cap}{thead}<tbody>{cells}</tbody></table>")
        return self

    @staticmethod
    def _figure(image: np.ndarray | bytes, caption: str | None, width: int | None) -> str:
        png = image if isinstance(image, (bytes, bytearray)) else png_bytes(image)
        alt = html.escape(caption or "figure")
        style = f' style="width:{int(width)}px"' if width else ""
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        return f'<figure><img src="{data_uri(bytes(png))}" alt="{alt}"{style}>{cap}</figure>'

    def image(
        self, image: np.ndarray | bytes, caption: str | None = None, width: int | None = None
    ) -> HtmlReport:
        """Embed an image: an array (grey/RGB uint8) or PNG bytes (e.g. from ``covseg.viz.plots``)."""
        self._blocks.append(self._figure(image, caption, width))
        return self

    def svg(self, markup: str, caption: str | None = None) -> HtmlReport:
        """Embed an inline ``<svg>`` made by covseg (e.g. :mod:`covseg.viz.svg_plots`, which escapes its text)."""
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self._blocks.append(f"<figure>{markup}{cap}</figure>")
        return self

    def gallery(
        self, items: Sequence[tuple[np.ndarray | bytes, str]], width: int | None = None
    ) -> HtmlReport:
        """Embed several ``(image, caption)`` pairs side by side."""
        figs = "".join(self._figure(img, cap, width) for img, cap in items)
        self._blocks.append(f'<div class="gallery">{figs}</div>')
        return self

    def render(self) -> str:
        """The complete HTML document."""
        from covseg import __version__

        subtitle = f'<p class="subtitle">{html.escape(self.subtitle)}</p>' if self.subtitle else ""
        return _template().safe_substitute(
            title=html.escape(self.title),
            subtitle=subtitle,
            body="\n".join(self._blocks),
            version=html.escape(__version__),
            generated=_dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        )

    def write(self, path: str | Path) -> Path:
        """Render and write atomically; returns the path."""
        return write_text(path, self.render())
