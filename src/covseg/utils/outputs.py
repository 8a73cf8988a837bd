"""Output folders checked against inputs: the one place every command asks before it writes.

A command's output folder is refused, in one line naming it, when

1. it is an existing file, or one of the command's input folders;
2. it already holds an entry the command writes (``masks/``, ``dataset.json``, ``summary.json``…)
   that this command did not write: a dataset's ground-truth ``masks/`` or a user's own
   ``dataset.json`` is never overwritten by outputs that happen to share its layout. What a
   command wrote is recorded in the folder's marker file ``.covseg-output`` (older output folders
   are recognised by their index file, e.g. ``predictions.csv``);
3. it holds an entry the command writes (``masks/``, ``predictions.csv``…) that is a symbolic link
   leading out of the folder: an old output folder whose ``masks/`` now points at a dataset's
   ground truth is never written through, marker or not;
4. and each output file is checked as it is written (:meth:`OutputFolder.check`): it may not be
   one of the input files, whatever way the paths are spelled (symbolic links, ``..``), nor lie
   behind a link that leaves the output folder.

:meth:`OutputFolder.lock` holds the folder for one command (as ``covseg train`` holds its run
folder), and :func:`write_csv` is the one CSV writer: every cell of text is neutralised against
spreadsheet formulas, numbers stay numbers.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import numbers
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from covseg.errors import CovsegError, OutputError

MARKER = ".covseg-output"


def real(path: str | Path) -> Path:
    """``path`` with its folder's symbolic links and ``..`` resolved; the last component is kept as named."""
    path = Path(os.path.abspath(Path(path).expanduser()))
    return Path(os.path.realpath(path.parent)) / path.name


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _link_leaving(folder: Path, inner: Path) -> Path | None:
    """The first symbolic link on the way from ``folder`` down to ``inner`` that leads out of ``folder``."""
    root = Path(os.path.realpath(folder))
    try:
        parts = inner.relative_to(folder).parts
    except ValueError:
        return inner
    current = folder
    for part in parts:
        current = current / part
        if current.is_symlink() and not _within(Path(os.path.realpath(current)), root):
            return current
    return None


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

    def escaping_links(self) -> list[str]:
        """Entries this command writes (and its marker) that are symbolic links leading out of the folder."""
        if not self.path.is_dir():
            return []
        return [name for name in (MARKER, *self.owned) if _link_leaving(self.path, self.path / name) is not None]

    def validate(self) -> None:
        """Rules 1 to 3 of the module docstring, without writing anything."""
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
        links = self.escaping_links()
        if links:
            entry = self.path / links[0]
            raise OutputError(
                f"is a symbolic link leading out of the output folder (to {os.path.realpath(entry)}); covseg never "
                "writes through it: remove the link or choose a new folder",
                entry,
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
        link = _link_leaving(self.path, Path(target).parent)
        if link is not None:
            raise OutputError(
                f"is a symbolic link leading out of the output folder (to {os.path.realpath(link)}); covseg never writes through it",
                link,
            )
        return Path(target)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder while this command writes it: a second covseg writing it at once is refused."""
        busy = f"another covseg {self.command} is writing this folder ({{holder}}); wait for it or choose another output folder"
        with folder_lock(self.path, busy):
            yield


@contextlib.contextmanager
def folder_lock(folder: str | Path, busy: str) -> Iterator[None]:
    """An advisory lock on ``folder/.lock`` (``flock``) held for the ``with`` block.

    A second holder is refused with ``busy`` (its ``{holder}`` names the process holding it). The
    lock goes with its process (``kill -9`` included), so a crash never leaves a stale one; a
    ``.lock`` that is a symbolic link is refused, never followed.
    """
    from covseg.utils.atomic import output_error

    folder = Path(folder)
    target = folder / ".lock"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as exc:
        import errno

        if exc.errno == errno.ELOOP:
            raise OutputError("is a symbolic link; covseg never writes through it: remove it", target) from None
        raise output_error(exc, target) from None
    with os.fdopen(fd, "r+", encoding="utf-8") as handle:
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no flock (Windows): the lock is not enforced there
            pass
        except OSError:
            holder = handle.read(200).strip() or "another process"
            raise OutputError(busy.format(holder=one_line(holder)), folder) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield


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


Row = Mapping[str, object] | Sequence[object]


def csv_cell(value: object, float_format: str | None = None) -> str:
    """One CSV cell: numbers as numbers (``float_format`` for floats, e.g. ``".5f"``), text neutralised.

    Only text is neutralised (:func:`spreadsheet_safe`): a negative number such as ``-0.13``
    stays a number a spreadsheet can compute with. Anything else (paths, tuples) is text.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):  # numpy integers too
        return str(int(value))
    if isinstance(value, numbers.Real):  # numpy floats too
        return format(float(value), float_format) if float_format else str(value)
    return str(spreadsheet_safe(str(value)))


def csv_text(rows: Iterable[Row], columns: Sequence[str] | None = None, float_format: str | None = None) -> str:
    """The CSV text of ``rows`` (dicts, or sequences in ``columns`` order) under a ``columns`` header.

    Dict rows without ``columns`` give the columns in first-seen order; a missing cell is empty.
    Every cell goes through :func:`csv_cell`, header included.
    """
    rows = list(rows)
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows if isinstance(row, Mapping) for k in row))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    # csv quotes a field with "\n" but not one with a lone "\r", which readers take as a line break
    quoted = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    for cells in [[csv_cell(c) for c in columns]] + [
        [csv_cell(v, float_format) for v in ([row.get(c) for c in columns] if isinstance(row, Mapping) else row)] for row in rows
    ]:
        (quoted if any("\r" in c for c in cells) else writer).writerow(cells)
    return buf.getvalue()


def write_csv(target: str | Path, rows: Iterable[Row], columns: Sequence[str] | None = None, float_format: str | None = None) -> Path:
    """Write :func:`csv_text` atomically: the one way covseg writes a CSV file."""
    from covseg.utils.atomic import write_text

    return write_text(target, csv_text(rows, columns, float_format))


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV covseg wrote, as ``{column: text}`` with the neutralising apostrophes removed."""
    with Path(path).open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        return [{from_spreadsheet_safe(k): from_spreadsheet_safe(v or "") for k, v in row.items() if k is not None} for row in csv.DictReader(f)]


def one_line(text: object) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\t``…), so a message about a file stays one line."""
    return "".join(ascii(ch)[1:-1] if ord(ch) < 32 or ord(ch) == 127 else ch for ch in str(text))
