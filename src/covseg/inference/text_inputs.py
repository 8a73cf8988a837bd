"""Choosing the predictor for a run folder and the text each input gets (text-guided models)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from covseg.errors import CovsegError
from covseg.inference.predictor import Predictor
from covseg.training.run_folder import RunFolder


def load_predictor(run_dir: Path, checkpoint: str = "best") -> Predictor:
    """The right predictor class for the run folder's model (image-only or text-guided)."""
    if not Path(run_dir).is_dir():
        raise CovsegError("run folder not found", run_dir)
    description = RunFolder(run_dir).read_json("model.json")
    if description.get("text"):
        from covseg.text.predictor import TextPredictor

        return TextPredictor.from_run(run_dir, checkpoint)
    return Predictor.from_run(run_dir, checkpoint)


def load_predictors(run_dirs: list[Path], checkpoint: str = "best") -> Predictor:
    """One run folder's predictor, or several averaged as an ensemble."""
    if len(run_dirs) == 1:
        return load_predictor(run_dirs[0], checkpoint)
    from covseg.inference.ensemble import EnsemblePredictor

    return EnsemblePredictor.from_runs(run_dirs, checkpoint)


def text_resolver(
    predictor: Predictor,
    files: list[Path],
    text: str | None,
    text_file: Path | None,
    missing_text: str = "error",
) -> Callable[[Path], dict] | None:
    """A function giving each input file's extra model inputs (``{"text": ...}``), or None."""
    needs_text = bool(predictor.description.get("text"))
    if not needs_text:
        if text or text_file:
            raise CovsegError("this model is not text-guided; --text/--text-file do not apply", predictor.run_dir)
        return None
    if missing_text not in ("error", "image-only"):
        raise CovsegError(f"--missing-text must be 'error' or 'image-only', got {missing_text!r}")
    table = None
    if text_file is not None:
        from covseg.data.text_sources import load_texts

        # any text source: LViT xlsx, QaTa captions.csv / annotation.json, CRIS JSON, prompt CSV, name<TAB>text
        table = load_texts(text_file, prompt=(predictor.description.get("text") or {}).get("prompt"))

    def extra_for(path: Path) -> dict:
        found = text
        if found is None and table is not None:
            entry = table.lookup(path)
            found = entry.text if entry is not None else None
        if found is None or not str(found).strip():
            if missing_text == "image-only":
                return {"text": None}
            raise CovsegError("no text for this image (give --text, --text-file, or --missing-text image-only)", path)
        return {"text": str(found)}

    return extra_for
