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
from pathlib import Path
from typing import Any

import numpy as np

from covseg.app.uploads import MAX_PIXELS as MAX_PIXELS
from covseg.app.uploads import MAX_VOXELS as MAX_VOXELS
from covseg.app.uploads import UPLOAD_SUFFIXES as UPLOAD_SUFFIXES
from covseg.app.uploads import VOLUME_UPLOADS as VOLUME_UPLOADS
from covseg.app.uploads import Result as Result
from covseg.app.uploads import prepare_upload as prepare_upload
from covseg.app.uploads import segment_upload as segment_upload
from covseg.app.uploads import upload_suffix
from covseg.errors import CovsegError
from covseg.utils.webguard import LOOPBACK_NAMES as LOOPBACK_NAMES
from covseg.utils.webguard import SAFE_METHODS as SAFE_METHODS
from covseg.utils.webguard import OwnPageOnly as _OwnPageOnly
from covseg.utils.webguard import own_hosts as own_hosts
from covseg.utils.webguard import request_refusal as request_refusal

MAX_RESULTS = 16
PAGE = Path(__file__).resolve().parent.parent / "viz" / "templates" / "app.html"


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
                raw = folder / f"upload{upload_suffix(name)}"
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

