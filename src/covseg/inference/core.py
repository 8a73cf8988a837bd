"""The one code path from network-size tensors to probabilities at original size.

Validation during training and ``covseg predict`` both call it, so a validation score
is exactly what a user gets from the saved run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def logits_to_probs(logits, num_classes: int):
    """Sigmoid for binary models (one channel), softmax for K-class models."""
    import torch

    return torch.sigmoid(logits) if num_classes == 1 else torch.softmax(logits, dim=1)


def predict_probabilities(
    forward: Callable[..., Any],
    images,
    original_sizes: Sequence[tuple[int, int]],
    num_classes: int = 1,
    batch_size: int = 8,
    tta_flip: bool = False,
    extra_inputs: Callable[[slice], dict[str, Any]] | None = None,
) -> list[np.ndarray]:
    """Probabilities per case at its original size: ``(H, W)`` (binary) or ``(K, H, W)``.

    ``forward(x, **extra)`` returns logits at the network size. Logits are resized to the
    original size (bilinear) before the sigmoid/softmax, as upsampling probabilities would
    blur the decision boundary. ``tta_flip`` averages with the horizontally flipped input.
    """
    import torch
    import torch.nn.functional as F

    out: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            x = images[sl]
            extra = extra_inputs(sl) if extra_inputs is not None else {}
            logits = forward(x, **extra)
            if tta_flip:
                flipped = forward(torch.flip(x, dims=[-1]), **extra)
                logits = 0.5 * (logits + torch.flip(flipped, dims=[-1]))
            for i in range(logits.shape[0]):
                size = tuple(original_sizes[start + i])
                li = logits[i : i + 1]
                if tuple(li.shape[-2:]) != size:
                    li = F.interpolate(li, size=size, mode="bilinear", align_corners=False)
                p = logits_to_probs(li, num_classes)[0]
                out.append((p[0] if num_classes == 1 else p).float().numpy())
    return out


def probs_to_labels(prob: np.ndarray, threshold: float = 0.5, num_classes: int = 1) -> np.ndarray:
    """Binary probabilities (any shape) → 0/1 at ``p >= threshold``; K-class ``(K, ...)`` → argmax labels."""
    if num_classes == 1:
        return (prob >= threshold).astype(np.uint8)
    return prob.argmax(axis=0).astype(np.uint8)
