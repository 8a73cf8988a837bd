"""A model with its preprocessing, input adapters and inferer: images of any size → probabilities.

:class:`Segmenter` is the one path from an image (or a prepared input tensor) to a probability
map at the input's size. The trainer validates through it with the model it is training; the
predictor, the cascade's prior input and ensembles load it from a run folder
(:meth:`Segmenter.from_run`), so validation scores are what users get from the saved run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covseg.engine.adapters import InputAdapter
from covseg.engine.inferers import Inferer, ResizeInferer, build_inferer
from covseg.engine.model_call import as_input, call_model
from covseg.engine.runtime import Runtime
from covseg.errors import CovsegError
from covseg.registry import INPUT_ADAPTERS
from covseg.transforms.network_io import probs_to_labels as probs_to_labels  # torch-free, re-exported
from covseg.transforms.preprocess import Preprocessing
from covseg.transforms.volume import VolumePlan


def logits_to_probs(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Sigmoid for binary models (one channel), softmax over the channel axis for K-class models."""
    return torch.sigmoid(logits) if num_classes == 1 else torch.softmax(logits, dim=1)


#: context keys of an input's intensity space (``hu``, ``display``, ``unit``) and of a user's HU window
SPACE_KEY = "intensity_space"
WINDOW_KEY = "window"
#: context key the segmenter adds so that class logits find their image (windows, slices, batches)
CASE_KEY = "_case"


@dataclass
class SegmenterOutput:
    """Each input's soft map and, for a model with a classification head, its class probabilities ``(K,)``."""

    probs: list[np.ndarray]
    class_probs: list[np.ndarray] | None = None


def most_positive(class_logits: Sequence[torch.Tensor]) -> np.ndarray:
    """Class probabilities of an image from the logits of its parts (sliding windows, slices of a volume):
    those of the part most likely not negative (the largest ``1 − p(class 0)``): infection anywhere makes
    the image positive. A whole image (one part) gives its own probabilities."""
    probs = torch.softmax(torch.stack(list(class_logits)).float(), dim=1)
    return probs[int(torch.argmax(1.0 - probs[:, 0]))].cpu().numpy()


