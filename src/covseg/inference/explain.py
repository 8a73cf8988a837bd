"""Why does a joint model call an image infected? Grad-CAM of its classifier and its decoder's attention.

:class:`Explainer` wraps a run's :class:`~covseg.inference.predictor.Predictor` (a model with a
classification head) and gives, per 2D image, at the image's own size:

- the prediction (soft map, mask, class probabilities);
- ``gradcam``: MONAI's :class:`monai.visualize.GradCAM` of the class logit (default: the most
  probable infection class, so a negative image shows what little evidence there is) at the
  model's ``cam_layer`` (``head_input``, the bottleneck feature every classification head reads;
  ``jcs``: its encoder's stride-8 stage, finer than the stride-32 bottleneck) or any layer named;
  raw (ReLU of the gradient-weighted feature sum, non-negative), upsampled bilinearly. MONAI's
  default post-processing maps the maximum to 0 (it flips magnitudes), so it is replaced by the
  identity and the map normalised by its maximum for display only;
- ``attention``: the segmentation branch's attention, for models that give an ``attention``
  output (``jcs``: its finest attention gate, stride 2, which decides per pixel how much of the
  stride-2 encoder feature reaches the output; less its minimum, since gate values sit on a
  baseline), else None.

Grad-CAM needs gradients, so it runs outside ``inference_mode`` on the network-size input the
``resize`` inferer would use. Scores against ground truth (share of the heatmap inside the lesion,
pointing game) are in :mod:`covseg.metrics.explanation`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from covseg.errors import CovsegError, DataError
from covseg.inference.options import PredictOptions
from covseg.inference.predictor import Prediction, Predictor
from covseg.utils.monai_import import import_monai

DEFAULT_LAYER = None  # the model's own cam_layer


class _ClassLogits(nn.Module):
    """The model seen from its classifier: ``forward(x)`` returns the class logits less their mean (what
    Grad-CAM differentiates). Softmax ignores a shift shared by all logits, so only the centred part
    is class evidence; for two classes it is half the log-odds ``logit_1 − logit_0``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model.forward_heads(x)["class_logits"]
        return logits - logits.mean(dim=1, keepdim=True)


@dataclass
class Explanation:
    """One image's prediction with its heatmaps (each ``(H, W)``, non-negative, at the image's size)."""

    prediction: Prediction
    gradcam: np.ndarray
    target_class: int
    attention: np.ndarray | None = None


def _identity(x: Any) -> Any:
    return x


def _resize_map(heat: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """A ``(1, 1, h, w)`` map bilinearly resized to ``shape``, as float32 ``(H, W)``, negatives clipped."""
    out = torch.nn.functional.interpolate(heat.float(), size=shape, mode="bilinear", align_corners=False)
    return np.clip(out[0, 0].detach().cpu().numpy(), 0.0, None).astype(np.float32)


class Explainer:
    """Grad-CAM and attention maps of a joint run, beside its prediction."""

    def __init__(self, predictor: Predictor, layer: str | None = DEFAULT_LAYER, target_class: int | None = None) -> None:
        segmenter = predictor.segmenter
        if not segmenter.classifies:
            raise CovsegError(
                "this run has no classification head: covseg explain needs a joint model (jcs, or "
                "model.params.heads.classification)",
                predictor.run_dir,
            )
        if segmenter.text_guided:
            raise CovsegError("explanations of text-guided runs are not supported", predictor.run_dir)
        self.predictor = predictor
        self.segmenter = segmenter
        self.model = segmenter.model
        layer = layer or getattr(self.model, "cam_layer", "head_input")
        self.layer = layer
        self.class_names = predictor.class_names or []
        if target_class is not None and not 0 <= target_class < len(self.class_names):
            raise CovsegError(f"--target-class {target_class} outside the classes {self.class_names}")
        self.target_class = target_class
        names = {name for name, _ in self.model.named_modules()}
        if layer not in names:
            raise CovsegError(f"no layer {layer!r} in the model (Grad-CAM layer; default {self.model.cam_layer})", predictor.run_dir)
        import_monai()
        from monai.visualize import GradCAM

        # eval() first: MONAI puts the module back in training mode after each call if it found it so,
        # and batch norm in training mode would then learn from every explained image
        wrapper = _ClassLogits(self.model).eval()
        self.cam = GradCAM(nn_module=wrapper, target_layers=f"model.{layer}", postprocessing=_identity)

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str = "best", **kwargs: Any) -> Explainer:
        return cls(Predictor.from_run(run_dir, checkpoint, engine="torch"), **kwargs)  # Grad-CAM needs the torch modules

    def network_input(self, image: np.ndarray) -> torch.Tensor:
        """The ``(1, C, h, w)`` input the network sees for ``image`` (normalised, resized to the network size)."""
        from covseg.transforms.preprocess import resize_tensor

        x = self.segmenter.prepare(image, {})
        size = self.segmenter.preprocessing.size
        x = resize_tensor(x[None], tuple(size)) if size else x[None]
        return self.segmenter.as_input(x)

    def explain(self, image: np.ndarray, tta_flip: bool = False) -> Explanation:
        """Prediction, Grad-CAM and attention of one 2D image (``(H, W)`` or ``(H, W, C)``)."""
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 3, 4)):
            raise DataError(f"covseg explain takes 2D images, got an array of shape {image.shape}")
        prediction = self.predictor.predict_array(image, options=PredictOptions(tta=tta_flip))
        probs = prediction.class_probs
        target = self.target_class
        if target is None:
            target = 1 + int(np.argmax(probs[1:])) if probs is not None else 1
        shape = tuple(image.shape[:2])
        x = self.network_input(image)
        self.model.eval()
        with torch.enable_grad():
            heat = self.cam(x, class_idx=target)
        self.model.eval()
        attention = None
        with torch.inference_mode():
            maps = self.model.forward_train(x).get("attention")
        if maps:
            attention = _resize_map(maps[-1], shape)
            attention -= attention.min()  # gate values sit on a baseline; the map is what rises above it
        return Explanation(prediction, _resize_map(torch.as_tensor(heat), shape), int(target), attention)


