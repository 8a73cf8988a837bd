"""Predict from a run folder alone: one :class:`Predictor` for image-only, text-guided and cascade runs.

A predictor is a run's :class:`~covseg.engine.segmenter.Segmenter` (model, preprocessing, input
adapters, inferer) plus what users need on top: thresholds and postprocessing, 2D images and
volumes in their own geometry. What a model reads beside the image comes in as keyword
arguments (``text="..."`` or ``texts=[...]``) and reaches the adapters as contexts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covseg.data.intensity import LUNG_WINDOW, intensity_space
from covseg.engine.runtime import Runtime
from covseg.engine.segmenter import SPACE_KEY, WINDOW_KEY, Segmenter, SegmenterOutput, probs_to_labels
from covseg.errors import CovsegError, DataError
from covseg.inference.inputs import list_inputs as list_inputs  # torch-free, re-exported
from covseg.inference.results import PostprocessOptions as PostprocessOptions
from covseg.inference.results import Prediction as Prediction

# 8-bit slices of the field are CT shown through a lung window; inputs in HU are mapped the same
# way before a model trained on such slices sees them (covseg.data.intensity decides what is HU).
DEFAULT_CT_WINDOW = LUNG_WINDOW


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
    """A predictor's input-level methods (:meth:`predict_array`, :meth:`predict_file`, :meth:`predict_folder`),
    built on the two a subclass gives: ``_outputs`` (a batch of 2D images) and ``_volume_probabilities``."""

    num_classes: int
    threshold: float
    #: names of a joint model's image-level classes (negative first); None without a classifier
    class_names: list[str] | None = None
    #: True when the predictor segments whole volumes (3D or 2.5D runs): folders of slices are stacked
    volumetric: bool = False

    def _outputs(self, images: Sequence[np.ndarray], tta_flip: bool | Sequence[int] = False, batch_size: int = 8, **extra: Any) -> SegmenterOutput:
        """Soft maps of 2D images at their own sizes and, for joint models, class probabilities."""
        raise NotImplementedError

    def _volume_probabilities(self, volume: np.ndarray, affine: np.ndarray, tta_flip: bool | Sequence[int] = False, window=None,
                              batch_size: int = 8, space: str | None = None, **extra: Any) -> np.ndarray:  # fmt: skip
        """Soft maps of a volume in its own geometry."""
        raise NotImplementedError

    def to_labels(self, probs: np.ndarray, post: PostprocessOptions | None = None) -> np.ndarray:
        """Labels from soft maps (threshold, or argmax for several classes), then the postprocessing asked for."""
        labels = probs_to_labels(probs, self.threshold, self.num_classes)
        return post.apply(labels) if post else labels

    # -- by input level (nnU-Net's predict_single_npy_array / predict_from_files) ------------------------
    def predict_array(self, array: np.ndarray, affine: np.ndarray | None = None, options: Any = None, **extra: Any) -> Prediction:
        """An array in memory: a 2D image (H×W or H×W×C), or with ``affine`` a volume in its own geometry;
        ``options`` (:class:`covseg.inference.options.PredictOptions`) gives TTA, window, batch size and postprocessing.
        ``extra``: ``text=`` (text-guided runs) and ``space=`` (the array's intensity space: ``hu``, ``display``,
        ``unit``; give :func:`covseg.data.intensity.space_of` of its file, else its values decide). For a volume
        with ``lungs_only``, the lung mask used is in ``meta["lung_mask"]`` (uint8, without the margin)."""
        from covseg.inference.options import PredictOptions

        options = options or PredictOptions()
        if affine is None:
            return self._predict_image(array, options.tta_flip, options.post, **extra)
        return self._predict_volume(array, affine, options, **extra)

    def predict_batch(self, images: Sequence[np.ndarray], tta_flip: bool = False, batch_size: int = 8, **extra: Any) -> SegmenterOutput:
        """Soft maps (and a joint model's class probabilities) of several 2D images at their own sizes, in
        forward passes of ``batch_size``; ``extra``: ``texts=`` (one prompt per image, text-guided runs)."""
        return self._outputs(images, tta_flip=tta_flip, batch_size=batch_size, **extra)

    def predict_image(self, image: np.ndarray, tta_flip: bool = False, post: PostprocessOptions | None = None, **extra: Any) -> Prediction:
        """One 2D image (H×W or H×W×C) at its own size: :meth:`predict_array` of an image, with TTA and
        postprocessing as keywords (kept for scripts and the speed benchmarks, which name it)."""
        return self._predict_image(image, tta_flip, post, **extra)

    def predict_file(self, path: str | Path, options: Any = None, **extra: Any):
        """One file (image, NIfTI, DICOM series, stack of slices) read in its own intensity space:
        a :class:`covseg.inference.case.CaseResult` (the pixels read and the prediction), writing nothing."""
        from covseg.inference.case import predict_case

        return predict_case(self, Path(path), options, **extra)

    def predict_folder(self, input: str | Path, output: str | Path, options: Any = None, **kwargs: Any):
        """A file or folder of inputs into ``output`` (masks, soft maps, ``predictions.csv``) as ``covseg predict``
        writes them: :func:`covseg.inference.batch.predict_files` (``kwargs``: ``overlays``, ``extra_for``, ``on_done``...)."""
        from covseg.inference.batch import predict_files
        from covseg.inference.options import PredictOptions

        options = options or PredictOptions()
        files = list_inputs(Path(input), volumes=self.volumetric or options.lungs_only, stack_spacing=options.stack_spacing, series_folders=True)
        return predict_files(self, files, Path(output), options, **kwargs)

    # -- the two input kinds, behind predict_array ----------------------------------------------------------
    def _predict_image(self, image: np.ndarray, tta_flip: bool | Sequence[int], post: PostprocessOptions | None, **extra: Any) -> Prediction:
        """A 2D image's soft map, labels and class probabilities (a batch of one through ``_outputs``)."""
        if post is not None and post.lungs_only:
            from covseg.inference.postprocess import LUNGS_NEED_VOLUME

            raise DataError(f"{LUNGS_NEED_VOLUME}; this is a 2D image")
        out = self._outputs([image], tta_flip=tta_flip, **extra)
        probs = out.probs[0]
        class_probs = None if out.class_probs is None else out.class_probs[0]
        return Prediction(probs=probs, labels=self.to_labels(probs, post), class_probs=class_probs)

    def _predict_volume(self, volume: np.ndarray, affine: np.ndarray, options: Any, space: str | None = None, **extra: Any) -> Prediction:
        """A volume's prediction in its own geometry; with ``lungs_only`` the lungs are found before the network runs."""
        post = options.post
        meta: dict[str, Any] = {}
        lungs = None
        space = space or intensity_space(volume)
        if post.lungs_only:  # before the network: a volume without lungs costs no inference
            from covseg.inference.postprocess import lungs_of

            lungs = lungs_of(volume, affine, space)
        probs = self._volume_probabilities(volume, affine, tta_flip=options.tta_flip, window=options.window,
                                           batch_size=options.batch_size, space=space, **extra)  # fmt: skip
        if lungs is not None:
            from covseg.inference.postprocess import zero_outside
            from covseg.transforms.lungmask import dilate_mm

            probs = zero_outside(probs, dilate_mm(lungs, affine, post.lung_margin_mm), self.num_classes)
            meta["lung_mask"] = lungs.astype(np.uint8)
        return Prediction(probs=probs.astype(np.float32, copy=False), labels=self.to_labels(probs, post), meta=meta)


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
        if segmenter.classifies and spec is not None:  # the run names its classes (a derived score has no head args)
            self.class_names = list(spec.class_names)
        elif segmenter.classifies:
            init_args = getattr(segmenter.model, "init_args", None) or segmenter.description.init_args  # an export has only the card's
            classes = int(init_args["heads"]["classification"]["classes"])
            self.class_names = [f"class{c}" for c in range(classes)]

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

    def _outputs(self, images, tta_flip=False, batch_size=8, **extra):
        """Soft maps at each image's original size (``(H, W)`` or ``(K, H, W)``) and, for joint models,
        class probabilities; ``text=`` or ``texts=`` reach the adapters."""
        contexts = contexts_for(len(images), **extra)
        return self.segmenter.infer(images, contexts, batch_size=batch_size, tta_flip=tta_flip)

    def _volume_probabilities(self, volume, affine, tta_flip=False, window=None, batch_size=8, space=None, **extra):
        """Probabilities of a volume in the volume's own geometry: a volume run (3D or 2.5D) through its
        volume plan (its own window; ``tta_flip`` True or spatial axes of the RAS grid), a 2D run slice by
        slice; both map intensities by the volume's ``space`` (None: decided from the whole volume's values)."""
        from covseg.transforms.orientation import slices_to_volume, volume_to_slices

        space = space or intensity_space(volume)
        if self.volumetric:
            context = contexts_for(1, **extra)[0]
            return self.segmenter.volume_probabilities(volume, affine, tta_flip=tta_flip, batch_size=batch_size, context=context, space=space)

        probs = self._slices_probabilities(volume_to_slices(volume, affine), tta_flip, batch_size, space=space, window=window, **extra)
        if probs.ndim == 3:  # (Z, rows, cols)
            return slices_to_volume(probs, affine)
        return np.stack([slices_to_volume(probs[k], affine) for k in range(probs.shape[0])])

    def _slices_probabilities(self, slices: np.ndarray, tta_flip, batch_size: int, **extra: Any) -> np.ndarray:
        """A 2D run over a volume's slices ``(Z, rows, cols)`` through the registered ``slices`` inferer
        (:class:`covseg.engine.inferers.SliceInferer`) around the run's own: ``(Z, rows, cols)`` or ``(K, Z, rows, cols)``.

        Each slice is prepared as a 2D image of the volume (its intensity space and window), the slices
        stacked into one ``(C, Z, rows, cols)`` input, and the run's inferer meets them in batches of
        ``batch_size`` slices, as validation does for a 2D model trained on volumes."""
        import copy

        import torch

        from covseg.engine.inferers import SliceInferer

        context = contexts_for(1, **extra)[0]
        x = torch.stack([self.segmenter.prepare(s, context) for s in slices], dim=1)
        sliced = copy.copy(self.segmenter)  # the same model and adapters, the slices inferer around the run's own
        sliced.inferer = SliceInferer(self.segmenter.inferer, axis=0)
        return sliced.infer([x], [context], batch_size=batch_size, tta_flip=tta_flip).probs[0]
