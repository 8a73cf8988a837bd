"""Training curves as a PNG in the run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_history(history: list[dict[str, Any]], path: str | Path, monitor: str = "dice") -> Path:
    """Loss (left) and validation metrics (right) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from covseg.utils.atomic import write_with

    epochs = [r["epoch"] + 1 for r in history]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in sorted({k for r in history for k in r if k.startswith("train_")}):
        ax_loss.plot(epochs, [r.get(key, float("nan")) for r in history], label=key[6:])
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("training loss")
    ax_loss.legend(fontsize=7)
    val_keys = sorted({k for r in history for k in r if k.startswith("val_")})
    for key in val_keys:
        pts = [(r["epoch"] + 1, r[key]) for r in history if key in r]
        if pts:
            ax_val.plot(*zip(*pts), marker=".", label=key[4:], linewidth=2 if key == f"val_{monitor}" else 1)
    ax_val.set_xlabel("epoch")
    ax_val.set_title("validation")
    ax_val.set_ylim(0, 1)
    if val_keys:
        ax_val.legend(fontsize=7)
    fig.tight_layout()
    out = write_with(path, lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)
    return out
