"""Pictures of a joint model: heatmap overlays, the explanation panel, the ROC curve, the classification report.

- :func:`heatmap_overlay`: a heatmap (normalised by its maximum) in a colour map over the image,
  the lesion's outline in green when the ground truth is known;
- :func:`explanation_panel`: one image side by side as segmentation overlay, Grad-CAM and
  attention, titled with the class probabilities (``covseg explain`` writes it to ``panels/``);
- :func:`roc_png`: the ROC curve with its AUC;
- :func:`add_classification_sections`: the classification and explanation sections of the
  ``covseg evaluate`` report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from covseg.viz.overlay import GT_COLOUR, outline, overlay, to_display_rgb
from covseg.viz.plots import figure_png, new_figure


def heatmap_rgb(heat: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """A non-negative heatmap as RGB uint8 through ``cmap``, scaled so its maximum is the top colour."""
    from matplotlib import colormaps

    h = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float64)), 0.0, None)
    top = float(h.max())
    scaled = h / top if top > 0 else h
    return (colormaps[cmap](scaled)[..., :3] * 255.0).round().astype(np.uint8)


def heatmap_overlay(image: Any | None, heat: np.ndarray, gt: Any | None = None, alpha: float = 0.45) -> np.ndarray:
    """``heat`` blended over ``image`` (more opaque where the heat is high); the gt outline in green."""
    h = np.asarray(heat, dtype=np.float64)
    canvas = to_display_rgb(image, h.shape).astype(np.float64)
    if canvas.shape[:2] != h.shape:
        raise ValueError(f"heatmap shape {h.shape} differs from image shape {canvas.shape[:2]}")
    top = float(np.clip(h, 0, None).max())
    weight = (np.clip(h, 0, None) / top if top > 0 else np.zeros_like(h))[..., None]
    out = (1 - alpha * weight) * canvas + alpha * weight * heatmap_rgb(h)
    if gt is not None:
        out[outline(np.asarray(gt) > 0)] = GT_COLOUR
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def explanation_panel(image: np.ndarray, explanation: Any, class_names: Sequence[str], gt: Any | None = None) -> np.ndarray:
    """Segmentation overlay | Grad-CAM | attention of one explained image, as one RGB picture."""
    pred = explanation.prediction
    tiles = [("segmentation (red)" + (", ground truth (green)" if gt is not None else ""), overlay(image, gt, pred.labels))]
    target = class_names[explanation.target_class] if class_names else str(explanation.target_class)
    tiles.append((f"Grad-CAM of '{target}'", heatmap_overlay(image, explanation.gradcam, gt)))
    if explanation.attention is not None:
        tiles.append(("segmentation attention", heatmap_overlay(image, explanation.attention, gt)))
    probs = pred.class_probs
    title = ""
    if probs is not None:
        title = ", ".join(f"p({name}) = {p:.3f}" for name, p in zip(class_names, probs))
    fig = new_figure(3.2 * len(tiles), 3.6, dpi=100)
    for i, (caption, rgb) in enumerate(tiles):
        ax = fig.add_subplot(1, len(tiles), i + 1)
        ax.imshow(rgb)
        ax.set_title(caption, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _png_to_rgb(figure_png(fig))


def _png_to_rgb(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB")).copy()


def panel_thumbnail(path: Any, max_side: int = 720) -> np.ndarray:
    """A panel PNG written by ``covseg explain``, downscaled for a report."""
    from PIL import Image

    from covseg.viz.overlay import thumbnail

    with Image.open(path) as im:
        return thumbnail(np.asarray(im.convert("RGB")), max_side)


def roc_png(fpr: Sequence[float], tpr: Sequence[float], auc: float, title: str = "ROC") -> bytes:
    """The ROC curve (false-positive rate against sensitivity) with the chance diagonal and the AUC."""
    fig = new_figure(4.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1, label="chance")
    if len(fpr) and not any(math.isnan(v) for v in [*fpr, *tpr]):
        ax.plot(fpr, tpr, color="#c0392b", linewidth=2, drawstyle="default", label=f"AUC = {auc:.3f}")
    else:
        ax.text(0.5, 0.4, "undefined: one class only", ha="center")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("1 − specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return figure_png(fig)


def add_classification_sections(report: Any, summary: dict[str, Any], panels: Sequence[tuple[np.ndarray, str]] = ()) -> None:
    """The classification table, confusion matrix and ROC curve, the explanation scores and panels."""
    cls = summary.get("classification")
    if cls:
        names = cls["params"]["class_names"]
        report.heading("Classification")
        report.paragraph(
            f"{cls['num_cases']} cases with an image-level label ({cls.get('labels_from', 'labels')}); per class: "
            + ", ".join(f"{n} {c}" for n, c in zip(names, cls["class_counts"]))
            + f". Rule: {cls['params']['rule']}."
        )
        report.table([[k, v] for k, v in cls["metrics"].items()], ["metric", "value"], caption="Classification metrics")
        matrix = [[f"true {n}", *row] for n, row in zip(names, cls["confusion_matrix"])]
        report.table(matrix, ["", *(f"predicted {n}" for n in names)], caption="Confusion matrix")
        roc = cls["roc"]
        report.image(roc_png(roc["fpr"], roc["tpr"], cls["metrics"]["auc"]), caption="ROC curve (any infection class vs the negative class)")
    explanation = summary.get("explanation")
    if explanation:
        report.heading("Explanations")
        rows = []
        for kind, agg in explanation.items():
            m = agg["metrics"]
            rows.append([kind, m["inside_share"]["mean"], agg["pointing_game"], m["mask_fraction"]["mean"], m["pointing_hit"]["n"]])
        report.table(
            rows,
            ["heatmap", "share inside lesion", "pointing game", "chance level (lesion area share)", "cases"],
            caption="Is the explanation on the lesion? (cases with a non-empty ground truth)",
        )
    if panels:
        report.gallery(panels)
