"""An upload of ``covseg app``: its declared size checked before decoding (:func:`prepare_upload`), then
segmented and kept on disk (:func:`segment_upload` → :class:`Result`); the web server is :mod:`covseg.app`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covseg.data.formats import suffixes
from covseg.errors import CovsegError

UPLOAD_SUFFIXES = suffixes()  # every built-in file format (covseg.data.formats); checked against the registry at upload
VOLUME_UPLOADS = (".nii", ".nii.gz")
MAX_VOXELS = 512**3  # an upload's decoded values (a 512×512×512 CT); larger ones are refused from the header
MAX_PIXELS = 2**25  # 2D uploads: 32 M values (e.g. a 3,300² RGB image)




@dataclass
class Result:
    """One segmented upload, kept on disk in ``folder``: display slices (``display.npy``, 8-bit RGB),
    label slices (``labels.npy``), the mask file, the Grad-CAM map (``explanation.npy``) and overlays."""

    name: str
    folder: Path
    mask_name: str
    summary: dict[str, Any]
    slices: int
    has_explanation: bool = False

    @property
    def mask_path(self) -> Path:
        return self.folder / ("mask.nii.gz" if self.mask_name.endswith(".nii.gz") else "mask.png")

    def display(self, z: int) -> np.ndarray:
        return np.asarray(np.load(self.folder / "display.npy", mmap_mode="r")[z])

    def labels(self, z: int) -> np.ndarray:
        return np.asarray(np.load(self.folder / "labels.npy", mmap_mode="r")[z])


def _save_array(path: Path, array: np.ndarray) -> None:
    from covseg.utils.atomic import write_with

    write_with(path, lambda tmp: np.save(tmp, array, allow_pickle=False))


def _write_display(path: Path, images: list[np.ndarray] | np.ndarray) -> None:
    """The 8-bit display of each slice (as the overlay draws it), written slice by slice to a memory map."""
    from covseg.viz.overlay import to_display_rgb

    grey = np.asarray(images[0]).ndim == 2
    first = to_display_rgb(images[0])
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(images), *first.shape[: 2 if grey else 3]))
    for k, image in enumerate(images):
        rgb = first if k == 0 else to_display_rgb(image)
        out[k] = rgb[..., 0] if grey else rgb
    out.flush()
    del out


def _store(folder: Path, name: str, display: list[np.ndarray] | np.ndarray, labels: np.ndarray, mask_name: str,
           summary: dict[str, Any], explanation: np.ndarray | None = None) -> Result:  # fmt: skip
    """Write a result's arrays into ``folder`` (the mask is already there) and return its handle."""
    _write_display(folder / "display.npy", display)
    _save_array(folder / "labels.npy", np.asarray(labels, dtype=np.uint8))
    if explanation is not None:
        _save_array(folder / "explanation.npy", np.asarray(explanation, dtype=np.float32))
    return Result(name, folder, mask_name, summary, len(display), explanation is not None)



def upload_suffix(filename: str) -> str:
    from covseg.data.imageio import suffix_of

    suffix = suffix_of(Path(filename or "upload"))
    if suffix not in suffixes():
        raise CovsegError(f"unsupported file type {suffix or '(none)'!r}; give one of {', '.join(suffixes())}", Path(filename or "upload"))
    return suffix


def prepare_upload(raw: Path, filename: str, max_voxels: int = MAX_VOXELS, max_pixels: int = MAX_PIXELS) -> Path:
    """Check an uploaded file's declared size before decoding it; the path to read it from.

    A NIfTI volume's header is read first and a shape over ``max_voxels`` refused; a ``.nii.gz`` is
    decompressed beside ``raw`` only as far as its header accounts for. 2D images are refused over
    ``max_pixels`` values from their header. Errors name ``filename``, not the temporary file."""
    from covseg.data.limits import check_image_pixels, check_nifti, inflate_nifti

    suffix, name = upload_suffix(filename), Path(filename).name
    if suffix == ".nii.gz":
        return inflate_nifti(raw, raw.with_name("upload.nii"), max_voxels, name=name)
    if suffix == ".nii":
        try:
            check_nifti(raw, max_voxels)
        except CovsegError as exc:
            raise CovsegError(exc.problem, name) from None
        return raw
    check_image_pixels(raw, max_pixels, name=name)
    return raw


