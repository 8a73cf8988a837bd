"""Predict from a run folder alone: one :class:`Predictor` for image-only, text-guided and cascade runs.

A predictor is a run's :class:`~covseg.engine.segmenter.Segmenter` (model, preprocessing, input
adapters, inferer) plus what users need on top: thresholds and postprocessing, 2D images and
volumes in their own geometry. What a model reads beside the image comes in as keyword
arguments (``text="..."`` or ``texts=[...]``) and reaches the adapters as contexts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from covseg.data.intensity import LUNG_WINDOW, intensity_space
from covseg.engine.runtime import Runtime
from covseg.engine.segmenter import SPACE_KEY, WINDOW_KEY, Segmenter, probs_to_labels
from covseg.errors import CovsegError, DataError
from covseg.inference.postprocess import LUNG_MARGIN_MM

# 8-bit slices of the field are CT shown through a lung window; inputs in HU are mapped the same
# way before a model trained on such slices sees them (covseg.data.intensity decides what is HU).
DEFAULT_CT_WINDOW = LUNG_WINDOW


@dataclass
class PostprocessOptions:
    """Applied to the thresholded mask: keep the k largest components, drop small ones.

    ``lungs_only`` (CT volumes in HU only) first sets every voxel of the soft maps, and so of the
    masks, outside the input's lung mask grown by ``lung_margin_mm`` to background
    (:func:`covseg.inference.postprocess.lungs_of`), before the component rules run.
    """

    largest: int = 0
    min_size: int = 0
    lungs_only: bool = False
    lung_margin_mm: float = LUNG_MARGIN_MM

    def apply(self, labels: np.ndarray) -> np.ndarray:
        from covseg.inference.postprocess import keep_largest_components, remove_small_components

        if self.min_size > 1:
            labels = remove_small_components(labels, self.min_size)
        if self.largest > 0:
            labels = keep_largest_components(labels, self.largest)
        return labels


@dataclass
class Prediction:
    """Soft map and label map of one 2D image or volume at its original size; a joint model's
    class probabilities ``(K,)`` (class 0 negative) in ``class_probs``."""

    probs: np.ndarray
    labels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    class_probs: np.ndarray | None = None


def contexts_for(
    n: int,
    text: str | None = None,
    texts: Sequence[str | None] | None = None,
    space: str | None = None,
    window: tuple[float, float] | None = None,
    **_: Any,
) -> list[dict[str, Any]]:
    """Per-image contexts from ``text`` (one for all) or ``texts`` (one per image), with the images'
    intensity ``space`` and a user's HU ``window`` when given (the segmenter maps intensities with them)."""
    if texts is not None:
        if len(texts) != n:
            raise CovsegError(f"{len(texts)} texts for {n} images")
        contexts = [{"text": t} for t in texts]
    else:
        contexts = [{"text": text} for _ in range(n)]
    for context in contexts:
        if space is not None:
            context[SPACE_KEY] = space
        if window is not None:
            context[WINDOW_KEY] = window
    return contexts


