"""Shared fixtures: the real-data root (skip cleanly when absent) and small synthetic data."""

from __future__ import annotations

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


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "real_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.data)
