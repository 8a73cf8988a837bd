"""``covseg app``: a local web app (FastAPI) to segment one image, volume or X-ray at a time.

Open a PNG/JPEG/TIFF/DICOM image or a NIfTI volume (and a caption for text-guided models),
pick a shipped model (``covseg models --pretrained``) or a run folder given on the command line,
and see the prediction drawn over the image (a slice slider for volumes), the infected area or
volume (with "lungs only", CT volumes: predictions outside the lungs dropped, and the share of the
lungs infected), the per-class statistics of ``covseg predict --statistics`` (same function), the Grad-CAM map of joint models, and download the mask. It runs on this machine and makes
no external calls: the page has no CDN assets, every user-supplied text reaches it as JSON and is
shown with ``textContent``, never as HTML.

Only its user can drive it: every request must name the app's own loopback address in ``Host``
(a DNS-rebinding page cannot read it) and a POST from a browser must come from the app's own page
(``Origin``/``Referer``: another web page cannot make it segment). An upload's decoded size is read
from its header and refused over a limit before anything is allocated (``covseg.data.limits``),
one upload is segmented at a time, and results (the last few) live in a temporary folder on disk,
removed when the app stops, not in memory.
"""


import io
import shutil
import tempfile
import threading
import uuid
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covseg.data.formats import suffixes
from covseg.errors import CovsegError
from covseg.utils.webguard import LOOPBACK_NAMES as LOOPBACK_NAMES
from covseg.utils.webguard import SAFE_METHODS as SAFE_METHODS
from covseg.utils.webguard import OwnPageOnly as _OwnPageOnly
from covseg.utils.webguard import own_hosts as own_hosts
from covseg.utils.webguard import request_refusal as request_refusal

UPLOAD_SUFFIXES = suffixes()  # every built-in file format (covseg.data.formats); checked against the registry at upload
VOLUME_UPLOADS = (".nii", ".nii.gz")
MAX_RESULTS = 16
MAX_VOXELS = 512**3  # an upload's decoded values (a 512×512×512 CT); larger ones are refused from the header
MAX_PIXELS = 2**25  # 2D uploads: 32 M values (e.g. a 3,300² RGB image)
PAGE = Path(__file__).resolve().parent / "viz" / "templates" / "app.html"


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
            self.entries[key] = {"key": key, "label": f"run folder {run}", "source": "run", "task": "", "modality": "", "path": str(run.resolve())}  # a path: never taken for a shipped name
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
    if suffix not in suffixes():
        raise CovsegError(f"unsupported file type {suffix or '(none)'!r}; give one of {', '.join(suffixes())}", Path(filename or "upload"))
    return suffix


def prepare_upload(raw: Path, filename: str, max_voxels: int = MAX_VOXELS, max_pixels: int = MAX_PIXELS) -> Path:
    """Check an uploaded file's declared size before decoding it; the path to read it from.

    A NIfTI volume's header is read first and a shape over ``max_voxels`` refused; a ``.nii.gz`` is
    decompressed beside ``raw`` only as far as its header accounts for. 2D images are refused over
    ``max_pixels`` values from their header. Errors name ``filename``, not the temporary file."""
    from covseg.data.limits import check_image_pixels, check_nifti, inflate_nifti

    suffix, name = _suffix(filename), Path(filename).name
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
    name, volume = Path(filename).name, _suffix(filename) in VOLUME_UPLOADS
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


