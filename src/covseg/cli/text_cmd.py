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
    from covseg.data.captions import caption_for_file, captions_csv, mask_files, prompts_json
    from covseg.errors import CovsegError
    from covseg.utils.atomic import write_json, write_text
    from covseg.utils.outputs import real, report_file

    inputs = [masks, lungs, captions]
    for target in (out, prompts):
        if target is not None:
            report_file(target, "text make-captions", inputs)
    if prompts is not None and real(prompts) == real(out):
        raise CovsegError("--prompts and --out name the same file; give two", prompts)
    human = None
    if captions is not None:
        from covseg.data.text_sources import load_texts

        human = load_texts(captions)
    files = mask_files(masks)
    rows, failed = [], []
    with progress_bar("captioning", len(files), quiet) as advance:
        for path in files:
            try:
                rows.append(caption_for_file(path, lungs, human, min_zone_fraction=min_zone_fraction))
            except CovsegError as exc:
                if strict:
                    raise
                failed.append((path, str(exc)))
            advance()
    if not rows:
        why = f" ({failed[0][1]}{f'; and {len(failed) - 1} more' if len(failed) > 1 else ''})" if failed else ""
        raise CovsegError(f"no mask could be captioned{why}", masks)
    write_text(out, captions_csv(rows))
    if prompts is not None:
        write_json(prompts, prompts_json(rows))
    con = console()
    con.print(f"wrote {len(rows)} captions to {out}" + (f" and prompt types to {prompts}" if prompts else ""), markup=False)
    if failed:
        con.print(f"[bold red]{len(failed)} failed[/]:")
        for path, msg in failed:
            con.print(f"  {path}: {msg}", markup=False)
        raise typer.Exit(1)