def segment_upload(predictor: Any, path: Path, filename: str, folder: Path, text: str = "", lungs_only: bool = False) -> Result:
    """Segment one uploaded file (``path``, checked by :func:`prepare_upload`; its name ``filename``)
    with ``predictor``, writing the result into ``folder``.

    The prediction is :func:`covseg.inference.case.predict_case`, as ``covseg predict`` makes each row.
    ``lungs_only`` (CT volumes in HU) drops predictions outside the lungs grown by the default
    margin, as ``covseg predict --lungs-only``, and adds the lung volume to the summary."""
    from covseg.inference.case import predict_case
    from covseg.inference.options import PredictOptions
    from covseg.inference.postprocess import LUNGS_NEED_VOLUME

    extra: dict[str, Any] = {}
    if getattr(predictor, "text_guided", False):
        if not text.strip():
            raise CovsegError("this model is text-guided: give a caption (e.g. 'bilateral pulmonary infection, lower left lung')")
        extra["text"] = text.strip()
    name, volume = Path(filename).name, upload_suffix(filename) in VOLUME_UPLOADS
    try:
        if lungs_only and not volume:
            raise CovsegError(f"{LUNGS_NEED_VOLUME} (NIfTI); this is a 2D image", name)
        case = predict_case(predictor, path, PredictOptions(lungs_only=lungs_only), is_volume=volume, **extra)
        if volume:
            return _store_volume(case, predictor, folder, name)
    except CovsegError as exc:
        if exc.path is not None and Path(exc.path).parent == path.parent:  # the temporary file's path means nothing to the user
            raise type(exc)(exc.problem, name) from None
        raise
    return _store_image(case, predictor, path, folder, name)


def _store_volume(case: Any, predictor: Any, folder: Path, name: str) -> Result:
    """A segmented volume's result: display and label slices, the NIfTI mask, volumes in ml, statistics."""
    from covseg.data.imageio import write_volume
    from covseg.data.intensity import to_unit
    from covseg.inference.case import lung_involvement_percent
    from covseg.transforms.orientation import volume_to_slices

    pred, affine = case.prediction, case.affine
    statistics = case.statistics(predictor.num_classes)
    slices = to_unit(volume_to_slices(case.image, affine), case.space) * 255.0
    case.image = None  # the volume's memory goes before the slices are written
    label_slices = volume_to_slices(pred.labels, affine)
    write_volume(folder / "mask.nii.gz", pred.labels, affine, dtype="uint8")
    voxels, voxel_ml = int((pred.labels > 0).sum()), case.voxel_ml()
    per_slice = (label_slices > 0).sum(axis=(1, 2))
    summary = {
        "kind": "volume", "slices": len(slices), "infected_voxels": voxels,
        "infected_ml": round(voxels * voxel_ml, 3),
        "infected_fraction": round(float((pred.labels > 0).mean()), 5),
        "start_slice": int(np.argmax(per_slice)) if voxels else len(slices) // 2,
        "statistics": statistics,
    }  # fmt: skip
    if case.lung_mask is not None:
        lung_ml = float(case.lung_mask.sum()) * voxel_ml
        summary["lung_ml"] = round(lung_ml, 3)
        summary["infected_percent_of_lungs"] = round(lung_involvement_percent(voxels * voxel_ml, lung_ml), 3)
    return _store(folder, name, slices, label_slices, f"{_stem(name)}_mask.nii.gz", summary)


def _store_image(case: Any, predictor: Any, path: Path, folder: Path, name: str) -> Result:
    """A segmented 2D image's result: the mask, pixel counts, statistics, class probabilities and Grad-CAM (joint models)."""
    from covseg.data.imageio import write_mask
    from covseg.data.intensity import to_unit

    image, space, pred = case.image, case.space, case.prediction
    write_mask(folder / "mask.png", pred.labels, scale_binary=predictor.num_classes == 1)
    pixels = int((pred.labels > 0).sum())
    summary = {"kind": "image", "slices": 1, "infected_pixels": pixels,
               "infected_fraction": round(float((pred.labels > 0).mean()), 5), "start_slice": 0}  # fmt: skip
    if pred.labels.ndim == 2:
        from covseg.data.imageio import read_spacing_2d

        try:  # the file's pixel spacing is untrusted: one line naming the upload
            summary["statistics"] = case.statistics(predictor.num_classes, pixel_spacing=read_spacing_2d(path))
        except CovsegError as exc:
            raise CovsegError(exc.problem, name) from None
    if pred.labels.ndim == 2 and predictor.num_classes > 1:
        summary["pixels_per_class"] = {str(c): int((pred.labels == c).sum()) for c in range(1, predictor.num_classes)}
    if pred.class_probs is not None:
        names = getattr(predictor, "class_names", None) or [f"class{c}" for c in range(len(pred.class_probs))]
        summary["class_probabilities"] = {str(n): round(float(p), 4) for n, p in zip(names, pred.class_probs)}
    shown = image if space == "display" else to_unit(image, space) * 255.0  # HU or 0..1 shown as display values
    explanation = None
    if getattr(getattr(predictor, "segmenter", None), "classifies", False):
        from covseg.inference.explain import Explainer

        explanation = Explainer(predictor).explain(image).gradcam
    return _store(folder, name, [shown], pred.labels[None], f"{_stem(name)}_mask.png", summary, explanation)


def _stem(name: str) -> str:
    from covseg.data.imageio import stem_of

    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem_of(name))[:80] or "upload"
