"""Predict from a run folder alone: model spec, weights and preprocessing are read from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from covseg.errors import CovsegError, DataError
from covseg.inference.core import predict_probabilities, probs_to_labels
from covseg.training.run_folder import RunFolder
from covseg.transforms.preprocess import Preprocessing

# 8-bit slices of the field are CT shown through a lung window; NIfTI volumes in HU are
# mapped the same way before a model trained on such slices sees them.
DEFAULT_CT_WINDOW = (-1250.0, 250.0)


@dataclass
class PostprocessOptions:
    """Applied to the thresholded mask: keep the k largest components, drop small ones."""

    largest: int = 0
    min_size: int = 0

    def apply(self, labels: np.ndarray) -> np.ndarray:
        from covseg.inference.postprocess import keep_largest_components, remove_small_components

        if self.min_size > 1:
            labels = remove_small_components(labels, self.min_size)
        if self.largest > 0:
            labels = keep_largest_components(labels, self.largest)
        return labels


@dataclass
class Prediction:
    """Soft map and label map of one 2D image or volume at its original size."""

    probs: np.ndarray
    labels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


class Predictor:
    """A trained model with its preprocessing, ready to segment arrays and files."""

    def __init__(self, model, description: dict[str, Any], run_dir: Path | None = None, channels_last: bool = True) -> None:
        import torch

        self.channels_last = channels_last
        self.model = (model.to(memory_format=torch.channels_last) if channels_last else model).eval()
        self.description = description
        self.run_dir = run_dir
        self.preprocessing = Preprocessing.from_dict(description["preprocessing"])
        self.num_classes = int(description["num_classes"])
        self.threshold = float(description.get("threshold", 0.5))
        self.prior: Predictor | None = None
        if description.get("prior"):
            self.prior = Predictor.from_run(description["prior"]["run"], description["prior"].get("checkpoint", "last"))

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str = "best") -> Predictor:
        """Load the model of a run folder (``best`` or ``last`` checkpoint)."""
        from covseg.training.checkpoint import load_checkpoint, model_from_checkpoint

        run = RunFolder(run_dir)
        if not run.path.is_dir():
            raise CovsegError("run folder not found", run.path)
        description = run.read_json("model.json")
        path = run.checkpoint(checkpoint)
        if not path.exists() and checkpoint == "best":
            path = run.checkpoint("last")
        ckpt = load_checkpoint(path)
        return cls(model_from_checkpoint(ckpt), description, run.path)

    # ------------------------------------------------------------------ arrays
    def _input_tensor(self, images: list[np.ndarray]):
        import torch

        from covseg.transforms.preprocess import resize_tensor

        tensors = []
        priors = self.prior.predict_arrays(images) if self.prior is not None else None
        for i, img in enumerate(images):
            x = torch.from_numpy(self.preprocessing.normalise(img))[None]
            if priors is not None:  # cascade: the binary model's infection map as an extra channel
                x = torch.cat([x, torch.from_numpy(priors[i].astype(np.float32))[None, None]], dim=1)
            size = self.preprocessing.size or _padded_size(x.shape[-2:])
            tensors.append(resize_tensor(x, size)[0])
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:  # no fixed network size: predict one by one
            return tensors
        return torch.stack(tensors)

    def predict_arrays(self, images: list[np.ndarray], tta_flip: bool = False, batch_size: int = 8, **extra) -> list[np.ndarray]:
        """Probabilities at each image's original size (``(H, W)`` or ``(K, H, W)``)."""
        import torch

        sizes = [img.shape[:2] for img in images]
        x = self._input_tensor(images)
        forward = self.forward_fn(**extra)
        if isinstance(x, list):
            out = []
            for xi, size in zip(x, sizes):
                out += predict_probabilities(forward, xi[None], [size], self.num_classes, 1, tta_flip)
            return out
        with torch.inference_mode():
            return predict_probabilities(forward, x, sizes, self.num_classes, batch_size, tta_flip)

    def forward_fn(self, **extra):
        """The callable mapping a network-size batch to logits (text models bind their text)."""
        return lambda x, **_: self.model(self.as_input(x))

    def as_input(self, x):
        """A network-size batch in the model's memory format (channels-last on CPU by default)."""
        import torch

        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def to_labels(self, probs: np.ndarray, post: PostprocessOptions | None = None) -> np.ndarray:
        labels = probs_to_labels(probs, self.threshold, self.num_classes)
        return post.apply(labels) if post else labels

    def predict_image(self, image: np.ndarray, tta_flip: bool = False, post: PostprocessOptions | None = None, **extra) -> Prediction:
        probs = self.predict_arrays([image], tta_flip=tta_flip, **extra)[0]
        return Prediction(probs=probs, labels=self.to_labels(probs, post))

    def predict_volume(
        self,
        volume: np.ndarray,
        affine: np.ndarray,
        tta_flip: bool = False,
        post: PostprocessOptions | None = None,
        window: tuple[float, float] | None = None,
        batch_size: int = 8,
        **extra,
    ) -> Prediction:
        """Slice-by-slice prediction of a volume; outputs in the volume's own geometry."""
        from covseg.transforms.orientation import slices_to_volume, volume_to_slices

        slices = volume_to_slices(volume, affine)
        if self.preprocessing.window is None:
            lo, hi = window or DEFAULT_CT_WINDOW
            slices = np.clip((slices - lo) / (hi - lo), 0, 1) * self.preprocessing.scale
        probs = self.predict_arrays(list(slices), tta_flip=tta_flip, batch_size=batch_size, **extra)
        stacked = np.stack(probs)  # (Z, rows, cols) or (Z, K, rows, cols)
        if stacked.ndim == 3:
            prob_vol = slices_to_volume(stacked, affine)
            labels = self.to_labels(prob_vol, post)
        else:
            prob_vol = np.stack([slices_to_volume(stacked[:, k], affine) for k in range(stacked.shape[1])])
            labels = self.to_labels(prob_vol, post)
        return Prediction(probs=prob_vol.astype(np.float32), labels=labels)


def _padded_size(size) -> tuple[int, int]:
    return (int(size[0]), int(size[1]))


def list_inputs(path: Path) -> list[Path]:
    """Image and NIfTI files of a file or folder (sorted), with a clear error when empty."""
    from covseg.data.imageio import IMAGE_SUFFIXES, suffix_of

    if not path.exists():
        raise DataError("input not found", path)
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and suffix_of(p) in (*IMAGE_SUFFIXES, ".nii", ".nii.gz", ".npy"))
    if not files:
        raise DataError("no images (PNG/JPG/TIF/BMP/NIfTI) in folder", path)
    return files