class Segmenter:
    """``infer(inputs, contexts)``: each input's soft map at its own size.

    Binary models give ``(*spatial)`` maps, K-class models ``(K, *spatial)``. ``adapters`` add input
    channels and keyword inputs (cascade prior, text); ``inferer`` decides how an input meets
    the network (resize, sliding window, slices). ``description`` is the run description when
    loaded from a run folder. ``volume_plan`` makes it a volume segmenter (3D or 2.5D model):
    :meth:`volume_probabilities` preprocesses, infers and restores a whole volume; ``cascade`` is a
    coarse segmenter whose map gives the region of interest (the coarse-to-fine cascade).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocessing: Preprocessing,
        num_classes: int,
        adapters: Sequence[InputAdapter] = (),
        inferer: Inferer | None = None,
        threshold: float = 0.5,
        channels_last: bool = True,
        description: Any = None,
        run_dir: Path | None = None,
        runtime: Runtime | None = None,
        volume_plan: VolumePlan | None = None,
        cascade: Any = None,
        volume_channels_last: bool = False,
    ) -> None:
        self.model = model
        self.preprocessing = preprocessing
        self.num_classes = int(num_classes)
        self.adapters = list(adapters)
        self.inferer = inferer or ResizeInferer(preprocessing.size)
        self.threshold = float(threshold)
        self.channels_last = channels_last
        self.description = description
        self.run_dir = run_dir
        self.runtime = runtime or Runtime()
        self.volume_plan = volume_plan
        self.cascade = cascade
        #: a 3D model stored NDHWC (:meth:`from_run` on the CPU): its inputs are passed in that format too
        self.volume_channels_last = volume_channels_last

    # -- loading --------------------------------------------------------------------------------------
    @classmethod
    def from_run(
        cls, run_dir: str | Path, checkpoint: str = "best", runtime: Runtime | None = None, _seen: tuple[Path, ...] = ()
    ) -> Segmenter:
        """The segmenter a run folder describes (``best`` or ``last`` checkpoint), ready for inference
        on ``runtime``'s device (weights load to the CPU first, so a GPU-trained run predicts on a CPU)."""
        from covseg.runs.checkpoint import checkpoint_model_spec, load_checkpoint, model_from_checkpoint
        from covseg.runs.folder import RunFolder
        from covseg.runs.packing import WEIGHTS, is_packed, load_packed, resolve_run_dir

        run = RunFolder(resolve_run_dir(run_dir))
        here = run.path.resolve()
        if here in _seen:
            raise CovsegError("prior runs form a loop (a run folder is its own prior)", run.path / "model.json")
        description = run.description()
        if is_packed(run.path):  # a shipped (zoo) model or another packed folder
            path = run.path / WEIGHTS
            ckpt = load_packed(run.path, description)
        else:
            path = run.resolve_checkpoint(checkpoint)
            ckpt = load_checkpoint(path)
        model = model_from_checkpoint(ckpt, path=path)
        held = checkpoint_model_spec(ckpt, path)["name"]
        if held != description.name:
            raise CovsegError(f"model.json names model {description.name!r} but the checkpoint holds {held!r}", run.path / "model.json")
        if model.out_channels != description.num_classes:
            raise CovsegError(
                f"model.json says num_classes={description.num_classes} but the checkpoint's model has "
                f"{model.out_channels} outputs",
                run.path / "model.json",
            )

        runtime = runtime or Runtime()

        def load_run(other: Path, which: str) -> Segmenter:
            return cls.from_run(other, which, runtime, (*_seen, here))

        adapters = []
        for factory in INPUT_ADAPTERS.values():
            adapter = factory.from_description(description, model=model, checkpoint=ckpt, run_dir=run.path, load_run=load_run)
            if adapter is not None:
                adapters.append(adapter)
        pre = Preprocessing.from_dict(description.preprocessing.model_dump())
        image_channels = pre.channels
        if description.volume is not None and int(description.init_args.get("spatial_dims", 2)) == 2:
            image_channels *= 2 * description.volume.context_slices + 1  # 2.5D: neighbouring slices as channels
        wanted = image_channels + sum(int(a.extra_channels) for a in adapters)
        takes = getattr(model, "input_channels", None)
        if takes is not None and wanted != takes:
            raise CovsegError(
                f"model.json gives the model {wanted} input channel(s) (image channels {image_channels} + extra inputs) "
                f"but the checkpoint's model takes {takes}",
                run.path / "model.json",
            )
        try:
            inferer = build_inferer(description.inferer.model_dump(), default_size=pre.size)
        except CovsegError as exc:
            raise CovsegError(exc.problem, run.path / "model.json") from None
        model = runtime.prepare_model(model)
        channels_last = getattr(model, "spatial_dims", 2) == 2
        volume_channels_last = getattr(model, "spatial_dims", 2) == 3 and runtime.device.type == "cpu"
        if volume_channels_last:
            # NDHWC: oneDNN's 3D convolutions take 10-26 % less CPU time (the 3D UNet of bench_volume at its
            # 96x96x48 patches, AVX2 and AVX-512 kernels); outputs within 1e-6 of the contiguous model's
            model = model.to(memory_format=torch.channels_last_3d)
        volume_plan = VolumePlan.from_dict(description.volume.model_dump()) if description.volume is not None else None
        cascade = None
        if description.cascade is not None:
            from covseg.engine.cascade import CoarseStage

            cascade = CoarseStage.from_description(description.cascade, run.path, load_run)
        return cls(
            model, pre, description.num_classes, adapters, inferer, description.threshold, channels_last, description, run.path,
            runtime, volume_plan, cascade, volume_channels_last,
        )

    # -- the forward pass -------------------------------------------------------------------------
    def as_input(self, x: torch.Tensor) -> torch.Tensor:
        """A network-size batch in the model's memory format (channels-last on CPU by default)."""
        return as_input(x, self.channels_last)

    def _call_model(self, call, x: torch.Tensor, contexts: Sequence[dict[str, Any]]):
        """``call(input, **keyword inputs)`` on the device under autocast (:func:`call_model`, as training)."""
        if x.ndim == 5 and self.volume_channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return call_model(call, x, contexts, self.adapters, self.runtime, self.channels_last)

    def forward(self, x: torch.Tensor, contexts: Sequence[dict[str, Any]]) -> torch.Tensor:
        """Logits (float32) of a network-size batch; the adapters give the model's keyword inputs."""
        return self._call_model(self.model, x, contexts).float()

    @property
    def classifies(self) -> bool:
        """Whether the model has a classification head (``class_logits``)."""
        return "class_logits" in getattr(self.model, "head_outputs", ())

    def forward_with_classes(self, x: torch.Tensor, contexts: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Segmentation logits and class logits of a network-size batch (joint models)."""
        out = self._call_model(self.model.forward_heads, x, contexts)
        return out["logits"].float(), out["class_logits"].float()

    def _recording_forward(self, record: dict[int, list[torch.Tensor]], tta_flip: bool):
        """A ``forward`` for the inferer that keeps each part's class logits under its case index."""

        def forward(x: torch.Tensor, contexts: Sequence[dict[str, Any]]) -> torch.Tensor:
            logits, class_logits = self.forward_with_classes(x, contexts)
            if tta_flip:
                flipped, flipped_classes = self.forward_with_classes(torch.flip(x, dims=[-1]), self._flipped_contexts(contexts))
                logits = 0.5 * (logits + torch.flip(flipped, dims=[-1]))
                class_logits = 0.5 * (class_logits + flipped_classes)
            for context, row in zip(contexts, class_logits):
                record.setdefault(int(context[CASE_KEY]), []).append(row)
            return logits

        return forward

    def _flip_axes_tta(self, axes: Sequence[int]):
        """A forward averaging the logits over every combination of flips of the spatial ``axes``."""
        import itertools

        combos = [c for r in range(len(axes) + 1) for c in itertools.combinations(sorted(set(axes)), r)]

        def forward(x: torch.Tensor, contexts: Sequence[dict[str, Any]]) -> torch.Tensor:
            total = None
            for combo in combos:
                dims = [a + 2 for a in combo]
                y = self.forward(torch.flip(x, dims=dims) if dims else x, contexts)
                y = torch.flip(y, dims=dims) if dims else y
                total = y if total is None else total + y
            return total / len(combos)

        return forward

    def _flipped_contexts(self, contexts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The contexts of a left-right flipped batch (e.g. captions with left and right swapped)."""
        flipped = list(contexts)
        for adapter in self.adapters:
            flipped = [adapter.flip_context(c) for c in flipped]
        return flipped

    def _flip_tta(self, x: torch.Tensor, contexts: Sequence[dict[str, Any]]) -> torch.Tensor:
        logits = self.forward(x, contexts)
        flipped = self.forward(torch.flip(x, dims=[-1]), self._flipped_contexts(contexts))
        return 0.5 * (logits + torch.flip(flipped, dims=[-1]))

    # -- inputs -----------------------------------------------------------------------------------------
    def prepare(self, image: np.ndarray, context: dict[str, Any] | None = None) -> torch.Tensor:
        """The network input at the image's size: normalised channels, then the adapters' channels."""
        x = torch.from_numpy(self.normalise(image, context or {}))
        extra = [a.channels(image, context or {}) for a in self.adapters if a.extra_channels]
        if extra:
            x = torch.cat([x, *(torch.from_numpy(np.ascontiguousarray(e, dtype=np.float32)) for e in extra)], dim=0)
        return x

    def normalise(self, image: np.ndarray, context: dict[str, Any]) -> np.ndarray:
        """The image's normalised channels: its intensity space (``context["intensity_space"]``, else decided
        from its values by :func:`covseg.data.intensity.intensity_space`) mapped to what the run read in training."""
        from covseg.data.intensity import intensity_space

        space = context.get(SPACE_KEY) or intensity_space(image)
        return self.preprocessing.normalise(image, space, context.get(WINDOW_KEY))

    def infer(
        self,
        inputs: Sequence[np.ndarray | torch.Tensor],
        contexts: Sequence[dict[str, Any]] | None = None,
        batch_size: int = 8,
        tta_flip: bool | Sequence[int] = False,
    ) -> SegmenterOutput:
        """Soft maps of a batch, each at its input's own size (``(*spatial)`` binary, ``(K, *spatial)`` K-class),
        and for joint models each input's class probabilities: the one path of validation, prediction and the inferers.

        A numpy array is an image, prepared here (:meth:`prepare`); a tensor is an input already prepared
        (validation's cached inputs, a volume on its plan's grid, stacked slices). ``tta_flip``: True averages
        with a flip of the last axis; a sequence of spatial axes averages over every combination of flips
        of those axes (nnU-Net's mirroring)."""
        contexts = list(contexts) if contexts is not None else [{} for _ in inputs]
        if any(isinstance(x, np.ndarray) for x in inputs):
            if self.volume_plan is not None:
                raise CovsegError("this run segments volumes (NIfTI, a DICOM series, a folder of slices), not 2D images", self.run_dir)
            inputs = [self.prepare(x, c) if isinstance(x, np.ndarray) else x for x, c in zip(inputs, contexts)]
        record: dict[int, list[torch.Tensor]] | None = None
        if self.classifies:  # joint models are 2D: any flip request is the left-right flip
            record = {}
            contexts = [{**c, CASE_KEY: i} for i, c in enumerate(contexts)]
            forward = self._recording_forward(record, bool(tta_flip))
        elif tta_flip is True:
            forward = self._flip_tta
        elif tta_flip:
            forward = self._flip_axes_tta(list(tta_flip))  # type: ignore[arg-type]
        else:
            forward = self.forward
        self.model.eval()
        for adapter in self.adapters:
            adapter.train(False)
        with torch.inference_mode():
            inputs = [self.runtime.to_device(x) for x in inputs]
            logits = self.inferer(forward, inputs, contexts, batch_size)
            out = []
            for li in logits:
                p = logits_to_probs(li[None], self.num_classes)[0]
                out.append((p[0] if self.num_classes == 1 else p).float().cpu().numpy())
            class_probs = None if record is None else [most_positive(record[i]) for i in range(len(out))]
        return SegmenterOutput(out, class_probs)

    def volume_probabilities(
        self,
        volume: np.ndarray,
        affine: np.ndarray,
        tta_flip: bool | Sequence[int] = False,
        batch_size: int = 8,
        context: dict[str, Any] | None = None,
        space: str | None = None,
    ) -> np.ndarray:
        """A volume's probabilities in its own geometry, through the volume plan: ``(X, Y, Z)`` for
        binary models, ``(K, X, Y, Z)`` for K classes. ``tta_flip=True`` flips the left–right axis;
        ``space`` is the volume's intensity space (None: :func:`covseg.data.intensity.intensity_space` of its values)."""
        from covseg.data.intensity import intensity_space
        from covseg.transforms.volume import prepare_volume, restore_volume

        if self.volume_plan is None:
            raise CovsegError("this run has no volume plan (a 2D run predicts volumes slice by slice)", self.run_dir)
        space = space or intensity_space(volume)
        x, geometry = prepare_volume(volume, affine, self.volume_plan, space)
        if self.cascade is not None:
            x, geometry = self.cascade.crop(self, volume, affine, x, geometry, space)
            if x is None:  # the coarse stage found nothing: nothing to refine
                empty = np.zeros((self.num_classes, *geometry.shape), np.float32)
                if self.num_classes > 1:
                    empty[0] = 1.0
                return empty[0] if self.num_classes == 1 else empty
        axes = (0,) if tta_flip is True else tta_flip
        probs = self.infer([torch.from_numpy(x)], [context or {}], batch_size, tta_flip=axes).probs[0]
        restored = restore_volume(probs[None] if self.num_classes == 1 else probs, geometry)
        return restored[0] if self.num_classes == 1 else restored

    @property
    def text_guided(self) -> bool:
        return any(a.name == "text" for a in self.adapters)

    def adapter(self, name: str) -> InputAdapter | None:
        return next((a for a in self.adapters if a.name == name), None)

