"""``covseg app``: a local web app (FastAPI) to segment one image, volume or X-ray at a time.

Open a PNG/JPEG/TIFF/DICOM image or a NIfTI volume (and a caption for text-guided models),
pick a shipped model (``covseg models --pretrained``) or a run folder given on the command line,
and see the prediction drawn over the image (a slice slider for volumes), the infected area or
volume (with "lungs only", CT volumes: predictions outside the lungs dropped, and the share of the
lungs infected), the Grad-CAM map of joint models, and download the mask. It runs on this machine and makes
no external calls: the page has no CDN assets, every user-supplied text reaches it as JSON and is
shown with ``textContent``, never as HTML. Results live in memory (the last few) until the app stops.
"""


import io
import tempfile
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from covseg.errors import CovsegError

UPLOAD_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".npy", ".nii", ".nii.gz")
VOLUME_UPLOADS = (".nii", ".nii.gz")
MAX_RESULTS = 16
PAGE = Path(__file__).resolve().parent / "viz" / "templates" / "app.html"


@dataclass
class Result:
    """One segmented upload: the display slices, the label slices, the mask file and the numbers."""

    name: str
    images: list[np.ndarray]
    labels: list[np.ndarray]
    mask_bytes: bytes
    mask_name: str
    summary: dict[str, Any]
    explanation: np.ndarray | None = None
    overlays: dict[int, bytes] = field(default_factory=dict)


def png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    return buf.getvalue()


class ModelChoices:
    """The models the app offers: shipped ones by name and run folders given at start; loaded once, on first use."""

    def __init__(self, run_dirs: list[Path] | tuple[Path, ...] = ()) -> None:
        from covseg import zoo

        self.entries: dict[str, dict[str, Any]] = {}
        for name in zoo.names():
            card = zoo.card(name)
            self.entries[name] = {"key": name, "label": name, "source": "shipped", "task": card.get("task", ""),
                                  "modality": card.get("modality", "")}  # fmt: skip
        for k, run in enumerate(run_dirs):
            run = Path(run)
            if not (run / "model.json").is_file():
                raise CovsegError("not a run folder (no model.json)", run)
            key = f"run{k}:{run.name}"
            self.entries[key] = {"key": key, "label": f"run folder {run}", "source": "run", "task": "", "modality": "", "path": str(run)}
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()

    def listing(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in e.items() if k != "path"} for e in self.entries.values()]

    def predictor(self, key: str):
        from covseg.inference.loading import load_predictor

        entry = self.entries.get(key)
        if entry is None:
            raise CovsegError(f"unknown model {key!r}")
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = load_predictor(entry.get("path", key), checkpoint="best")
            return self._loaded[key]


def _suffix(filename: str) -> str:
    from covseg.data.imageio import suffix_of

    suffix = suffix_of(Path(filename or "upload"))
    if suffix not in UPLOAD_SUFFIXES:
        raise CovsegError(f"unsupported file type {suffix or '(none)'!r}; give one of {', '.join(UPLOAD_SUFFIXES)}", Path(filename or "upload"))
    return suffix


def segment_upload(predictor: Any, data: bytes, filename: str, text: str = "", lungs_only: bool = False) -> Result:
    """Segment one uploaded file (its bytes and name) with ``predictor``.

    ``lungs_only`` (CT volumes in HU) drops predictions outside the lungs grown by the default
    margin, as ``covseg predict --lungs-only``, and adds the lung volume to the summary."""
    from covseg.data.imageio import read_image, read_volume, write_mask, write_volume
    from covseg.inference.postprocess import LUNGS_NEED_VOLUME

    suffix = _suffix(filename)
    extra: dict[str, Any] = {}
    if getattr(predictor, "text_guided", False):
        if not text.strip():
            raise CovsegError("this model is text-guided: give a caption (e.g. 'bilateral pulmonary infection, lower left lung')")
        extra["text"] = text.strip()
    name = Path(filename).name
    with tempfile.TemporaryDirectory(prefix="covseg_app_") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        if suffix in VOLUME_UPLOADS:
            from covseg.data.intensity import space_of, to_unit
            from covseg.inference.batch import lung_involvement_percent
            from covseg.inference.predictor import PostprocessOptions
            from covseg.transforms.orientation import volume_to_slices
            from covseg.transforms.volume import voxel_volume_ml

            volume, _, affine = read_volume(path)
            space = space_of(path, volume)
            post = PostprocessOptions(lungs_only=True) if lungs_only else None
            try:
                pred = predictor.predict_volume(volume, affine, post=post, space=space, **extra)
            except CovsegError as exc:
                raise CovsegError(exc.problem, name) from None  # the temporary file's path means nothing to the user
            slices = to_unit(volume_to_slices(volume, affine), space) * 255.0
            label_slices = volume_to_slices(pred.labels, affine)
            write_volume(Path(tmp) / "mask.nii.gz", pred.labels, affine, dtype="uint8")
            mask = (Path(tmp) / "mask.nii.gz").read_bytes()
            voxels, voxel_ml = int((pred.labels > 0).sum()), voxel_volume_ml(affine)
            per_slice = (label_slices > 0).sum(axis=(1, 2))
            summary = {
                "kind": "volume", "slices": len(slices), "infected_voxels": voxels,
                "infected_ml": round(voxels * voxel_ml, 3),
                "infected_fraction": round(float((pred.labels > 0).mean()), 5),
                "start_slice": int(np.argmax(per_slice)) if voxels else len(slices) // 2,
            }  # fmt: skip
            if "lung_mask" in pred.meta:
                lung_ml = float(pred.meta["lung_mask"].sum()) * voxel_ml
                summary["lung_ml"] = round(lung_ml, 3)
                summary["infected_percent_of_lungs"] = round(lung_involvement_percent(voxels * voxel_ml, lung_ml), 3)
            return Result(name, list(slices), list(label_slices), mask, f"{_stem(name)}_mask.nii.gz", summary)
        if lungs_only:
            raise CovsegError(f"{LUNGS_NEED_VOLUME} (NIfTI); this is a 2D image", name)
        from covseg.data.intensity import space_of, to_unit

        image = read_image(path)
        space = space_of(path, image)
        pred = predictor.predict_image(image, space=space, **extra)
        write_mask(Path(tmp) / "mask.png", pred.labels, scale_binary=predictor.num_classes == 1)
        mask = (Path(tmp) / "mask.png").read_bytes()
    pixels = int((pred.labels > 0).sum())
    summary = {"kind": "image", "slices": 1, "infected_pixels": pixels,
               "infected_fraction": round(float((pred.labels > 0).mean()), 5), "start_slice": 0}  # fmt: skip
    if pred.labels.ndim == 2 and predictor.num_classes > 1:
        summary["pixels_per_class"] = {str(c): int((pred.labels == c).sum()) for c in range(1, predictor.num_classes)}
    if pred.class_probs is not None:
        names = getattr(predictor, "class_names", None) or [f"class{c}" for c in range(len(pred.class_probs))]
        summary["class_probabilities"] = {str(n): round(float(p), 4) for n, p in zip(names, pred.class_probs)}
    shown = image if space == "display" else to_unit(image, space) * 255.0  # HU or 0..1 shown as display values
    result = Result(name, [shown], [pred.labels], mask, f"{_stem(name)}_mask.png", summary)
    if getattr(getattr(predictor, "segmenter", None), "classifies", False):
        from covseg.inference.explain import Explainer

        result.explanation = Explainer(predictor).explain(image).gradcam
    return result


