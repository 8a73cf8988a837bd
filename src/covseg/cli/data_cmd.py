"""``covseg data check|convert|layouts``: validate a dataset folder, convert between layouts."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)

PROGRESS_MIN_CASES = 200  # show a progress bar from this many cases on


@app.command("layouts")
def layouts() -> None:
    """List the dataset layouts covseg reads, in auto-detection order."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from covseg.data.layouts import LAYOUTS

    table = Table("layout", "folder shape", "text", box=None)
    for layout in LAYOUTS.values():
        table.add_row(layout.name, escape(layout.description), "yes" if layout.has_text else "")
    table.add_row(
        "splits", "a folder whose child folders are datasets of the above (train/, valid/, ...)", ""
    )
    Console().print(table)


@app.command("check")
def check(
    path: Path = typer.Argument(..., help="Dataset folder (or its CSV/JSON/list file)."),
    layout: str = typer.Option(
        "auto", "--layout", "-l", help="Layout name (see `covseg data layouts`) or auto."
    ),
    split: str = typer.Option(None, "--split", "-s", help="Check one split only (default: every split)."),
    text: Path = typer.Option(
        None, "--text", help="Text source to use instead of the layout's own (xlsx, csv, json, txt)."
    ),
    prompt: str = typer.Option(
        None, "--prompt", help="Named prompt to use as the text (CRIS prompts, e.g. P0)."
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Fail on warnings too (empty masks, unlabelled images)."
    ),
    json_out: Path = typer.Option(
        None, "--json", help="Write the full report (every finding) to this JSON file."
    ),
    show: int = typer.Option(10, "--show", help="Findings listed per kind in the table."),
    workers: int = typer.Option(None, "--workers", help="Threads decoding files (default: up to 4)."),
) -> None:
    """Validate a dataset: pairs, orphans, sizes, mask values, empty masks, text, unreadable files, NaN.

    Errors (exit code 1): orphan masks or images, missing or unreadable files, size or geometry
    mismatches, grey-level or colour masks, NaN, missing text. Warnings: empty masks, unlabelled
    images (errors too with --strict). Information: unused text entries, multi-class masks.
    """
    from rich.console import Console

    from covseg.data.check import check_dataset
    from covseg.utils.atomic import write_json
    from covseg.utils.outputs import report_file

    if json_out is not None:  # a list or CSV file stands for its folder: the dataset
        report_file(json_out, "data check", [path if path.is_dir() else path.parent, text])
    console = Console()
    with _progress_bar() as advance:
        report = check_dataset(path, layout, split, text, prompt, progress=advance, workers=workers)
    _print_report(console, report, show, strict)
    if json_out is not None:
        write_json(json_out, {**report.to_dict(), "strict": strict, "ok": report.ok(strict)})
        console.print(f"report written to {json_out}", highlight=False, markup=False)
    if not report.ok(strict):
        raise typer.Exit(code=1)


