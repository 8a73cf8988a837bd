"""Shared by the batch commands: a progress bar and the end-of-run list of failed inputs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer


def console():
    """The stderr console every command prints to."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


@contextlib.contextmanager
def progress_bar(label: str, total: int, quiet: bool = False) -> Iterator[Callable[[], None]]:
    """A rich progress bar over ``total`` inputs; yields the function that advances it by one."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console(), disable=quiet) as prog:
        task = prog.add_task(label, total=total)
        yield lambda: prog.advance(task)


def finish(report: Any, output: Path, done_message: str, quiet_rank: bool = False) -> None:
    """Print what was written, then each failed input on its own line; exit 1 if any failed.

    ``quiet_rank``: a torchrun process other than the main one prints nothing (same exit code)."""
    if quiet_rank:
        if report.failed:
            raise typer.Exit(1)
        return
    out = console()
    out.print(done_message, markup=False)
    if report.failed:
        out.print(f"[bold red]{len(report.failed)} failed[/] (listed in {output / 'failed.txt'}):")
        for path, msg in report.failed:
            out.print(f"  {path}: {msg}", markup=False)
        raise typer.Exit(1)
