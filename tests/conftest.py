"""Shared fixtures: the real-data root (skip cleanly when absent) and small synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from covseg.utils.paths import DATA_ENV, data_root


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Root of the shared datasets; tests that use it skip with a clear message when absent."""
    root = data_root()
    if not (root / "README.md").exists():
        pytest.skip(f"real data not found at {root} (set {DATA_ENV} to the folder holding the datasets)")
    return root


@pytest.fixture(scope="session")
def phantom_run(tmp_path_factory) -> tuple[Path, Path]:
    """(data, run): a 2D U-Net trained two epochs on 16 phantoms of 64², trained once per session (per
    xdist worker) and shared read-only by the files that need some small trained run (inference, app)."""
    from covseg.training.config import load_config
    from covseg.training.trainer import build_trainer

    from tests.helpers import phantom_dataset, tiny_config

    root = tmp_path_factory.mktemp("phantom_run")
    data = phantom_dataset(root / "data", n=16, size=64)
    build_trainer(load_config(raw=tiny_config(data, epochs=2)), root / "run", quiet=True).fit()
    return data, root / "run"


# Trainers and CLI subprocesses started by tests use one torch thread too.
os.environ.setdefault("COVSEG_THREADS", "1")


@pytest.fixture(autouse=True)
def _single_torch_thread():
    """One intra-op thread for the suite's tiny inputs: on a shared two-core machine a busy neighbour
    stalls every OpenMP barrier of a two-thread run (measured: 8 s with one thread vs 82 s with two for
    the Inf-Net model cases under load), while one thread costs little on such small tensors."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "real_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.data)