def _stem(name: str) -> str:
    from covseg.data.imageio import stem_of

    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem_of(name))[:80] or "upload"


def create_app(run_dirs: list[Path] | tuple[Path, ...] = (), max_upload_mb: int = 512):
    """The FastAPI application (``uvicorn`` serves it; tests call it through ``TestClient``).

    (This module does not use postponed annotations: FastAPI reads the endpoint signatures, whose
    types are imported here, inside the function.)"""
    from fastapi import FastAPI, File, Form, HTTPException, UploadFile
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    from covseg.viz.callbacks import prediction_overlay
    from covseg.viz.explanations import heatmap_overlay

    choices = ModelChoices(run_dirs)
    results: OrderedDict[str, Result] = OrderedDict()
    lock = threading.Lock()
    app = FastAPI(title="covseg", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.choices = choices

    def get(rid: str) -> Result:
        with lock:
            found = results.get(rid)
        if found is None:
            raise HTTPException(404, "no such result (the app keeps the last few)")
        return found

    @app.exception_handler(CovsegError)
    async def _bad_input(_request, exc: CovsegError):
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.get("/api/models")
    def models() -> list[dict[str, Any]]:
        return choices.listing()

    @app.post("/api/segment")
    def segment(
        file: UploadFile = File(...), model: str = Form(...), text: str = Form(""), lungs_only: bool = Form(False)
    ) -> dict[str, Any]:
        data = file.file.read(max_upload_mb * 2**20 + 1)
        if len(data) > max_upload_mb * 2**20:
            raise CovsegError(f"file larger than {max_upload_mb} MB")
        if not data:
            raise CovsegError("empty file", Path(file.filename or "upload"))
        result = segment_upload(choices.predictor(model), data, file.filename or "upload", text, lungs_only)
        rid = uuid.uuid4().hex
        with lock:
            results[rid] = result
            while len(results) > MAX_RESULTS:
                results.popitem(last=False)
        base = f"/api/results/{rid}"
        return {
            "id": rid, "name": result.name, "model": model, **result.summary,
            "overlay_url": f"{base}/overlay.png", "mask_url": f"{base}/mask",
            "explanation_url": f"{base}/explanation.png" if result.explanation is not None else None,
        }  # fmt: skip

    @app.get("/api/results/{rid}/overlay.png")
    def overlay_png(rid: str, z: int = 0) -> Response:
        result = get(rid)
        if not 0 <= z < len(result.images):
            raise HTTPException(404, f"slice {z} outside 0..{len(result.images) - 1}")
        if z not in result.overlays:
            result.overlays[z] = png_bytes(prediction_overlay(result.images[z], result.labels[z]))
        return Response(result.overlays[z], media_type="image/png")

    @app.get("/api/results/{rid}/explanation.png")
    def explanation_png(rid: str) -> Response:
        result = get(rid)
        if result.explanation is None:
            raise HTTPException(404, "this model has no classification head, so no explanation map")
        return Response(png_bytes(heatmap_overlay(result.images[0], result.explanation)), media_type="image/png")

    @app.get("/api/results/{rid}/mask")
    def mask(rid: str) -> Response:
        result = get(rid)
        kind = "application/gzip" if result.mask_name.endswith(".gz") else "image/png"
        return Response(result.mask_bytes, media_type=kind, headers={"Content-Disposition": f'attachment; filename="{result.mask_name}"'})

    return app


def serve(run_dirs: list[Path] | tuple[Path, ...] = (), host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the app with uvicorn until Ctrl-C."""
    import uvicorn

    uvicorn.run(create_app(run_dirs), host=host, port=port, log_level="warning")
