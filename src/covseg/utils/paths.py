"""Where the real datasets live (``COVSEG_DATA``, default ``../shared/data``)."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "COVSEG_DATA"


def data_root() -> Path:
    """Root of the shared datasets: ``$COVSEG_DATA`` or ``../shared/data`` beside the checkout."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "data"
        if (parent / "pyproject.toml").exists() and candidate.is_dir():
            return candidate
    return Path.cwd().parent / "shared" / "data"


def expand(path: str | Path) -> Path:
    """Expand ``~``, environment variables and the ``${COVSEG_DATA}`` placeholder in a path."""
    text = str(path)
    if "${COVSEG_DATA}" in text or "$COVSEG_DATA" in text:
        root = str(data_root())
        text = text.replace("${COVSEG_DATA}", root).replace("$COVSEG_DATA", root)
    return Path(os.path.expandvars(os.path.expanduser(text)))