@app.command("convert")
def convert(
    src: Path = typer.Argument(..., help="Source dataset folder (or a NIfTI volume)."),
    dst: Path = typer.Argument(..., help="Destination folder (outside the source; created)."),
    to: str = typer.Option(None, "--to", "-t", help="Target layout: folder, infnet or cosup (not with --stack)."),
    layout: str = typer.Option("auto", "--layout", "-l", help="Source layout or auto."),
    split: str = typer.Option(
        None, "--split", "-s", help="Convert one split only (default: all, into DST/<split>/)."
    ),
    window: str = typer.Option(
        "lung",
        "--window",
        "-w",
        help="HU window for volumes: lung, mediastinum, abdomen, display (volumes already 0..255) or LOW,HIGH (e.g. -1250,250).",
    ),
    labels: str = typer.Option(
        None, "--labels", help="Mask labels forming the foreground, e.g. 10,11,12,13,14 (volumes)."
    ),
    orientation: str = typer.Option(
        "radiological",
        "--orientation",
        help="Axial slice display: radiological (patient right on the left) or neurological.",
    ),
    skip_empty: bool = typer.Option(
        False, "--skip-empty", help="Write only slices whose mask has foreground (volumes)."
    ),
    derive_edges: bool = typer.Option(
        None,
        "--derive-edges/--no-derive-edges",
        help="Derive edge maps from masks where none exist (default: on for infnet and cosup).",
    ),
    mask: Path = typer.Option(None, "--mask", help="Mask volume for a single NIfTI source."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Write into a non-empty destination (files are replaced, none deleted)."
    ),
    json_out: Path = typer.Option(None, "--json", help="Write the conversion report to this JSON file."),
    stack: bool = typer.Option(
        False, "--stack", help="Slices NAME_<k>.<ext> (or images/ + masks/) → one NIfTI volume per NAME in DST/images (+ labels)."
    ),
    spacing: str = typer.Option("1,1,1", "--spacing", help="With --stack: voxel spacing X,Y,Z in mm (columns, rows, slices)."),
    pad: bool = typer.Option(
        False, "--pad", help="With --stack: centre slices of different sizes on the largest (zeros around; cropped one by one)."
    ),
) -> None:
    """Convert a dataset: volumes → axial PNG slices (HU window), Inf-Net ↔ folder, folder → co-supervision,
    and with --stack numbered slices → volumes (back: --to folder --window display).

    Inputs are never modified, every file is written atomically, and a failing case is listed
    while the rest are converted (exit code 1 when any failed).
    """
    from rich.console import Console
    from rich.markup import escape

    from covseg.data.convert import convert_dataset
    from covseg.errors import DataError
    from covseg.utils.atomic import write_json
    from covseg.utils.outputs import report_file

    if json_out is not None:
        report_file(json_out, "data convert", [src if src.is_dir() else src.parent, mask])
    if stack:
        return _stack(src, dst, spacing, overwrite, pad)
    if to is None:
        raise DataError("give --to folder|infnet|cosup (or --stack to make volumes of numbered slices)")
    label_values = None
    if labels:
        try:
            label_values = [int(v) for v in labels.replace(" ", "").split(",") if v]
        except ValueError:
            raise DataError(f"bad --labels {labels!r}: give whole numbers separated by commas") from None
        wrong = [v for v in label_values if not 1 <= v <= 255]
        if not label_values or wrong:
            raise DataError(f"bad --labels {labels!r}: label volumes hold whole numbers 0..255 and 0 is background; give labels 1..255")
    console = Console()
    with _progress_bar("converting") as advance:
        report = convert_dataset(
            src,
            dst,
            to,
            layout=layout,
            split=split,
            window=window,
            labels=label_values,
            orientation=orientation,
            skip_empty=skip_empty,
            derive_edges=derive_edges,
            mask=mask,
            overwrite=overwrite,
            progress=lambda done, total: advance("", done, total),
        )
    slices = f", {report.slices} slices" if report.slices else ""
    console.print(
        f"{report.cases} cases → {report.dst} ({report.to}): {report.written} files written{slices}",
        highlight=False,
        markup=False,
    )
    for note in report.notes:
        console.print(f"  note: {note}", highlight=False, markup=False, soft_wrap=True)
    for case, problem in report.failed:
        console.print(f"  [red]failed[/] {escape(case)}: {escape(problem)}", highlight=False, soft_wrap=True)
    if json_out is not None:
        write_json(json_out, report.to_dict())
    if report.failed:
        console.print(
            f"[red]{len(report.failed)} case(s) failed[/]; the others were converted", highlight=False
        )
        raise typer.Exit(code=1)


def _stack(src: Path, dst: Path, spacing_text: str, overwrite: bool, pad: bool) -> None:
    from rich.console import Console
    from rich.markup import escape

    from covseg.data.convert import _check_destination
    from covseg.data.stack import stack_folder
    from covseg.errors import DataError
    from covseg.utils.outputs import OutputFolder

    try:
        spacing = tuple(float(v) for v in spacing_text.replace(" ", "").split(","))
    except ValueError:
        spacing = ()
    if len(spacing) != 3 or any(not v > 0 for v in spacing):
        raise DataError(f"bad --spacing {spacing_text!r}: give three positive numbers X,Y,Z in mm")
    if not src.is_dir():
        raise DataError("source folder not found", src)
    _check_destination(src, dst, overwrite)
    guard = OutputFolder(dst, "data convert", [src])
    guard.prepare()
    for folder in ("images", "labels"):  # never through a link out of the destination (--overwrite)
        guard.check(dst / folder / "volume.nii.gz")
    console = Console()
    with _progress_bar("stacking") as advance:
        written, failed = stack_folder(src, dst, spacing, lambda done, total: advance("", done, total), pad)  # type: ignore[arg-type]
    console.print(f"{len(written)} volume files written to {dst}", highlight=False, markup=False)
    for name, problem in failed:
        console.print(f"  [red]failed[/] {escape(name)}: {escape(problem)}", highlight=False, soft_wrap=True)
    if failed:
        console.print(f"[red]{len(failed)} volume(s) failed[/]; the others were stacked", highlight=False)
        raise typer.Exit(code=1)