def create_app(run_dirs: list[Path] | tuple[Path, ...] = (), max_upload_mb: int = 512, *, host: str = "127.0.0.1",
               port: int = 8765, max_voxels: int = MAX_VOXELS, max_pixels: int = MAX_PIXELS):  # fmt: skip
    """The FastAPI application (``uvicorn`` serves it on ``host``:``port``; tests call it through
    ``TestClient(app, base_url="http://127.0.0.1:8765")``): requests must name that address.

    Results are kept in a temporary folder (``app.state.workdir``), removed when the app is
    garbage-collected or the process exits. (This module does not use postponed annotations:
    FastAPI reads the endpoint signatures, whose types are imported here, inside the function.)"""
    from fastapi import FastAPI, File, Form, HTTPException, UploadFile
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

    from covseg.viz.callbacks import prediction_overlay
    from covseg.viz.explanations import heatmap_overlay

    choices = ModelChoices(run_dirs)
    results: OrderedDict[str, Result] = OrderedDict()
    lock, one_at_a_time = threading.Lock(), threading.Lock()
    app = FastAPI(title="covseg", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.choices = choices
    app.state.workdir = workdir = Path(tempfile.mkdtemp(prefix="covseg_app_"))
    weakref.finalize(app, shutil.rmtree, workdir, ignore_errors=True)
    app.add_middleware(_OwnPageOnly, hosts=own_hosts(host, port), max_body=max_upload_mb * 2**20 + 2**20)

    def get(rid: str) -> Result:
        with lock:
            found = results.get(rid)
        if found is None or not found.folder.is_dir():
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
        name = file.filename or "upload"
        if model not in choices.entries:
            raise CovsegError(f"unknown model {model!r}")
        rid = uuid.uuid4().hex
        folder = workdir / rid
        folder.mkdir()
        try:
            with one_at_a_time:  # one upload in memory at a time
                raw = folder / f"upload{_suffix(name)}"
                if _copy_bounded(file.file, raw, max_upload_mb * 2**20) == 0:
                    raise CovsegError("empty file", Path(name))
                readable = prepare_upload(raw, name, max_voxels, max_pixels)
                result = segment_upload(choices.predictor(model), readable, name, folder, text, lungs_only)
                for leftover in {raw, readable}:
                    leftover.unlink(missing_ok=True)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        with lock:
            results[rid] = result
            while len(results) > MAX_RESULTS:
                shutil.rmtree(results.popitem(last=False)[1].folder, ignore_errors=True)
        base = f"/api/results/{rid}"
        return {
            "id": rid, "name": result.name, "model": model, **result.summary,
            "overlay_url": f"{base}/overlay.png", "mask_url": f"{base}/mask",
            "explanation_url": f"{base}/explanation.png" if result.has_explanation else None,
        }  # fmt: skip

    @app.get("/api/results/{rid}/overlay.png")
    def overlay_png(rid: str, z: int = 0) -> Response:
        result = get(rid)
        if not 0 <= z < result.slices:
            raise HTTPException(404, f"slice {z} outside 0..{result.slices - 1}")
        cached = result.folder / f"overlay_{z}.png"
        try:
            if not cached.is_file():
                from covseg.utils.atomic import write_bytes

                write_bytes(cached, png_bytes(prediction_overlay(result.display(z), result.labels(z))))
            return Response(cached.read_bytes(), media_type="image/png")
        except (FileNotFoundError, CovsegError):  # removed meanwhile (more results came)
            raise HTTPException(404, "no such result (the app keeps the last few)") from None

    @app.get("/api/results/{rid}/explanation.png")
    def explanation_png(rid: str) -> Response:
        result = get(rid)
        if not result.has_explanation:
            raise HTTPException(404, "this model has no classification head, so no explanation map")
        heat = np.load(result.folder / "explanation.npy")
        return Response(png_bytes(heatmap_overlay(result.display(0), heat)), media_type="image/png")

    @app.get("/api/results/{rid}/mask")
    def mask(rid: str) -> Response:
        result = get(rid)
        kind = "application/gzip" if result.mask_name.endswith(".gz") else "image/png"
        return FileResponse(result.mask_path, media_type=kind, filename=result.mask_name)

    return app


def _copy_bounded(source: Any, target: Path, limit: int) -> int:
    """Copy an upload's file object to ``target`` in chunks; refuse it past ``limit`` bytes. Returns the size."""
    size = 0
    with open(target, "wb") as out:
        while chunk := source.read(2**20):
            size += len(chunk)
            if size > limit:
                raise CovsegError(f"file larger than {limit // 2**20} MB")
            out.write(chunk)
    return size


def serve(run_dirs: list[Path] | tuple[Path, ...] = (), host: str = "127.0.0.1", port: int = 8765, max_voxels: int = MAX_VOXELS) -> None:
    """Serve the app with uvicorn until Ctrl-C (then ``KeyboardInterrupt``, which the CLI reports
    as "interrupted", as every command does; uvicorn itself would end quietly)."""
    import uvicorn

    _check_address(host, port)
    app = create_app(run_dirs, host=host, port=port, max_voxels=max_voxels)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    server.run()
    if server.should_exit:  # set by uvicorn's signal handler (Ctrl-C, SIGTERM)
        raise KeyboardInterrupt


def _check_address(host: str, port: int) -> None:
    """One line when the app cannot listen on ``host``:``port`` (a port in use, an unknown host name),
    before uvicorn would log it and exit."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise CovsegError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None

