"""Loading Hugging Face models from local folders only (nothing is downloaded at run time)."""

from __future__ import annotations

import os
from pathlib import Path

from covseg.errors import CovsegError


def _quiet_transformers():
    """Silence transformers' download/progress chatter; returns a function restoring the settings."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    def restore() -> None:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()

    return restore


def load_hf_pretrained(loader, path: Path, error: type[CovsegError] = CovsegError):
    """``loader.from_pretrained(path)`` offline, with a one-line ``error`` naming the folder."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    restore = _quiet_transformers()
    try:
        return loader.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise error(f"cannot load {getattr(loader, '__name__', 'model')} ({first})", path) from None
    finally:
        restore()
