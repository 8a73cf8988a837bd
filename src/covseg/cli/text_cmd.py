"""``covseg text``: text made from data (``make-captions``: captions and prompt types from masks)."""

from __future__ import annotations

from pathlib import Path

import typer

from covseg.cli._batch import console, progress_bar

app = typer.Typer(no_args_is_help=True, help="Text for the text-guided models, made from the data.")


@app.command("make-captions")
def make_captions(
    masks: Path = typer.Option(..., "--masks", help="Folder of 2D infection masks (PNG, JPG, TIF, BMP)."),
    out: Path = typer.Option(..., "--out", help="captions.csv to write (QaTa columns; usable as a text source)."),
    lungs: Path = typer.Option(None, "--lungs", help="Folder of lung masks named like the masks (sets the lung frame)."),
    prompts: Path = typer.Option(None, "--prompts", help="Also write the prompt types P0..P4 as CRIS-style JSON here."),
    captions: Path = typer.Option(None, "--captions", help="Human captions (any text source): P4 becomes the human one."),
    min_zone_fraction: float = typer.Option(0.004, help="Share of the lung area (image area without --lungs) a zone needs."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad mask instead of listing it."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Write QaTa-style captions (sides, infected zones, region count, extent) made from masks.

    Left/right are image sides and the lungs are cut into six zones, as in QaTa-COV19; without
    --lungs the lung frame is a fixed share of the image fitted to QaTa.
    """
    from covseg.api import make_captions as write_captions

    with progress_bar("captioning", 0, quiet) as advance:
        rows, failed = write_captions(
            masks, out, lungs=lungs, prompts=prompts, captions=captions, min_zone_fraction=min_zone_fraction,
            strict=strict, on_start=advance.set_total, on_done=advance,
        )  # fmt: skip
    con = console()
    con.print(f"wrote {len(rows)} captions to {out}" + (f" and prompt types to {prompts}" if prompts else ""), markup=False)
    if failed:
        con.print(f"[bold red]{len(failed)} failed[/]:")
        for path, msg in failed:
            con.print(f"  {path}: {msg}", markup=False)
        raise typer.Exit(1)
