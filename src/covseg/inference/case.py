"""One input file predicted: :func:`predict_case`, shared by the batch writer and the web app.

Reading the file, deciding its intensity space (:func:`covseg.data.intensity.space_of`), the
prediction with the options asked for (TTA, window, postprocessing, lungs only) and the numbers
of a row (foreground, lung volume, class probabilities, statistics) are done here once; what each
caller writes (``predictions.csv`` and files, or the app's result folder) stays with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covseg.inference.options import PredictOptions
from covseg.inference.results import Prediction


@dataclass
class CaseResult:
    """An input's pixels (a 2D image, or a volume with its ``affine``), their intensity ``space``
    and the :class:`~covseg.inference.predictor.Prediction` at the input's own size."""

    path: Path
    image: np.ndarray
    space: str
    prediction: Prediction
    affine: np.ndarray | None = None

    @property
    def is_volume(self) -> bool:
        return self.affine is not None

    @property
    def labels(self) -> np.ndarray:
        return self.prediction.labels

    @property
    def lung_mask(self) -> np.ndarray | None:
        """The lung mask used by ``lungs_only`` (volumes; without the margin), else None."""
        return self.prediction.meta.get("lung_mask")

    def voxel_ml(self) -> float:
        from covseg.transforms.volume import voxel_volume_ml

        return voxel_volume_ml(self.affine)

    def statistics(self, num_classes: int, pixel_spacing: Any = None) -> dict:
        """:func:`covseg.inference.statistics.case_statistics` of the prediction (``covseg predict --statistics``
        and the app show the same numbers); 2D images take the file's ``pixel_spacing``."""
        from covseg.inference.statistics import case_statistics

        if self.is_volume:
            return case_statistics(self.labels, affine=self.affine, intensities=self.image, space=self.space,
                                   num_classes=num_classes, lungs=self.lung_mask)  # fmt: skip
        return case_statistics(self.labels, pixel_spacing=pixel_spacing, intensities=self.image if self.image.ndim == 2 else None,
                               space=self.space, num_classes=num_classes)  # fmt: skip


def predict_case(predictor: Any, path: Path, options: PredictOptions | None = None, is_volume: bool | None = None, **extra: Any) -> CaseResult:
    """Read ``path`` (an image, a NIfTI volume, a DICOM series or a stack of slices) and predict it with
    ``predictor`` (a :class:`~covseg.inference.predictor.BasePredictor`: one run, an ensemble, an export) and
    ``options`` (default :class:`PredictOptions`); ``extra`` (``text=``) reaches the model's adapters.

    ``is_volume`` None decides from the path (:func:`covseg.data.imageio.is_volume`). Errors are the
    reader's and the predictor's, unchanged: callers name the file as their users know it."""
    from covseg.data.intensity import space_of

    options = options or PredictOptions()
    if is_volume is None:
        from covseg.data.imageio import is_volume as volume_path

        is_volume = volume_path(path)
    if is_volume:
        from covseg.data.imageio import read_volume

        volume, _, affine = read_volume(path)
        space = space_of(path, volume)
        pred = predictor.predict_array(volume, affine, options, space=space, **extra)
        return CaseResult(Path(path), volume, space, pred, affine)
    from covseg.data.imageio import read_image

    image = read_image(path)
    space = space_of(path, image)
    pred = predictor.predict_array(image, options=options, space=space, **extra)
    return CaseResult(Path(path), image, space, pred)


def lung_involvement_percent(infected_ml: float, lung_ml: float) -> float:
    """Infected volume as a percentage of the lung mask's volume (the share CT severity scores grade).

    The lung mask is the classical air-based one, which can leave dense consolidation out, so on
    such scans this overstates the share (it can pass 100 with ``--lung-margin`` > 0)."""
    return float(100.0 * infected_ml / lung_ml) if lung_ml > 0 else 0.0


def class_columns(class_probs: np.ndarray | None, names: list[str] | None) -> dict:
    """``predicted_class`` and one ``p_<name>`` column per class of a joint model's prediction ({} without)."""
    if class_probs is None:
        return {}
    names = names or [f"class{c}" for c in range(len(class_probs))]
    return {"predicted_class": names[int(np.argmax(class_probs))], **{f"p_{n}": float(p) for n, p in zip(names, class_probs)}}
