"""Errors users see: one line that names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class CovsegError(Exception):
    """A problem with user input, reported as ``<path>: <problem>`` without a traceback."""

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}" if self.path else self.problem


class DataError(CovsegError):
    """A dataset file is missing, unreadable or inconsistent with its partner."""


class ConfigError(CovsegError):
    """A configuration file or override is invalid."""


class OutputError(CovsegError):
    """An output cannot be written (disk full, read-only folder, a file in the way, an input in the way).

    Unlike a bad input, it concerns every case of a batch, so batch commands stop at it.
    """