class BasePredictor:
    """What every predictor offers from its ``predict_arrays`` and ``volume_probabilities``."""

    num_classes: int
    threshold: float
    #: names of a joint model's image-level classes (negative first); None without a classifier
    class_names: list[str] | None = None

    def predict_outputs(self, images: list[np.ndarray], tta_flip: bool = False, batch_size: int = 8, **extra: Any):
        """Soft maps and (joint models) class probabilities: a :class:`~covseg.engine.segmenter.SegmenterOutput`."""
        from covseg.engine.segmenter import SegmenterOutput

        return SegmenterOutput(self.predict_arrays(images, tta_flip=tta_flip, batch_size=batch_size, **extra))
    #: True when the predictor segments whole volumes (3D or 2.5D runs): folders of slices are stacked
    volumetric: bool = False

    def predict_arrays(self, images: list[np.ndarray], tta_flip: bool = False, batch_size: int = 8, **extra: Any) -> list[np.ndarray]:
        raise NotImplementedError

    def volume_probabilities(self, volume: np.ndarray, affine: np.ndarray, tta_flip: bool = False, window=None, batch_size: int = 8, **extra: Any) -> np.ndarray:
        raise NotImplementedError

    def to_labels(self, probs: np.ndarray, post: PostprocessOptions | None = None) -> np.ndarray:
        """Labels from soft maps (threshold, or argmax for several classes), then the postprocessing asked for."""
        labels = probs_to_labels(probs, self.threshold, self.num_classes)
        return post.apply(labels) if post else labels

    def predict_image(self, image: np.ndarray, tta_flip: bool = False, post: PostprocessOptions | None = None, **extra: Any) -> Prediction:
        """One 2D image (H×W or H×W×C) at its own size: soft map, labels and, for joint models, class probabilities."""
        if post is not None and post.lungs_only:
            from covseg.inference.postprocess import LUNGS_NEED_VOLUME

            raise DataError(f"{LUNGS_NEED_VOLUME}; this is a 2D image")
        out = self.predict_outputs([image], tta_flip=tta_flip, **extra)
        probs = out.probs[0]
        class_probs = None if out.class_probs is None else out.class_probs[0]
        return Prediction(probs=probs, labels=self.to_labels(probs, post), class_probs=class_probs)

    def predict_volume(
        self,
        volume: np.ndarray,
        affine: np.ndarray,
        tta_flip: bool = False,
        post: PostprocessOptions | None = None,
        window: tuple[float, float] | None = None,
        batch_size: int = 8,
        space: str | None = None,
        **extra: Any,
    ) -> Prediction:
        """A volume's prediction in its own geometry (shape and axis order of ``volume``); with
        ``post.lungs_only`` the lung mask used is in ``meta["lung_mask"]`` (uint8, without the margin).
        ``space`` is the volume's intensity space (``hu``, ``display``, ``unit``; give
        :func:`covseg.data.intensity.space_of` of its file, else its values decide); ``window`` applies to HU."""
        meta: dict[str, Any] = {}
        lungs = None
        space = space or intensity_space(volume)
        if post is not None and post.lungs_only:  # before the network: a volume without lungs costs no inference
            from covseg.inference.postprocess import lungs_of

            lungs = lungs_of(volume, affine, space)
        probs = self.volume_probabilities(volume, affine, tta_flip=tta_flip, window=window, batch_size=batch_size, space=space, **extra)
        if lungs is not None:
            from covseg.inference.postprocess import zero_outside
            from covseg.transforms.lungmask import dilate_mm

            probs = zero_outside(probs, dilate_mm(lungs, affine, post.lung_margin_mm), self.num_classes)
            meta["lung_mask"] = lungs.astype(np.uint8)
        return Prediction(probs=probs.astype(np.float32), labels=self.to_labels(probs, post), meta=meta)


