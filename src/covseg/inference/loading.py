"""Loading run folders as predictors, and the text each input file gets (text-guided runs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from covseg.errors import CovsegError
from covseg.inference.predictor import BasePredictor, Predictor


def load_predictor(run_dir: str | Path, checkpoint: str = "best", runtime=None) -> Predictor:
    """The predictor of one run folder (image-only, text-guided or cascade alike)."""
    return Predictor.from_run(run_dir, checkpoint, runtime=runtime)


def load_predictors(run_dirs: Sequence[str | Path], checkpoint: str = "best", runtime=None) -> BasePredictor:
    """One run folder's predictor, or several averaged as an ensemble (on ``runtime``'s device)."""
    if len(run_dirs) == 1:
        return load_predictor(run_dirs[0], checkpoint, runtime)
    from covseg.inference.ensemble import EnsemblePredictor

    return EnsemblePredictor.from_runs(run_dirs, checkpoint, runtime)


def text_resolver(
    predictor: BasePredictor,
    text: str | None,
    text_file: Path | None,
    missing_text: str = "error",
    prompt_type: str | None = None,
) -> Callable[[Path], dict] | None:
    """A function giving each input file's extra model inputs (``{"text": ...}``), or None.

    ``prompt_type`` (``P3``) picks that prompt of a CRIS-style ``text_file``; without it the
    run's own ``data.prompt`` is used, else each entry's first prompt.
    """
    if not getattr(predictor, "text_guided", False):
        if text or text_file:
            raise CovsegError("this model is not text-guided; --text/--text-file do not apply", predictor.run_dir)
        return None
    if prompt_type and text_file is None:
        raise CovsegError("--prompt-type picks a prompt of a --text-file (CRIS-style JSON); give one")
    if missing_text not in ("error", "image-only"):
        raise CovsegError(f"--missing-text must be 'error' or 'image-only', got {missing_text!r}")
    table = None
    if text_file is not None:
        from covseg.data.text_sources import load_texts

        # any text source: LViT xlsx, QaTa captions.csv / annotation.json, CRIS JSON, prompt CSV, name<TAB>text
        description = getattr(predictor, "description", None)
        prompt = description.text.prompt if description is not None and description.text is not None else None
        table = load_texts(text_file, prompt=prompt_type or prompt)

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
