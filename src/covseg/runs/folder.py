"""Self-describing run folders (the nnU-Net idea): everything needed to predict lies beside the checkpoint.

Layout::

    RUN/
      config.yaml        resolved training config
      model.json         model name, init args, preprocessing, classes, threshold
      dataset.json       what was trained on: root, layout, counts, sizes, foreground share
      splits.json        case ids of the training and validation sets (and the fold)
      history.csv        one row per epoch: losses, validation metrics, learning rate, wall and CPU seconds
      curves.png         training curves
      checkpoints/       last.pt (every epoch) and best.pt (best validation metric)
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from covseg.errors import CovsegError
from covseg.utils.atomic import write_json, write_text


class RunFolder:
    """Paths and readers/writers of one run folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, which: str = "best") -> Path:
        """``best``/``last``, or a file name inside ``checkpoints/``."""
        name = which if which.endswith(".pt") else f"{which}.pt"
        return self.checkpoints / name

    def write_config(self, text: str) -> None:
        write_text(self.path / "config.yaml", text)

    def write_json(self, name: str, obj: Any) -> None:
        if name == "model.json":  # the run description has one writer, which validates it
            raise ValueError("model.json is written with RunFolder.write_description")
        write_json(self.path / name, obj)

    def write_description(self, raw: dict[str, Any]) -> Any:
        """Validate ``raw`` as a :class:`~covseg.runs.description.RunDescription` and write it to
        ``model.json`` (a value no reader would accept fails here, before the file exists)."""
        from covseg.runs.description import RunDescription

        description = RunDescription.from_dict(raw, self.path / "model.json")
        description.write(self.path)
        return description

    def read_json(self, name: str) -> Any:
        p = self.path / name
        if not p.exists():
            raise CovsegError(f"not a covseg run folder (no {name})", self.path)
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise CovsegError(f"{name} is not UTF-8 text", p) from None
        except json.JSONDecodeError as exc:
            raise CovsegError(f"corrupt JSON ({exc.msg} at line {exc.lineno})", p) from None

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite ``history.csv`` atomically from all epoch rows so far."""
        if not rows:
            return
        from covseg.utils.outputs import write_csv

        write_csv(self.path / "history.csv", rows, float_format=".6g")

    def read_history(self) -> list[dict[str, str]]:
        p = self.path / "history.csv"
        if not p.exists():
            return []
        with p.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def training_case_ids(self) -> set[str]:
        """Case ids this run trained on (``splits.json``); empty for a folder without one."""
        if not (self.path / "splits.json").exists():
            return set()
        return {str(c) for c in self.read_json("splits.json").get("train", [])}

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run folder for one training: a second ``covseg train`` into it is refused in one line.

        An advisory lock on ``RUN/.lock`` (``flock``), released when the training ends or its
        process dies (``kill -9`` included), so a crash never leaves a stale lock behind
        (:func:`covseg.utils.outputs.folder_lock`).
        """
        from covseg.utils.outputs import folder_lock

        busy = "another covseg train is writing this run folder ({holder}); wait for it or choose another --output"
        with folder_lock(self.path, busy):
            yield

    def is_run(self) -> bool:
        return (self.path / "model.json").exists()

    def description(self):
        """The typed ``model.json`` (:class:`covseg.runs.description.RunDescription`)."""
        from covseg.runs.description import RunDescription

        if not self.path.is_dir():
            raise CovsegError("run folder not found", self.path)
        return RunDescription.read(self.path / "model.json")

    def validation_case_ids(self) -> list[str]:
        """Case ids this run validated on (``splits.json``)."""
        return [str(c) for c in self.read_json("splits.json").get("val", [])]

    def resolve_checkpoint(self, which: str = "best") -> Path:
        """The checkpoint file for ``which``; ``best`` falls back to ``last`` when no best was kept."""
        path = self.checkpoint(which)
        if not path.exists() and which == "best":
            path = self.checkpoint("last")
        return path