class Predictor(BasePredictor):
    """A trained model with its preprocessing and inputs, ready to segment arrays and files."""

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter
        self.num_classes = segmenter.num_classes
        self.threshold = segmenter.threshold
        self.preprocessing = segmenter.preprocessing
        self.description = segmenter.description
        self.run_dir = segmenter.run_dir
        spec = getattr(segmenter.description, "classification", None)
        if segmenter.classifies:
            init_args = getattr(segmenter.model, "init_args", None) or segmenter.description.init_args  # an export has only the card's
            classes = int(init_args["heads"]["classification"]["classes"])
            self.class_names = list(spec.class_names) if spec is not None else [f"class{c}" for c in range(classes)]

    @classmethod
    def from_run(
        cls, run_dir: str | Path, checkpoint: str = "best", device: str = "auto", amp: str = "off", runtime: Runtime | None = None,
        engine: str | None = None,
    ) -> Predictor:
        """Load the model of a run folder (``best``, else ``last`` checkpoint) onto ``device``
        (``auto``: CUDA, else MPS, else CPU); ``runtime`` overrides ``device`` and ``amp``. ``engine``
        (:mod:`covseg.inference.fast_engine`): shipped models run on onnxruntime when installed, unless ``torch``."""
        from covseg.inference.fast_engine import choose_engine

        if runtime is None:
            runtime = Runtime.create(device, amp, distributed=False)
        segmenter = Segmenter.from_run(run_dir, checkpoint, runtime)
        choose_engine(segmenter, engine)
        return cls(segmenter)

    @property
    def runtime(self) -> Runtime:
        return self.segmenter.runtime

    def segmenters(self) -> list[Segmenter]:
        """The segmenters this predictor runs (one; an ensemble has one per member)."""
        return [self.segmenter]

    @property
    def model(self):
        return self.segmenter.model

    @property
    def text_guided(self) -> bool:
        return self.segmenter.text_guided

    @property
    def volumetric(self) -> bool:  # type: ignore[override]
        return self.segmenter.volume_plan is not None

    @property
    def text_encoder(self):
        adapter = self.segmenter.adapter("text")
        return None if adapter is None else adapter.encoder

    def predict_arrays(self, images, tta_flip=False, batch_size=8, **extra):
        """Probabilities at each image's original size (``(H, W)`` or ``(K, H, W)``); ``text=`` or ``texts=``."""
        contexts = contexts_for(len(images), **extra)
        return self.segmenter.probabilities(images, contexts, batch_size=batch_size, tta_flip=tta_flip)

    def predict_outputs(self, images, tta_flip=False, batch_size=8, **extra):
        """Soft maps at each image's original size and, for joint models, class probabilities."""
        contexts = contexts_for(len(images), **extra)
        return self.segmenter.outputs(images, contexts, batch_size=batch_size, tta_flip=tta_flip)

    def volume_probabilities(self, volume, affine, tta_flip=False, window=None, batch_size=8, space=None, **extra):
        """Probabilities of a volume in the volume's own geometry: a volume run (3D or 2.5D) through its
        volume plan (its own window; ``tta_flip`` True or spatial axes of the RAS grid), a 2D run slice by
        slice; both map intensities by the volume's ``space`` (None: decided from the whole volume's values)."""
        from covseg.transforms.orientation import slices_to_volume, volume_to_slices

        space = space or intensity_space(volume)
        if self.volumetric:
            context = contexts_for(1, **extra)[0]
            return self.segmenter.volume_probabilities(volume, affine, tta_flip=tta_flip, batch_size=batch_size, context=context, space=space)

        slices = volume_to_slices(volume, affine)
        stacked = np.stack(self.predict_arrays(list(slices), tta_flip=tta_flip, batch_size=batch_size, space=space, window=window, **extra))
        if stacked.ndim == 3:  # (Z, rows, cols)
            return slices_to_volume(stacked, affine)
        return np.stack([slices_to_volume(stacked[:, k], affine) for k in range(stacked.shape[1])])


def list_inputs(
    path: Path, volumes: bool = False, stack_spacing: tuple[float, float, float] | None = None, series_folders: bool = False
) -> list[Any]:
    """Inputs of a file or folder (sorted), with a clear error when empty: image and NIfTI files, a
    DICOM series folder (the folder itself; with ``series_folders`` also its sub-folders that are series).

    ``volumes`` (a volume run): slice images named ``NAME_<k>`` are stacked into one volume per NAME
    (:class:`covseg.data.stack.SliceStack`, ``stack_spacing`` mm, default 1 mm), since a volume run
    cannot segment them one by one.
    """
    from covseg.data.dicom import is_dicom_series
    from covseg.data.imageio import IMAGE_SUFFIXES, suffix_of

    if not path.exists():
        raise DataError("input not found", path)
    if path.is_file() or is_dicom_series(path):
        return [path]
    # broken links and link loops stay in the list: reading them gives a one-line problem, not silence
    files: list[Any] = sorted(
        p for p in path.iterdir() if (p.is_file() or p.is_symlink()) and suffix_of(p) in (*IMAGE_SUFFIXES, ".nii", ".nii.gz", ".npy")
    )
    series = []
    if series_folders:
        series = sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".") and is_dicom_series(p))
    if volumes:
        from covseg.data.stack import DEFAULT_SPACING, find_stacks

        stacks = find_stacks(path, stack_spacing or DEFAULT_SPACING)
        stacked = {f for s in stacks for f in s.files}
        files = [f for f in files if f not in stacked] + stacks
    files += series
    if not files:
        raise DataError("no images (PNG/JPG/TIF/BMP/NIfTI) or DICOM series in folder", path)
    return files
