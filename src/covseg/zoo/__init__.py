"""Trained models shipped inside the package (the model zoo), usable by name wherever a run folder is.

``covseg predict --model covid-ct-infection ...`` finds ``covseg/zoo/covid-ct-infection/``: a
packed run folder with ``model.json`` (the run description), ``weights.safetensors`` (fp16
weights, loaded without pickle) and ``card.json`` (data, recipe, date, hardware, CPU minutes
and the held-out numbers of the model's recipe: the shipped weights trained on all labelled
data). The folders are made by ``zoo/train_zoo.py`` in the repository (see each card's
``status``). This module only finds them: it imports nothing heavy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ZOO_DIR = Path(__file__).resolve().parent
CARD = "card.json"


def names() -> list[str]:
    """Names of the models shipped with this installation."""
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / CARD).is_file() and (p / "model.json").is_file())


def resolve(name_or_path: str | Path) -> Path | None:
    """The folder of a shipped model named ``name_or_path`` (None when it names none)."""
    text = str(name_or_path)
    if "/" in text or "\\" in text or text.startswith("."):
        return None
    folder = ZOO_DIR / text
    return folder if (folder / CARD).is_file() and (folder / "model.json").is_file() else None


def card(name: str) -> dict[str, Any]:
    """The model card of a shipped model."""
    folder = resolve(name)
    if folder is None:
        raise KeyError(name)
    return json.loads((folder / CARD).read_text(encoding="utf-8"))


def describe_model(run_dir: str | Path) -> str:
    """Which model ``run_dir`` (as given) runs, for the console and the outputs: ``shipped model NAME``
    (saying when a local folder of that name is not used) or ``run folder /absolute/path``."""
    shipped = resolve(str(run_dir))
    if shipped is None:
        return f"run folder {Path(run_dir).resolve()}"
    text = f"shipped model {shipped.name}"
    if Path(str(run_dir)).exists():
        text += f" (not the local folder of that name: give ./{run_dir} for it)"
    return text