@app.command("phantoms")
def phantoms(
    dst: Path = typer.Argument(..., help="Destination folder (created)."),
    cases: int = typer.Option(24, "--cases", "-n", help="Number of phantoms."),
    three_d: bool = typer.Option(False, "--3d", help="3D CT volumes (NIfTI, HU) instead of 2D slices (PNG)."),
    size: str = typer.Option(None, "--size", help="2D: side in pixels (128); 3D: X,Y,Z voxels (64,64,32)."),
    spacing: str = typer.Option("5,5,8", "--spacing", help="3D: voxel spacing X,Y,Z in mm."),
    seed: int = typer.Option(0, "--seed"),
    unlabelled: bool = typer.Option(False, "--unlabelled", help="3D: images only (an unlabelled set)."),
) -> None:
    """Write synthetic chest-CT phantoms with infection masks (2D slices, or 3D volumes with --3d)."""
    from covseg.errors import DataError
    from covseg.utils.outputs import OutputFolder

    def numbers(text: str, n: int, what: str) -> tuple:
        try:
            values = tuple(float(v) for v in text.replace(" ", "").split(","))
        except ValueError:
            values = ()
        if len(values) != n or any(not v > 0 for v in values):
            raise DataError(f"bad {what} {text!r}: give {n} positive number(s)")
        return values

    if cases < 1:
        raise DataError(f"--cases must be at least 1, got {cases}")
    owned = ("images", "labels", "labels_multiclass", "lungs") if three_d else ("images", "masks", "masks_multiclass", "edges", "labels.csv")
    # every option is checked before the output folder is made: a refused command writes nothing
    if three_d:
        shape = tuple(int(v) for v in numbers(size or "64,64,32", 3, "--size"))
        if not all(1 <= v <= 512 for v in shape):
            raise DataError(f"bad --size {size!r}: 3D phantoms take 1 to 512 voxels per axis")
        voxel_mm = numbers(spacing, 3, "--spacing")
    else:
        side = int(numbers(size or "128", 1, "--size")[0])
        if not 8 <= side <= 4096:
            raise DataError(f"bad --size {size!r}: 2D phantoms take 8 to 4096 pixels (smaller ones leave no room for lungs)")
    OutputFolder(dst, "data phantoms", owned=owned).prepare()
    if three_d:
        from covseg.data.synthetic3d import write_phantom_volumes

        write_phantom_volumes(dst, cases, shape, voxel_mm, seed=seed, labels=not unlabelled)  # type: ignore[arg-type]
    else:
        from covseg.data.synthetic import write_phantom_dataset

        write_phantom_dataset(dst, cases, size=side, seed=seed)
    typer.echo(f"{cases} {'3D ' if three_d else ''}phantoms written to {dst}")


class _progress_bar:
    """A transient progress bar on stderr for big folders; ``advance(label, done, total)``."""

    def __init__(self, verb: str = "checking") -> None:
        self.verb = verb
        self.progress = None
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self.progress.start()
        return self.advance

    def advance(self, label: str, done: int, total: int) -> None:
        if total < PROGRESS_MIN_CASES or self.progress is None:
            return
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(f"{self.verb} {label}".strip(), total=total)
        self.progress.update(self.tasks[label], completed=done)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


def _print_report(console, report, show: int, strict: bool) -> None:
    from collections import defaultdict

    from rich.markup import escape
    from rich.table import Table

    parts = report.parts or [report]
    splits = f" · splits: {', '.join(p.split or '-' for p in report.parts)}" if report.parts else ""
    console.print(f"[bold]{escape(str(report.root))}[/]  layout: {report.layout}{splits}", highlight=False, soft_wrap=True)
    table = Table(
        "split", "layout", "cases", "pairs", "no mask", "text", "errors", "warnings", "info", "time", box=None
    )
    for p in parts:
        table.add_row(
            escape(p.split or "-"),
            p.layout,
            str(p.cases),
            str(p.pairs),
            str(p.unlabelled),
            str(p.with_text) if p.has_text else "-",
            _count(p, "error", "red"),
            _count(p, "warning", "yellow"),
            str(p.count("info")),
            f"{p.seconds:.1f} s",
        )
    console.print(table)
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for f in report.all_findings():
        groups[(f.severity, f.kind)].append(f)
    order = {"error": 0, "warning": 1, "info": 2}
    for (severity, kind), items in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 3), kv[0][1])):
        colour = {"error": "red", "warning": "yellow"}.get(severity, "cyan")
        console.print(f"[{colour}]{severity}[/] {kind} ({len(items)})", highlight=False)
        for f in items[:show]:
            console.print(f"  {f}", highlight=False, soft_wrap=True, markup=False)
        if len(items) > show:
            console.print(f"  … {len(items) - show} more (--json OUT lists all)", highlight=False)
    errors, warnings, info = report.count("error"), report.count("warning"), report.count("info")
    verdict = "[green]OK[/]" if report.ok(strict) else "[red]FAILED[/]"
    rule = " (--strict: warnings fail)" if strict else ""
    console.print(
        f"{verdict}: {report.cases} cases ({report.pairs} with masks) checked in {report.seconds:.1f} s: "
        f"{_plural(errors, 'error')}, {_plural(warnings, 'warning')}, {info} info{rule}",
        highlight=False,
        soft_wrap=True,
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _count(part, severity: str, colour: str) -> str:
    n = part.count(severity)
    return f"[{colour}]{n}[/]" if n else "0"
