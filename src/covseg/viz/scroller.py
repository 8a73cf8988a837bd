"""A volume's overlay as a slice scroller with three views (axial, coronal, sagittal) inside an HTML report.

Each view is a stack of overlay PNGs (ground truth green, prediction red, as every covseg overlay)
embedded as data URIs, and a range input that swaps them: the report stays one self-contained file
with no request to any server. Slices are taken in RAS and shown in radiological convention (as the
preview picture, :mod:`covseg.viz.preview`), each stretched to square millimetres. A view with more
than ``max_slices`` slices shows that many, evenly spaced, so a 300-slice CT stays a few MB.
"""

from __future__ import annotations

import html
import json
import re

import numpy as np

VIEWS = ("axial", "coronal", "sagittal")
PANEL_HEIGHT = 192


def display_volume(image: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """0..255 display values of a whole volume (one mapping for every slice, so scrolling does not flicker):
    CT in HU through the lung window (-1350..150), anything else min–max; grey without an image."""
    if image is None:
        return np.full(shape, 128, dtype=np.uint8)
    x = np.asarray(image, dtype=np.float32)
    lo, hi = (-1350.0, 150.0) if float(x.min(initial=0)) < -200 else (float(x.min(initial=0)), float(x.max(initial=0)))
    return np.clip((x - lo) / max(hi - lo, 1e-6) * 255.0, 0, 255).astype(np.uint8)


def view_stacks(
    image: np.ndarray | None, gt: np.ndarray | None, pred: np.ndarray, affine: np.ndarray | None = None, max_slices: int = 64
) -> dict[str, list[tuple[int, np.ndarray, int]]]:
    """For each view, ``(slice index, RGB overlay, predicted pixels)`` per shown slice through the volume ``(X, Y, Z)`` (``affine`` None:
    the voxel axes taken as RAS with 1 mm voxels)."""
    from PIL import Image

    from covseg.transforms.volume import oriented_spacing, to_ras
    from covseg.viz.overlay import overlay

    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    shown = display_volume(image, pred.shape)
    vol, ornt = to_ras(shown, affine)
    p = to_ras(np.asarray(pred), affine)[0]
    g = None if gt is None else to_ras(np.asarray(gt), affine)[0]
    sx, sy, sz = oriented_spacing(affine, ornt)

    def show(a: np.ndarray) -> np.ndarray:  # (horizontal, vertical) in RAS → rows top-down, cols radiological
        return a.T[::-1, ::-1]

    cuts = {
        "axial": (2, sy, sx),  # anterior up, patient's right on the left
        "coronal": (1, sz, sx),  # superior up
        "sagittal": (0, sz, sy),  # superior up, anterior on the left
    }
    out: dict[str, list[tuple[int, np.ndarray, int]]] = {}
    for view, (axis, mm_row, mm_col) in cuts.items():
        n = vol.shape[axis]
        picks = np.unique(np.linspace(0, n - 1, min(n, max_slices)).round().astype(int))
        panels = []
        for k in picks:
            take = [slice(None)] * 3
            take[axis] = int(k)
            rgb = overlay(show(vol[tuple(take)]), None if g is None else show(g[tuple(take)]), show(p[tuple(take)]))
            width = max(1, round(PANEL_HEIGHT * rgb.shape[1] * mm_col / (rgb.shape[0] * mm_row)))
            resized = np.asarray(Image.fromarray(rgb).resize((width, PANEL_HEIGHT), Image.Resampling.NEAREST))
            panels.append((int(k), resized, int((p[tuple(take)] > 0).sum())))
        out[view] = panels
    return out


def scroller_html(stacks: dict[str, list[tuple[int, np.ndarray, int]]], caption: str, uid: str) -> str:
    """The markup of one scroller: a figure per view (image, range input, slice number) and its script.
    Each view opens on its slice with the most prediction (red) pixels."""
    from covseg.viz.report import data_uri, png_bytes

    uid = re.sub(r"[^A-Za-z0-9_-]", "_", uid)
    figures, data = [], {}
    for view in VIEWS:
        panels = stacks[view]
        uris = [data_uri(png_bytes(rgb)) for _, rgb, _ in panels]
        counts = [n for _, _, n in panels]
        start = int(np.argmax(counts)) if any(counts) else len(panels) // 2
        data[view] = {"uris": uris, "slices": [k for k, _, _ in panels], "total": int(max(k for k, _, _ in panels) + 1)}
        figures.append(
            f'<figure class="scroller"><img id="{uid}-{view}-img" src="{uris[start]}" alt="{view} slices">'
            f'<input id="{uid}-{view}" type="range" min="0" max="{len(uris) - 1}" value="{start}" data-view="{view}">'
            f'<figcaption>{view} <span id="{uid}-{view}-no">{panels[start][0] + 1} / {data[view]["total"]}</span></figcaption></figure>'
        )
    payload = json.dumps(data).replace("</", "<\\/")
    script = (
        f"<script>(function(){{const d={payload};"
        f'for(const v of {json.dumps(list(VIEWS))}){{const r=document.getElementById("{uid}-"+v);'
        f'r.addEventListener("input",()=>{{const i=Number(r.value);'
        f'document.getElementById("{uid}-"+v+"-img").src=d[v].uris[i];'
        f'document.getElementById("{uid}-"+v+"-no").textContent=(d[v].slices[i]+1)+" / "+d[v].total;}});}}}})();</script>'
    )
    return f'<div class="gallery" id="{uid}">{"".join(figures)}</div><p class="note">{html.escape(caption)}</p>{script}'
