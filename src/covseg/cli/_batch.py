"""Shared by the commands: the stderr console, user text made safe to print, progress bars, failure lists.

Every path, file name or message that came from the user goes through :func:`user_text` before
rich sees it: rich markup such as ``[/]`` in a folder name is escaped (it would otherwise crash
the printer), and control characters or bytes that are not UTF-8 are shown as escapes, so each
message stays one line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer


def console():
    """The stderr console every command prints to (no wrapping: one message, one line)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def printable(text: object) -> str:
    """``text`` as one printable line: control characters escaped (``\\n``), undecodable file-name
    bytes shown as ``\\xNN``."""
    out = []
    for ch in str(text):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (os.fsdecode's surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 32 or code == 127 or 0xD800 <= code <= 0xDFFF:
            out.append(ascii(ch)[1:-1])
        else:
            out.append(ch)
    return "".join(out)


def user_text(text: object) -> str:
    """User-supplied text ready for a rich markup string: printable, with markup escaped."""
    from rich.markup import escape

    return escape(printable(text))


@contextlib.contextmanager
def progress_bar(label: str, total: int, quiet: bool = False) -> Iterator[Callable[[], None]]:
    """A rich progress bar over ``total`` inputs (on terminals only); yields the function that advances it by one."""
    out = console()
    if quiet or not out.is_terminal:  # no bar: rich.progress is not even imported

        def silent() -> None:
            return None

        silent.set_total = lambda n: None  # type: ignore[attr-defined]
        yield silent
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(user_text(label)), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=out) as prog:
        task = prog.add_task(label, total=total)

        def advance() -> None:
            prog.advance(task)

        advance.set_total = lambda n: prog.update(task, total=n)  # type: ignore[attr-defined]  # a total learnt later
        yield advance


def finish(report: Any, output: Path, done_message: str, quiet_rank: bool = False) -> None:
    """Print what was written, then each failed input on its own line; exit 1 if any failed.

    ``quiet_rank``: a torchrun process other than the main one prints nothing (same exit code)."""
    if quiet_rank:
        if report.failed:
            raise typer.Exit(1)
        return
    out = console()
    out.print(printable(done_message), markup=False)
    if report.failed:
        out.print(f"[bold red]{len(report.failed)} failed[/] (listed in {user_text(output / 'failed.txt')}):")
        for path, msg in report.failed:
            out.print(printable(f"  {path}: {msg}"), markup=False)
        raise typer.Exit(1)


def check_options(**checks: tuple[bool, str]) -> None:
    """Refuse nonsense option values in one line: ``check_options(largest=(largest >= 0, "must be >= 0"))``."""
    from covseg.errors import ConfigError

    for name, (ok, problem) in checks.items():
        if not ok:
            raise ConfigError(f"--{name.replace('_', '-')}: {problem}")


def say_models(models: list[str] | str, quiet: bool = False) -> None:
    """One line per model saying which one runs (a shipped model, or a run folder's absolute path);
    shown even when ``quiet`` if a shipped model's name hides a local folder of that name."""
    from covseg.zoo import describe_model  # not via covseg.runs, whose package imports pydantic

    for given in [models] if isinstance(models, str) else models:
        text = describe_model(given)
        if not quiet or "not the local folder" in text:
            console().print(f"model: {user_text(text)}")

