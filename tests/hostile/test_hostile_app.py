"""``covseg app`` against a hostile web page and hostile uploads (issue 25).

* Only its user can drive it: a request naming another ``Host`` (DNS rebinding) is refused before
  it reaches an endpoint, and a POST from another origin (a web page the user happens to visit)
  cannot make it segment.
* A gzip-bomb NIfTI or a PNG claiming a huge size is refused from its header, before anything is
  allocated (measured with ``tracemalloc`` in-process and with the server's peak RSS).
* Results live on disk in the app's own temporary folder, not in memory, and are removed with it.
"""

from __future__ import annotations

import gc
import gzip
import http.client
import io
import os
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from covseg import zoo

from tests.helpers import free_port, wait_for_server

OWN = "http://127.0.0.1:8765"
ZOO_MODEL = "covid-ct-infection"


def _client(**kwargs):
    from fastapi.testclient import TestClient

    from covseg.app import create_app

    return TestClient(create_app(**kwargs), base_url=OWN)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _nifti_gz_bomb(shape: tuple[int, int, int]) -> bytes:
    """A complete, valid gzip-compressed uint8 NIfTI of zeros: a few hundred KB declaring ``shape``."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    body = io.BytesIO()
    with gzip.GzipFile(fileobj=body, mode="wb", compresslevel=1) as gz:
        gz.write(header.binaryblock + b"\0" * 4)
        zeros, left = bytes(2**22), int(np.prod(shape))
        while left > 0:
            gz.write(zeros[: min(left, len(zeros))])
            left -= len(zeros)
    return body.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` × ``height`` pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------ Host and Origin
def test_a_foreign_host_header_is_refused_before_any_endpoint():
    """DNS rebinding: a page on evil.example re-pointed at 127.0.0.1 sends ``Host: evil.example:8765``."""
    client = _client(run_dirs=[])
    assert client.get("/api/models").status_code == 200
    for host in ("evil.example:8765", "evil.example", "127.0.0.1:9999", "localhost.evil.example:8765", ""):
        resp = client.get("/api/models", headers={"Host": host})
        assert resp.status_code == 403, host
        assert "is not this app's address" in resp.json()["error"] and "label" not in resp.text
        assert client.get("/", headers={"Host": host}).status_code == 403
    for host in ("localhost:8765", "LOCALHOST:8765", "[::1]:8765"):
        assert client.get("/api/models", headers={"Host": host}).status_code == 200, host


def test_the_app_on_another_address_answers_only_that_address():
    client = _client(host="192.168.1.20", port=9000)
    assert client.get("/api/models", headers={"Host": "192.168.1.20:9000"}).status_code == 200
    assert client.get("/api/models", headers={"Host": "127.0.0.1:9000"}).status_code == 200
    assert client.get("/api/models").status_code == 403  # 127.0.0.1:8765 is not where it listens


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},  # a sandboxed iframe or a data: page
        {"Origin": "http://127.0.0.1:9999"},  # another local server
        {"Origin": "https://127.0.0.1:8765"},
        {"Referer": "http://evil.example/attack.html"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
def test_a_post_from_another_web_page_cannot_make_it_segment(headers, monkeypatch):
    """A web page can POST a form to 127.0.0.1 (a "simple" request, no preflight): the browser's
    Origin (or Referer, Sec-Fetch-Site) tells the app, which refuses before reading the upload."""
    from covseg.app import ModelChoices

    loaded = []
    monkeypatch.setattr(ModelChoices, "predictor", lambda self, key: loaded.append(key))
    client = _client()
    resp = client.post("/api/segment", files={"file": ("a.png", _png(np.zeros((8, 8), np.uint8)))},
                       data={"model": ZOO_MODEL}, headers=headers)  # fmt: skip
    assert resp.status_code == 403 and "refused" in resp.json()["error"]
    assert loaded == [] and list(client.app.state.workdir.iterdir()) == []


def test_a_post_from_the_apps_own_page_is_served():
    if zoo.resolve(ZOO_MODEL) is None:
        pytest.skip(f"{ZOO_MODEL} is not shipped in this checkout")
    client = _client()
    image = _png((np.random.default_rng(0).random((48, 48)) * 255).astype(np.uint8))
    for headers in ({"Origin": OWN}, {"Origin": "http://localhost:8765"}, {"Referer": f"{OWN}/"}, {"Sec-Fetch-Site": "same-origin"}, {}):
        resp = client.post("/api/segment", files={"file": ("a.png", image)}, data={"model": ZOO_MODEL}, headers=headers)
        assert resp.status_code == 200, (headers, resp.text)


def test_an_upload_over_the_limit_is_refused_from_its_content_length():
    client = _client(max_upload_mb=1)
    resp = client.post("/api/segment", files={"file": ("big.png", b"\0" * (3 * 2**20))}, data={"model": ZOO_MODEL})
    assert resp.status_code == 413 and "larger than" in resp.json()["error"]


# ------------------------------------------------------------------------------------ decoded size
def test_gzip_bomb_nifti_is_refused_from_its_header_before_allocating():
    """600×600×400 uint8 zeros: 144 M voxels (0.58 GB as float32) in a ~0.3 MB upload; over the default
    limit of 512³ voxels, so it is refused from the header: no allocation of its size, no model loaded."""
    from covseg.app import MAX_VOXELS

    bomb = _nifti_gz_bomb((600, 600, 400))
    assert len(bomb) < 2**20 and MAX_VOXELS < 600 * 600 * 400
    client = _client()
    gc.collect()
    tracemalloc.start()
    try:
        start = time.perf_counter()
        resp = client.post("/api/segment", files={"file": ("bomb.nii.gz", bomb)}, data={"model": ZOO_MODEL})
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error.startswith("bomb.nii.gz: volume of 600×600×400 = 144,000,000 values is over this limit") and "\n" not in error
    assert peak < 32 * 2**20, f"{peak / 2**20:.0f} MiB allocated for a refused upload"
    assert seconds < 10
    assert list(client.app.state.workdir.iterdir()) == []  # nothing left behind


def test_inflating_a_nifti_stops_at_what_its_header_declares(tmp_path):
    """Trailing data after the declared voxels is not decompressed (the byte count is bounded too)."""
    from covseg.data.limits import inflate_nifti

    header = nib.Nifti1Header()
    header.set_data_shape((8, 8, 8))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    with gzip.open(tmp_path / "tail.nii.gz", "wb", compresslevel=1) as gz:
        gz.write(header.binaryblock + b"\0" * 4 + np.arange(512, dtype=np.int16).tobytes())
        for _ in range(64):
            gz.write(bytes(2**22))  # 256 MB of trailing zeros
    out = inflate_nifti(tmp_path / "tail.nii.gz", tmp_path / "tail.nii", max_voxels=1000)
    assert out.stat().st_size == 352 + 512 * 2
    assert np.array_equal(np.asarray(nib.load(out).dataobj).ravel(order="F"), np.arange(512))
    with pytest.raises(Exception, match=r"tail\.nii\.gz: volume of 8×8×8 = 512 values is over this limit of 100"):
        inflate_nifti(tmp_path / "tail.nii.gz", tmp_path / "again.nii", max_voxels=100)


def test_a_png_claiming_a_huge_size_is_refused_from_its_header():
    client = _client(max_pixels=2**20)
    resp = client.post("/api/segment", files={"file": ("huge.png", _png_claiming(12000, 12000))}, data={"model": ZOO_MODEL})
    assert resp.status_code == 400
    assert resp.json()["error"].startswith("huge.png: image of 12000×12000×1 = 144,000,000 values is over this limit")
    resp = client.post("/api/segment", files={"file": ("wide.png", _png(np.zeros((8, 2**20 // 4), np.uint8)))}, data={"model": ZOO_MODEL})
    assert resp.status_code == 400 and "over this limit of 1,048,576" in resp.json()["error"]


# ------------------------------------------------------------------------------------ results on disk
def test_results_live_on_disk_in_the_apps_folder_and_go_with_it(monkeypatch):
    if zoo.resolve(ZOO_MODEL) is None:
        pytest.skip(f"{ZOO_MODEL} is not shipped in this checkout")
    import covseg.app as app_module

    monkeypatch.setattr(app_module, "MAX_RESULTS", 2)
    client = _client()
    workdir = client.app.state.workdir
    rng = np.random.default_rng(1)
    infos = []
    for k in range(3):
        image = _png((rng.random((40, 40)) * 255).astype(np.uint8))
        resp = client.post("/api/segment", files={"file": (f"case{k}.png", image)}, data={"model": ZOO_MODEL})
        assert resp.status_code == 200, resp.text
        infos.append(resp.json())
    folders = sorted(p.name for p in workdir.iterdir())
    assert folders == sorted(info["id"] for info in infos[1:])  # the oldest was removed from disk
    newest = workdir / infos[-1]["id"]
    assert sorted(p.name for p in newest.iterdir()) == ["display.npy", "labels.npy", "mask.png"]  # the upload is gone
    assert client.get(infos[0]["mask_url"]).status_code == 404
    overlay = client.get(infos[-1]["overlay_url"])
    assert overlay.status_code == 200 and (newest / "overlay_0.png").read_bytes() == overlay.content
    mask = np.array(Image.open(io.BytesIO(client.get(infos[-1]["mask_url"]).content)))
    assert np.array_equal(mask > 0, np.load(newest / "labels.npy")[0] > 0)
    assert int((mask > 0).sum()) == infos[-1]["infected_pixels"]
    for obj in gc.get_referrers(app_module.Result):  # no result object holds pixels in memory
        if isinstance(obj, app_module.Result):
            assert not any(isinstance(v, (np.ndarray, bytes)) for v in vars(obj).values())
    app = client.app
    del client, app
    gc.collect()
    assert not workdir.exists()


# ------------------------------------------------------------------------------------ a real server

def _multipart(filename: str, data: bytes, model: str) -> tuple[bytes, str]:
    boundary = "covsegtestboundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _request(port: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for key, value in headers.items():
            conn.putheader(key, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to read the server's peak memory")
def test_the_running_app_refuses_rebinding_cross_origin_posts_and_a_gzip_bomb():
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    server = subprocess.Popen([sys.executable, "-m", "covseg.cli.main", "app", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    own = f"127.0.0.1:{port}"
    try:
        wait_for_server(server, port)
        status, body = _request(port, "GET", "/api/models", {"Host": own})
        assert status == 200 and ZOO_MODEL.encode() in body
        status, body = _request(port, "GET", "/api/models", {"Host": f"rebound.evil.example:{port}"})
        assert status == 403 and ZOO_MODEL.encode() not in body
        form, kind = _multipart("a.png", _png(np.zeros((8, 8), np.uint8)), ZOO_MODEL)
        status, body = _request(port, "POST", "/api/segment", {"Host": own, "Origin": "http://evil.example", "Content-Type": kind}, form)
        assert status == 403 and b"another origin" in body
        before = _status_kib(server.pid, "VmRSS")
        Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        form, kind = _multipart("bomb.nii.gz", _nifti_gz_bomb((600, 600, 400)), ZOO_MODEL)
        status, body = _request(port, "POST", "/api/segment", {"Host": own, "Origin": f"http://{own}", "Content-Type": kind}, form)
        peak = _status_kib(server.pid, "VmHWM")
        assert status == 400 and b"over this limit" in body, body
        assert (peak - before) < 100 * 1024, f"the server's peak memory grew by {(peak - before) / 1024:.0f} MiB for a refused upload"
    finally:
        server.terminate()
        server.wait(timeout=30)
