"""Figure of one image under each prompt type: rows are models, columns prompt types."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from covseg.viz.overlay import overlay, thumbnail


def prompt_figure(
    image: np.ndarray,
    gt: np.ndarray,
    masks: dict[str, dict[str, np.ndarray]],
    prompts: dict[str, str],
    path: str | Path,
    title: str = "",
) -> Path:
    """``masks[model][type]`` over ``image`` (ground truth green, prediction red), each prompt under its column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from covseg.utils.atomic import write_with

    models = list(masks)
    types = list(prompts)
    fig, axes = plt.subplots(len(models), len(types), figsize=(2.4 * len(types), 2.5 * len(models) + 0.9), squeeze=False)
    gt = np.asarray(gt) > 0
    for r, m in enumerate(models):
        for c, t in enumerate(types):
            ax = axes[r, c]
            pred = masks[m][t]
            ax.imshow(thumbnail(overlay(image, gt, pred), 256))
            inter, total = np.logical_and(pred, gt).sum(), pred.sum() + gt.sum()
            ax.text(3, 16, f"Dice {2 * inter / max(total, 1):.2f}", color="yellow", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(t, fontsize=9)
            if r == len(models) - 1:
                ax.set_xlabel("\n".join(textwrap.wrap(prompts[t], 30)[:5]), fontsize=6)
            if c == 0:
                ax.set_ylabel(m, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = write_with(path, lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)
    return out