#: draws one explained image for ``panels/``: ``render(image, explanation, class_names, gt) -> RGB uint8``
PanelRenderer = Any


def explain_files(
    explainer: Explainer,
    files: list[Path],
    out_dir: Path,
    *,
    gt_dir: Path | None = None,
    tolerance: float = 0.0,
    panels: PanelRenderer | None = None,
    tta_flip: bool = False,
    strict: bool = False,
    on_done: Any = None,
):
    """Explain each 2D image file into ``out_dir``; bad files are listed (``failed.txt``) unless ``strict``.

    Writes ``heatmaps/<stem>_gradcam.npy`` (and ``_attention.npy``; float16, raw), ``panels/<stem>.png``
    when a ``panels`` renderer is given, ``explanations.csv`` (one row per image) and, given ground
    truth masks (``gt_dir``: a mask folder or a dataset folder with ``masks/``, paired by stem),
    each heatmap's share inside the lesion and pointing-game hit, summarised in ``summary.json``.
    """
    from covseg.data.formats import suffixes
    from covseg.data.imageio import is_volume, read_image, stem_of, write_image
    from covseg.inference.batch import class_columns, for_each_file, write_failures
    from covseg.metrics.cases import _files_by_stem
    from covseg.metrics.evaluation import _finite_or_none, read_ground_truth, resolve_gt_folder
    from covseg.metrics.explanation import ExplanationMetrics
    from covseg.utils.atomic import write_json, write_with
    from covseg.utils.outputs import OutputFolder

    out_dir = Path(out_dir)
    folder = OutputFolder(
        out_dir, "explain", [*files, getattr(explainer.predictor, "run_dir", None), gt_dir],
        owned=("heatmaps", "panels", "explanations.csv", "summary.json", "failed.txt"), legacy=("explanations.csv",),
    )  # fmt: skip
    folder.prepare()
    masks: dict[str, list[Path]] = {}
    if gt_dir is not None:
        mask_dir, _ = resolve_gt_folder(Path(gt_dir))
        masks = _files_by_stem(mask_dir, suffixes("image", "either", listed=True))
    scores = {kind: ExplanationMetrics(kind, tolerance) for kind in ("gradcam", "attention")}

    def save_map(path: Path, heat: np.ndarray) -> str:
        write_with(folder.check(path), lambda p: np.save(p, heat.astype(np.float16), allow_pickle=False))
        return str(path)

    def work(path: Path) -> dict:
        if is_volume(path):
            raise DataError("covseg explain takes 2D images; cut a volume into slices first (covseg data convert)", path)
        image = read_image(path)
        ex = explainer.explain(image, tta_flip=tta_flip)
        stem = stem_of(path)
        row: dict[str, Any] = {
            "input": str(path),
            **class_columns(ex.prediction.class_probs, explainer.class_names),
            "target_class": explainer.class_names[ex.target_class],
            "foreground_fraction": float((ex.prediction.labels > 0).mean()),
            "gradcam": save_map(out_dir / "heatmaps" / f"{stem}_gradcam.npy", ex.gradcam),
        }
        if ex.attention is not None:
            row["attention"] = save_map(out_dir / "heatmaps" / f"{stem}_attention.npy", ex.attention)
        found = masks.get(stem, [])
        gt = None
        if gt_dir is not None and len(found) == 1:
            gt = read_ground_truth(found[0])[0]
            if gt.shape != ex.gradcam.shape:
                raise DataError(f"ground truth {gt.shape} differs from the image {ex.gradcam.shape}", found[0])
            for kind, heat in (("gradcam", ex.gradcam), ("attention", ex.attention)):
                if heat is not None:
                    rec = scores[kind].update(heat, gt, case_id=stem)
                    row[f"{kind}_inside_share"], row[f"{kind}_pointing_hit"] = rec["inside_share"], rec["pointing_hit"]
        if panels is not None:
            row["panel"] = str(write_image(folder.check(out_dir / "panels" / f"{stem}.png"), panels(image, ex, explainer.class_names, gt)))
        return row

    report = for_each_file(files, work, strict, on_done)
    if report.written:
        _write_rows(out_dir / "explanations.csv", report.written)
    summary = {
        "model": str(explainer.predictor.run_dir),
        "layer": explainer.layer,
        "target_class": "most probable infection class" if explainer.target_class is None else explainer.class_names[explainer.target_class],
        "images": len(report.written),
        "failed": len(report.failed),
        "explanation": {k: acc.aggregate() for k, acc in scores.items() if len(acc)},
    }
    write_json(out_dir / "summary.json", _finite_or_none(summary))
    write_failures(out_dir, report)
    return report, summary


def _write_rows(path: Path, rows: list[dict]) -> None:
    from covseg.utils.outputs import write_csv

    write_csv(path, rows)
