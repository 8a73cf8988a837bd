"""A synthetic dataset that only text can solve (for text-guided tests and demos).

:func:`write_side_task` writes a dataset where every image holds two lesions of the same look,
one in each half; the mask is the one the text names ("... left ..." or "... right ...", image
sides). An image-only model can at best mark both (Dice ≈ 0.67); a model that reads the text
can reach Dice ≈ 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SIDE_PHRASES = {
    "left": ("opacity in the left lung", "left lung infection", "one infected area, left lung"),
    "right": ("opacity in the right lung", "right lung infection", "one infected area, right lung"),
}


def side_task_case(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """One case: 8-bit image, mask of the left lesion, mask of the right lesion, and the side named."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = rng.normal(70.0, 12.0, (size, size)).astype(np.float32)
    masks = []
    for half in (0, 1):
        r = rng.uniform(0.08, 0.14) * size
        cy = rng.uniform(0.25, 0.75) * size
        cx = (rng.uniform(0.2, 0.35) + 0.5 * half) * size
        ry, rx = r * rng.uniform(0.8, 1.25), r * rng.uniform(0.8, 1.25)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        image[inside] += rng.uniform(80.0, 110.0)
        masks.append(inside)
    side = "left" if rng.random() < 0.5 else "right"
    return np.clip(image, 0, 255).astype(np.uint8), masks[0], masks[1], side


def write_side_task(root: str | Path, n: int = 48, size: int = 64, seed: int = 0, phrasing: str = "vary") -> Path:
    """Write ``images/``, ``masks/`` and ``texts.json`` (stem → text) of the side-referring task.

    ``phrasing="vary"`` draws one of three phrasings per case; ``"fixed"`` uses the first.
    """
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    texts: dict[str, str] = {}
    for i in range(n):
        image, left, right, side = side_task_case(rng, size)
        stem = f"case_{i:03d}"
        mask = left if side == "left" else right
        Image.fromarray(image).save(root / "images" / f"{stem}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / "masks" / f"{stem}.png")
        options = SIDE_PHRASES[side]
        texts[stem] = options[int(rng.integers(len(options)))] if phrasing == "vary" else options[0]
    (root / "texts.json").write_text(json.dumps(texts, indent=1), encoding="utf-8")
    return root
