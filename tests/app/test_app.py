"""``covseg app``: uploads return an overlay and a mask (FastAPI TestClient), and the page works in a
real headless Chromium (skipped with a message when chromium/chromedriver or selenium are absent)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from covseg import zoo
from covseg.data.imageio import read_image, write_image
from covseg.inference.predictor import Predictor
from covseg.runs.packing import pack_run
from covseg.training.config import load_config
from covseg.training.trainer import build_trainer

from tests.helpers import free_port, tiny_config, wait_for_server

TINY = "tiny-app-model"


@pytest.fixture(scope="module")
def trained(phantom_run, tmp_path_factory) -> tuple[Path, Path, Path]:
    data, run = phantom_run  # the session's shared run (conftest), packed here as a zoo model
    zoo_dir = tmp_path_factory.mktemp("app") / "zoo"
    pack_run(run, zoo_dir / TINY, {"name": TINY, "task": "phantom test model"}, checkpoint="last")
    return run, zoo_dir, data


@pytest.fixture
def client(trained, monkeypatch):
    from fastapi.testclient import TestClient

    from covseg.app import create_app

    run, zoo_dir, _ = trained
    monkeypatch.setattr(zoo, "ZOO_DIR", zoo_dir)
    return TestClient(create_app([run]), base_url="http://127.0.0.1:8765")


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_page_has_no_external_assets_and_lists_models(client, trained):
    page = client.get("/")
    assert page.status_code == 200 and "<form" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN, nothing fetched from elsewhere
    keys = [m["key"] for m in client.get("/api/models").json()]
    assert keys == [TINY, f"run0:{trained[0].name}"]


def test_image_upload_returns_overlay_and_the_predicted_mask(client, trained):
    _, _, data = trained
    path = sorted((data / "images").iterdir())[0]
    image = read_image(path)
    resp = client.post("/api/segment", files={"file": ("case <i>1.png", path.read_bytes(), "image/png")}, data={"model": TINY})
    assert resp.status_code == 200, resp.text
    info = resp.json()
    assert info["kind"] == "image" and info["name"] == "case <i>1.png"  # returned as data, shown with textContent
    expected = Predictor.from_run(TINY).predict_image(image).labels
    assert info["infected_pixels"] == int(expected.sum())
    overlay = Image.open(io.BytesIO(client.get(info["overlay_url"]).content))
    assert overlay.size == (image.shape[1], image.shape[0]) and overlay.mode == "RGB"
    mask_resp = client.get(info["mask_url"])
    assert 'filename="case__i_1_mask.png"' in mask_resp.headers["content-disposition"]
    mask = np.array(Image.open(io.BytesIO(mask_resp.content)))
    assert np.array_equal(mask > 0, expected > 0)
    assert info["explanation_url"] is None  # not a joint model


def test_volume_upload_has_a_slice_per_overlay_and_a_nifti_mask(client, trained, tmp_path):
    _, _, data = trained
    slices = [read_image(p) for p in sorted((data / "images").iterdir())[:3]]
    volume = np.stack(slices, axis=-1).astype(np.float32) * 6.0 - 1000.0
    nib.save(nib.Nifti1Image(volume, np.diag([0.7, 0.7, 2.0, 1.0])), tmp_path / "scan.nii.gz")
    resp = client.post("/api/segment", files={"file": ("scan.nii.gz", (tmp_path / "scan.nii.gz").read_bytes())}, data={"model": f"run0:{trained[0].name}"})
    assert resp.status_code == 200, resp.text
    info = resp.json()
    assert info["kind"] == "volume" and info["slices"] == 3
    assert info["infected_ml"] == pytest.approx(info["infected_voxels"] * 0.7 * 0.7 * 2.0 / 1000, abs=1e-3)
    for z in range(3):
        assert client.get(info["overlay_url"], params={"z": z}).headers["content-type"] == "image/png"
    assert client.get(info["overlay_url"], params={"z": 3}).status_code == 404
    (tmp_path / "mask.nii.gz").write_bytes(client.get(info["mask_url"]).content)
    mask = nib.load(tmp_path / "mask.nii.gz")
    assert mask.shape == volume.shape and int((np.asarray(mask.dataobj) > 0).sum()) == info["infected_voxels"]


def test_bad_uploads_are_one_line_errors(client):
    resp = client.post("/api/segment", files={"file": ("x<script>.exe", b"MZ")}, data={"model": TINY})
    assert resp.status_code == 400 and "unsupported file type" in resp.json()["error"]
    resp = client.post("/api/segment", files={"file": ("broken.png", b"not a png")}, data={"model": TINY})
    assert resp.status_code == 400 and "\n" not in resp.json()["error"]
    resp = client.post("/api/segment", files={"file": ("a.png", _png(np.zeros((8, 8), np.uint8)))}, data={"model": "nope"})
    assert resp.status_code == 400 and "unknown model" in resp.json()["error"]
    assert client.get("/api/results/0123/mask").status_code == 404


def test_text_guided_model_needs_a_caption():
    from fastapi.testclient import TestClient

    from covseg.app import create_app

    if zoo.resolve("covid-cxr-text") is None:
        pytest.skip("covid-cxr-text is not shipped in this checkout (zoo/train_zoo.py makes it)")
    text_client = TestClient(create_app(), base_url="http://127.0.0.1:8765")
    image = _png((np.random.default_rng(0).random((96, 96)) * 255).astype(np.uint8))
    resp = text_client.post("/api/segment", files={"file": ("cxr.png", image)}, data={"model": "covid-cxr-text"})
    assert resp.status_code == 400 and "caption" in resp.json()["error"]
    resp = text_client.post("/api/segment", files={"file": ("cxr.png", image)},
                            data={"model": "covid-cxr-text", "text": "bilateral pulmonary infection, lower left lung."})  # fmt: skip
    assert resp.status_code == 200 and resp.json()["kind"] == "image"


# -- end to end in headless Chromium ---------------------------------------------------------------
def _browser_or_skip():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("headless browser test: chromium and chromedriver not found (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
    except ImportError:
        pytest.skip("headless browser test: selenium not installed (pip install selenium)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=options)



def test_page_uploads_and_shows_the_overlay_in_headless_chromium(trained, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    run, _, data = trained
    browser = _browser_or_skip()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    server = subprocess.Popen([sys.executable, "-m", "covseg.cli.main", "app", "--model", str(run), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_server(server, port)
        image = tmp_path / "upload.png"
        write_image(image, read_image(sorted((data / "images").iterdir())[0]))
        browser.get(url)
        wait = WebDriverWait(browser, 120)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#model option")) >= 1)
        Select(browser.find_element(By.ID, "model")).select_by_value(f"run0:{run.name}")
        browser.find_element(By.ID, "file").send_keys(str(image))
        browser.find_element(By.ID, "go").click()
        wait.until(lambda b: b.find_element(By.ID, "result").is_displayed() or b.find_element(By.ID, "error").text)
        assert browser.find_element(By.ID, "error").text == ""
        wait.until(lambda b: b.execute_script("const i = document.getElementById('overlay'); return i.complete && i.naturalWidth > 0;"))
        assert browser.execute_script("return document.getElementById('overlay').naturalWidth") == 64
        assert "infected area" in browser.find_element(By.ID, "numbers").text
        assert browser.find_element(By.ID, "download").get_attribute("href").endswith("/mask")
    finally:
        browser.quit()
        server.terminate()
        server.wait(timeout=30)


def test_joint_model_upload_has_class_probabilities_and_a_gradcam_map(tmp_path):
    from fastapi.testclient import TestClient

    from covseg.app import create_app
    from covseg.data.synthetic import write_phantom_dataset

    from tests.training.test_jcs import SMALL, TERMS

    data = write_phantom_dataset(tmp_path / "data", n=8, size=32, seed=1, negatives=0.5)
    raw = tiny_config(data, size=32, epochs=1, data__folds=2, data__labels=str(data / "labels.csv"),
                      model={"name": "jcs", "params": SMALL}, loss={"terms": TERMS})  # fmt: skip
    build_trainer(load_config(raw=raw), tmp_path / "run", quiet=True).fit()
    client = TestClient(create_app([tmp_path / "run"]), base_url="http://127.0.0.1:8765")
    path = sorted((data / "images").iterdir())[0]
    resp = client.post("/api/segment", files={"file": (path.name, path.read_bytes())}, data={"model": "run0:run"})
    assert resp.status_code == 200, resp.text
    info = resp.json()
    assert sum(info["class_probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    heat = Image.open(io.BytesIO(client.get(info["explanation_url"]).content))
    assert heat.size == (32, 32) and heat.mode == "RGB"
