"""Output folders checked against inputs: the one place every command asks before it writes.

A command's output folder is refused, in one line naming it, when

1. it is an existing file, or one of the command's input folders;
2. it already holds an entry the command writes (``masks/``, ``dataset.json``, ``summary.json``…)
   that this command did not write: a dataset's ground-truth ``masks/`` or a user's own
   ``dataset.json`` is never overwritten by outputs that happen to share its layout. What a
   command wrote is recorded in the folder's marker file ``.covseg-output`` (older output folders
   are recognised by their index file, e.g. ``predictions.csv``);
3. and each output file is checked as it is written (:meth:`OutputFolder.check`): it may not be
   one of the input files, whatever way the paths are spelled (symbolic links, ``..``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from covseg.errors import CovsegError, OutputError

MARKER = ".covseg-output"


def real(path: str | Path) -> Path:
    """``path`` with its folder's symbolic links and ``..`` resolved; the last component is kept as named."""
    path = Path(os.path.abspath(Path(path).expanduser()))
    return Path(os.path.realpath(path.parent)) / path.name


class OutputFolder:
    """An output folder of ``command`` that reads ``inputs`` (files and folders) and writes ``owned`` entries.

    ``legacy`` names files whose presence shows that an older covseg wrote the folder for this
    command (before the marker existed).
    """

    def __init__(
        self,
        path: str | Path,
        command: str,
        inputs: Iterable[str | Path] = (),
        owned: Iterable[str] = (),
        legacy: Iterable[str] = (),
    ) -> None:
        self.path = Path(path)
        self.command = command
        self.inputs = [Path(p) for p in inputs if p is not None]
        self.owned = tuple(owned)
        self.legacy = tuple(legacy)
        self._protected = {real(p) for p in self.inputs if not Path(p).is_dir()}

    # -- the folder --------------------------------------------------------------------------------
    def commands(self) -> list[str]:
        """Commands recorded in the folder's marker (empty when there is none or it is unreadable)."""
        try:
            data = json.loads((self.path / MARKER).read_text(encoding="utf-8"))
            return [str(c) for c in data.get("commands", [])]
        except (OSError, ValueError, AttributeError):
            return []

    def written_by_us(self) -> bool:
        return self.command in self.commands() or any((self.path / name).exists() for name in self.legacy)

    def foreign_entries(self) -> list[str]:
        """Entries this command would write that are already there and were not written by it."""
        if not self.path.is_dir() or self.written_by_us():
            return []
        return [name for name in self.owned if (self.path / name).exists() or (self.path / name).is_symlink()]

    def validate(self) -> None:
        """Rules 1 and 2 of the module docstring, without writing anything."""
        if self.path.exists() and not self.path.is_dir():
            raise OutputError("the output path is an existing file; give a folder", self.path)
        here = Path(os.path.realpath(self.path))
        for p in self.inputs:
            if Path(p).is_dir() and Path(os.path.realpath(p)) == here:
                raise OutputError(f"the output folder is an input folder of covseg {self.command}; choose another", self.path)
        foreign = self.foreign_entries()
        if foreign:
            shown = ", ".join(f"{n}/" if (self.path / n).is_dir() else n for n in foreign[:4])
            raise OutputError(
                f"already holds {shown}, not written by covseg {self.command}; it would be overwritten "
                "(choose a new or empty folder)",
                self.path,
            )

    def prepare(self) -> Path:
        """Validate, create the folder and record this command in its marker; returns the folder."""
        from covseg.utils.atomic import write_json

        self.validate()
        commands = self.commands()
        if self.command not in commands:
            write_json(self.path / MARKER, {"commands": [*commands, self.command]})
        return self.path

    # -- each file -------------------------------------------------------------------------------
    def check(self, target: str | Path) -> Path:
        """``target``, unless writing it would replace an input file (then a one-line error for that file:
        a batch goes on with the others)."""
        if real(target) in self._protected:
            raise CovsegError(f"would overwrite an input file of covseg {self.command}; inputs are never modified", target)
        return Path(target)


def report_file(target: str | Path, command: str, inputs: Iterable[str | Path]) -> Path:
    """A single report file (``--json``) of ``command``: refused inside or onto its inputs, or onto a folder.

    A dataset's own ``annotation.json`` or ``dataset.json`` is never replaced by a report.
    """
    target = Path(target)
    if target.is_dir():
        raise OutputError("the report path is a folder; give a file name", target)
    here = real(target)
    for p in inputs:
        if p is None:
            continue
        root = Path(os.path.realpath(p))
        if here == root or (root.is_dir() and root in here.parents):
            raise OutputError(f"the report would be written into the input of covseg {command} ({p}); write it elsewhere", target)
    return target


# -- spreadsheet cells -----------------------------------------------------------------------------
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """A CSV cell that a spreadsheet will not run as a formula: text starting with ``= + - @``, a tab or
    a carriage return gets a leading apostrophe (OWASP's advice); numbers and other text are unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def from_spreadsheet_safe(text: str) -> str:
    """The original text of a cell written by :func:`spreadsheet_safe`."""
    if text.startswith("'") and text[1:].startswith(_FORMULA_STARTS):
        return text[1:]
    return text


def one_line(text: object) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\t``…), so a message about a file stays one line."""
    return "".join(ascii(ch)[1:-1] if ord(ch) < 32 or ord(ch) == 127 else ch for ch in str(text))
