"""Pictures and reports: overlays, matplotlib figures as PNG, and a self-contained HTML report writer.

``overlay(image, gt, pred)`` gives an RGB uint8 array (gt green, prediction red, overlap yellow);
``HtmlReport`` assembles headings, tables and embedded images into one HTML file; ``plots`` renders
histograms and curves with matplotlib's Agg canvas. Submodules import their heavy dependencies
(scipy, PIL, matplotlib) lazily.
"""

from covseg.viz.overlay import overlay, thumbnail, to_display_rgb
from covseg.viz.report import HtmlReport, data_uri, png_bytes

__all__ = ["HtmlReport", "data_uri", "overlay", "png_bytes", "thumbnail", "to_display_rgb"]
