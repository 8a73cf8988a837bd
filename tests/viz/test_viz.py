"""Overlays, PNG figures and the HTML report writer."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from covseg.viz import HtmlReport, overlay, png_bytes, thumbnail, to_display_rgb
from covseg.viz.overlay import BACKGROUND_GREY, GT_COLOUR, OVERLAP_COLOUR, PRED_COLOUR, outline
from covseg.viz.plots import curves_png, histogram_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _masks() -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((40, 40), dtype=np.uint8)
    gt[5:25, 5:25] = 1
    pred = np.zeros((40, 40), dtype=np.uint8)
    pred[15:35, 15:35] = 1
    return gt, pred


def test_overlay_colours_on_grey_background():
    gt, pred = _masks()
    rgb = overlay(None, gt, pred, alpha=0.5)
    assert rgb.dtype == np.uint8 and rgb.shape == (40, 40, 3)
    grey = np.array([BACKGROUND_GREY] * 3, dtype=float)

    def tint(colour):
        return np.round(0.5 * grey + 0.5 * np.array(colour)).astype(np.uint8).tolist()

    assert rgb[0, 0].tolist() == [BACKGROUND_GREY] * 3  # background untouched
    assert rgb[10, 10].tolist() == tint(GT_COLOUR)  # gt only: green tint
    assert rgb[30, 30].tolist() == tint(PRED_COLOUR)  # prediction only: red tint
    assert rgb[20, 20].tolist() == tint(OVERLAP_COLOUR)  # overlap: yellow tint
    assert rgb[5, 10].tolist() == list(GT_COLOUR)  # gt outline, opaque
    assert rgb[34, 30].tolist() == list(PRED_COLOUR)  # prediction outline, opaque
    assert rgb[15, 15].tolist() == list(PRED_COLOUR)  # prediction outline inside the gt
    assert rgb[24, 15].tolist() == list(OVERLAP_COLOUR)  # where both outlines cross


def test_overlay_on_image_and_single_mask():
    gt, pred = _masks()
    ct = np.linspace(-1000, 400, 40 * 40).reshape(40, 40)  # HU: stretched for display
    rgb = overlay(ct, pred=pred)
    assert rgb.shape == (40, 40, 3)
    assert rgb[0, 0, 0] == rgb[0, 0, 1] == rgb[0, 0, 2]  # grey where nothing is drawn
    assert not np.any(np.all(rgb == np.array(GT_COLOUR, np.uint8), axis=-1))  # no gt given, no green
    colour = np.stack([ct, ct, ct], axis=-1).clip(0, 255).astype(np.uint8)
    assert overlay(colour, gt, pred).shape == (40, 40, 3)
    with pytest.raises(ValueError, match="differs from image shape"):
        overlay(ct, gt[:30])
    with pytest.raises(ValueError, match="needs an image"):
        overlay(None)


def test_display_rgb_keeps_8bit_and_stretches_others():
    u8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(to_display_rgb(u8)[..., 0], u8)
    stretched = to_display_rgb(np.linspace(0, 1, 256).reshape(16, 16))
    assert stretched.min() == 0 and stretched.max() == 255


def test_outline_and_thumbnail():
    gt, _ = _masks()
    line = outline(gt)
    assert line[5, 5] and line[24, 10] and not line[10, 10]
    big = np.zeros((600, 300, 3), dtype=np.uint8)
    assert thumbnail(big, 320).shape == (320, 160, 3)
    assert thumbnail(big[:100, :100], 320).shape == (100, 100, 3)  # never upscales


def test_plots_are_png():
    png = histogram_png([0.1, 0.5, float("nan"), 0.9], title="dice", xlabel="dice", value_range=(0, 1))
    assert png.startswith(PNG_SIGNATURE)
    assert histogram_png([float("nan")], title="none").startswith(PNG_SIGNATURE)
    curves = curves_png(np.linspace(0, 1, 5), {"dice": [0, 0.5, 0.7, 0.6, 0.2]}, title="t")
    assert Image.open(io.BytesIO(curves)).format == "PNG"


def test_the_svg_histogram_has_numpys_counts_and_escaped_text():
    import xml.etree.ElementTree as ET

    from covseg.viz.svg_plots import histogram_svg

    rng = np.random.default_rng(0)
    values = [*rng.beta(5, 2, size=300).tolist(), float("nan"), None, float("inf")]
    svg = histogram_svg(values, title="dice <per> case & more", xlabel="x<1", bins=20, value_range=(0, 1))
    root = ET.fromstring(svg)  # well-formed XML
    ns = "{http://www.w3.org/2000/svg}"
    bars = [r for r in root.iter(f"{ns}rect") if r.get("class") == "bar"]
    want, _ = np.histogram(np.random.default_rng(0).beta(5, 2, size=300), bins=20, range=(0, 1))
    assert [int(b.get("data-count")) for b in bars] == [int(c) for c in want if c]
    heights = [float(b.get("height")) for b in bars]
    assert max(heights) == pytest.approx(300 - 30 - 44)  # the tallest bar fills the plot
    assert "dice &lt;per&gt; case &amp; more (3 not finite, not shown)" in svg and "x&lt;1" in svg
    assert "no finite values" in histogram_svg([float("nan")], title="none")
    one = ET.fromstring(histogram_svg([0.7, 0.7], bins=5))  # one distinct value, no range: one bar of 2
    assert [r.get("data-count") for r in one.iter(f"{ns}rect")] == ["2"]


def test_the_evaluation_report_needs_no_matplotlib(tmp_path):
    """The report's histogram is inline SVG: evaluating imports no matplotlib (it cost ~3 CPU s)."""
    import subprocess
    import sys

    code = f"""
import sys
import numpy as np
from covseg.api import evaluate
from covseg.data.image_files import write_image
from covseg.metrics.options import EvaluateOptions
root = {str(tmp_path)!r}
for i in range(3):
    gt = np.zeros((32, 32), np.uint8); gt[4:20 + i, 4:20] = 255
    pred = np.zeros((32, 32), np.uint8); pred[6:22, 6:22 + i] = 255
    write_image(root + f"/gt/c{{i}}.png", gt); write_image(root + f"/pred/c{{i}}.png", pred)
evaluate(root + "/pred", root + "/gt", EvaluateOptions(out=root + "/out"))
print("matplotlib" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    html_text = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert html_text.count('class="bar"') >= 1 and "<svg" in html_text


def test_report_embeds_images_and_escapes_text(tmp_path):
    gt, pred = _masks()
    rgb = overlay(None, gt, pred)
    report = HtmlReport("Title <x>", subtitle="a & b")
    report.heading("Numbers").table(
        [{"metric": "dice", "mean": 0.81234, "n": 3}, {"metric": "<b>", "mean": float("nan")}]
    )
    report.table([["a", 1.5]], ["name", "value"], caption="list rows")
    report.image(rgb, caption="overlay").gallery([(rgb, "one"), (png_bytes(rgb), "two")])
    report.note("careful").bullet_list(["x", "y<"]).preformatted('{"k": 1}')
    path = report.write(tmp_path / "sub" / "r.html")
    html = path.read_text(encoding="utf-8")
    assert "Title &lt;x&gt;" in html and "a &amp; b" in html and "&lt;b&gt;" in html
    assert "0.8123" in html and "<td>–</td>" in html and "list rows" in html
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(uris) == 3
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(uris[0]))))
    assert np.array_equal(decoded, rgb)  # lossless round trip
    assert not list(tmp_path.rglob("*.tmp*"))
    assert "<script" not in html  # self-contained, nothing to fetch or run


def test_the_evaluation_report_scrolls_a_predicted_volume_in_three_views(tmp_path):
    """A volume case's overlay was three axial slices; the report now holds a slice scroller per view
    (axial, coronal, sagittal): every slice of each view as an overlay, a range input, and it opens on
    the slice with the most prediction (issue 28)."""
    import json

    from covseg.data.imageio import write_volume

    from tests.helpers import run_cli

    shape = (20, 22, 10)  # X (patient's left), Y (anterior), Z (superior): RAS voxel axes
    gt = np.zeros(shape, np.uint8)
    gt[5:15, 6:16, 3:7] = 1
    pred = np.zeros(shape, np.float32)
    pred[5:15, 6:12, 4:8] = 0.9  # shifted up one slice, and narrower in Y
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    write_volume(tmp_path / "gt" / "vol.nii.gz", gt, affine, dtype="uint8")
    write_volume(tmp_path / "pred" / "vol.nii.gz", pred, affine, dtype="float32")
    assert (
        run_cli(["evaluate", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--out", tmp_path / "out"])
        == 0
    )
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "Volumes: slice scroller" in page
    data = json.loads(re.search(r"const d=(\{.*?\});for", page).group(1))
    assert {v: len(d["uris"]) for v, d in data.items()} == {"axial": 10, "coronal": 22, "sagittal": 20}
    for view in ("axial", "coronal", "sagittal"):
        assert re.search(
            rf'<input id="scroll-0-{view}" type="range" min="0" max="{len(data[view]["uris"]) - 1}"', page
        )

    def colours(uri: str) -> set[tuple[int, int, int]]:
        rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))
        return {tuple(int(c) for c in px) for px in rgb.reshape(-1, 3)}

    axial = data["axial"]
    for i, z in enumerate(axial["slices"]):  # prediction outline exactly on z 4..7, ground truth on 3..6
        found = colours(axial["uris"][i])
        assert (PRED_COLOUR in found or OVERLAP_COLOUR in found) == (4 <= z < 8), z
        assert (GT_COLOUR in found or OVERLAP_COLOUR in found) == (3 <= z < 7), z
    start = int(re.search(r'id="scroll-0-axial" type="range" min="0" max="9" value="(\d+)"', page).group(1))
    assert 4 <= axial["slices"][start] < 8  # opens where the prediction is
    coronal = data["coronal"]  # Y 6..11 predicted: coronal slices outside show no prediction
    for i, y in enumerate(coronal["slices"]):
        found = colours(coronal["uris"][i])
        assert (PRED_COLOUR in found or OVERLAP_COLOUR in found) == (6 <= y < 12), y
