"""Atomic file writes: write to a temporary file beside the target, then rename.

A crash or kill never leaves a half-written output under the final name, and a failed write
(disk full, read-only folder, a file where a folder should be) removes its temporary file and
becomes one :class:`~covseg.errors.OutputError` naming the target. :func:`write_unit` writes a
set of files that belong together (an evaluation's CSV, summary and report) so that a kill never
leaves new files beside old ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from covseg.errors import CovsegError, OutputError


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success."""
    target = Path(target)
    if target.is_dir():
        raise OutputError("cannot write this file: a folder of that name is in the way", target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:48]}.", suffix=".tmp" + "".join(target.suffixes), dir=target.parent)
    except OSError as exc:
        raise output_error(exc, target) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp_path, target)
    except OSError as exc:
        raise output_error(exc, target) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def output_error(exc: OSError, target: Path) -> CovsegError:
    """One line for a failed write: what the system said, naming the output (or the file in the way)."""
    import errno

    if exc.errno == errno.ENAMETOOLONG:  # this file's name only: the others can still be written
        return CovsegError("output file name too long for the file system", target)
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):  # a file stands where a folder is needed
        return OutputError(f"a file is in the way of the output folder (writing {target.name})", _first_file(target.parent))
    return OutputError(f"cannot write ({exc.strerror or type(exc).__name__})", target)


def _first_file(folder: Path) -> Path:
    for parent in (folder, *folder.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_with(target: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``target`` atomically."""
    with atomic_path(target) as tmp:
        writer(tmp)
    return Path(target)


def write_text(target: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically; file names that are not UTF-8 keep their bytes (``surrogateescape``)."""
    return write_with(target, lambda p: p.write_text(text, encoding="utf-8", errors="surrogateescape"))


def write_bytes(target: str | Path, data: bytes) -> Path:
    """Write bytes atomically."""
    return write_with(target, lambda p: p.write_bytes(data))


def write_json(target: str | Path, obj: Any, indent: int = 2) -> Path:
    """Write JSON atomically (numpy scalars and paths are converted)."""
    return write_text(target, json.dumps(obj, indent=indent, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_unit(
    folder: str | Path, writers: dict[str, Callable[[Path], Any]], commit: str, stale: tuple[str, ...] = ()
) -> dict[str, Path]:
    """Write files that belong together into ``folder`` as one unit; ``commit`` names the file written last.

    Every file is first written in full into a hidden staging folder. Then the old unit's
    ``commit`` file is removed, the old files are replaced one by one, and ``commit`` is moved in
    last; ``stale`` names files of an old unit that the new one does not have (removed with it). A
    kill at any point leaves either the old complete unit, or a unit without its
    ``commit`` file (incomplete, recognisably), or the new complete unit: never new files
    beside old ones under a valid ``commit`` file. Returns ``{name: final path}``.
    """
    import shutil

    folder = Path(folder)
    if commit not in writers:
        raise ValueError(f"commit file {commit!r} is not among the files to write")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in folder.glob(".unit-*.tmp"):  # staging folders of killed runs
            shutil.rmtree(leftover, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".unit-", suffix=".tmp", dir=folder))
    except OSError as exc:
        raise output_error(exc, folder) from None
    try:
        for name, writer in writers.items():
            write_with(staging / name, writer)
        current = folder / commit
        try:
            current.unlink(missing_ok=True)
            for name in stale:
                if name not in writers:
                    current = folder / name
                    current.unlink(missing_ok=True)
            for name in [n for n in writers if n != commit] + [commit]:
                current = folder / name
                os.replace(staging / name, current)
        except OSError as exc:
            raise output_error(exc, current) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {name: folder / name for name in writers}
