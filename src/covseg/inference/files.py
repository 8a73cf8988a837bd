"""Batch machinery every command that works through files shares: one bad file is listed, not fatal.

:func:`for_each_file` runs the work of each file and collects rows and one-line failures;
:class:`EarlierIndex` keeps the index (``predictions.csv``, ``confidence.csv``) of earlier runs
into the same folder; :func:`write_index` writes it with ``failed.txt``.
"""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from covseg.errors import CovsegError, DataError, OutputError
from covseg.utils.atomic import write_text
from covseg.utils.outputs import one_line, read_csv, write_csv

if TYPE_CHECKING:  # torch-free at import: a torch-free prediction writes through this module
    from covseg.engine.runtime import Runtime


@dataclass
class BatchReport:
    """What a batch run wrote and which inputs failed (with their one-line reasons)."""

    written: list[dict] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def for_each_file(
    files: list[Path],
    work: Callable[[Path], dict],
    strict: bool = False,
    on_done: Callable[[], None] | None = None,
) -> BatchReport:
    """Run ``work(path) -> row`` on every file: a bad file is listed and skipped unless ``strict``;
    each row gets the file's seconds (and the process's CPU seconds: all threads).

    A ``CovsegError`` gives the file's one-line problem; any other exception raised on one file
    (a reader broken by a file nobody foresaw) is listed as such, so one file never costs the
    rest of the batch. An ``OutputError`` (disk full, read-only folder) stops the batch: every
    further file would fail the same way.
    """
    report = BatchReport()
    for path in files:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            row = work(path)
            row["seconds"] = round(time.perf_counter() - t0, 4)
            row["cpu_seconds"] = round(time.process_time() - c0, 4)
            report.written.append(row)
        except OutputError:
            raise
        except CovsegError as exc:
            if strict:
                raise
            report.failed.append((str(path), exc.problem if exc.path else str(exc)))
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            problem = f"unexpected {type(exc).__name__} while processing this file ({first})"
            if strict:
                raise DataError(problem, path) from None
            report.failed.append((str(path), problem))
        if on_done:
            on_done()
    return report


def distinct_stems(files: list[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files whose outputs get distinct names, and a failure line for each file of a clashing group.

    Outputs are named by stem (``a.png`` and ``a.jpg`` both give ``masks/a.png``); names that differ
    only in case clash too, as they would on case-insensitive disks.
    """
    from covseg.data.imageio import stem_of

    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(stem_of(f).casefold(), []).append(f)
    keep, failed = [], []
    for f in files:
        group = groups[stem_of(f).casefold()]
        if len(group) == 1:
            keep.append(f)
        else:
            others = ", ".join(g.name for g in group if g != f)
            failed.append((str(f), f"its outputs would overwrite those of {others} (same name without suffix); rename one"))
    return keep, failed


def write_failures(out_dir: Path, report: BatchReport) -> None:
    """``failed.txt``: one line per input that failed, with its reason."""
    if report.failed:
        write_text(out_dir / "failed.txt", "".join(failure_line(p, m) for p, m in report.failed))


def failure_line(path: str, problem: str) -> str:
    return f"{one_line(path)}: {one_line(problem)}\n"


_NUMBER = re.compile(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|-?(inf|nan)")


def _typed(text: str) -> object:
    """A cell read back from an index file: numbers as numbers (so the CSV writer keeps them numbers)."""
    if not _NUMBER.fullmatch(text):
        return text
    return int(text) if text.lstrip("-").isdigit() else float(text)


class EarlierIndex:
    """The index file (``predictions.csv``, ``confidence.csv``) and ``failed.txt`` of earlier runs into a folder.

    Read before a run starts; :meth:`merge` gives the earlier rows of cases the new run did not redo,
    followed by the new rows, so two runs into one folder (one after the other) lose no row. A
    case is keyed by ``key(row)``: the name of its output file, so ``-o out`` and ``-o ./out/`` agree.
    """

    def __init__(self, out_dir: Path, index_name: str, key: Callable[[dict], str]) -> None:
        self.index = Path(out_dir) / index_name
        self.failed_path = Path(out_dir) / "failed.txt"
        self.key = key
        self.rows: list[dict] = []
        self.failed_lines: list[str] = []
        try:
            if self.index.is_file():
                self.rows = [{k: _typed(v) for k, v in row.items()} for row in read_csv(self.index)]
            if self.failed_path.is_file():
                self.failed_lines = self.failed_path.read_text(encoding="utf-8", errors="surrogateescape").splitlines(keepends=True)
        except (OSError, csv.Error) as exc:
            raise OutputError(f"cannot read the earlier run's file to add to it ({exc}); move it away", self.index) from None

    def merge(self, report: BatchReport, inputs: list[Path]) -> tuple[list[dict], list[str]]:
        """(rows, failed.txt lines) of the earlier runs and ``report`` together; the later run wins per case."""
        redone = {self.key(row) for row in report.written}
        rows = [row for row in self.rows if self.key(row) not in redone] + report.written
        tried = tuple(f"{one_line(p)}: " for p in inputs)
        failed = [line for line in self.failed_lines if not line.startswith(tried)]
        return rows, failed + [failure_line(p, m) for p, m in report.failed]


def write_index(
    out_dir: Path, name: str, rows: list[dict], columns: list[str], failed: list[str], float_format: str | None = None
) -> None:
    """Write a batch's index file and ``failed.txt`` (removed when nothing failed)."""
    if rows:
        write_csv(out_dir / name, rows, columns, float_format)
    if failed:
        write_text(out_dir / "failed.txt", "".join(failed))
    else:
        (out_dir / "failed.txt").unlink(missing_ok=True)


def gather_report(runtime: Runtime, report: BatchReport, files: list[Path]) -> BatchReport:
    """Every process's rows, in the order of ``files`` (one process: the report itself)."""
    if not runtime.distributed:
        return report
    order = {str(f): i for i, f in enumerate(files)}
    parts = runtime.gather_objects((report.written, report.failed))
    written = sorted((row for rows, _ in parts for row in rows), key=lambda r: order.get(r.get("input", ""), 0))
    failed = sorted((f for _, fails in parts for f in fails), key=lambda f: order.get(f[0], 0))
    return BatchReport(written=written, failed=failed)
