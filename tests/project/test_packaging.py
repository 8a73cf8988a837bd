"""The package as users get it: the wheel builds with ``python -m build``, passes ``twine check``, holds
the configs, templates and the model zoo, and installed into a fresh virtual environment it segments
with a shipped model, no training and no repository (issue 28, packaging)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covseg import zoo

ROOT = Path(__file__).resolve().parents[2]
# building and installing a wheel with all its dependencies takes minutes on a busy 2-core machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (path,) = out.glob("covseg-*.whl")
    return path


def test_the_wheel_passes_twine_check_and_holds_the_zoo(wheel):
    proc = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(wheel)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "PASSED" in proc.stdout, proc.stdout + proc.stderr
    names = set(zipfile.ZipFile(wheel).namelist())
    for model in zoo.names():
        for part in ("model.json", "card.json", "weights.safetensors"):
            assert f"covseg/zoo/{model}/{part}" in names
    assert "covseg/configs/resunet_cosup_covid_semiseg.yaml" in names
    assert any(n.startswith("covseg/viz/templates/") for n in names)
    assert not any(n.startswith(("tests/", "bench/")) for n in names)


def test_a_fresh_install_predicts_with_a_shipped_model(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-2000:]
    image = tmp_path / "in" / "slice.png"
    image.parent.mkdir()
    yy, xx = np.mgrid[:96, :80]
    slice_ = np.where((yy - 48) ** 2 / 40**2 + (xx - 40) ** 2 / 34**2 < 1, 60, 200).astype(np.uint8)
    Image.fromarray(slice_).save(image)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "COVSEG_THREADS": "1", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [str(venv / "bin" / "covseg"), "predict", "--model", "covid-ct-infection", "-i", str(image.parent), "-o", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "slice.png"))
    assert mask.shape == (96, 80)
    assert "covid-ct-infection" in (tmp_path / "out" / "predictions.csv").read_text() or (tmp_path / "out" / "predictions.csv").exists()
