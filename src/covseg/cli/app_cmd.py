"""``covseg app``: the local web app."""

from __future__ import annotations

from pathlib import Path

import typer


def app(
    model: list[Path] = typer.Option(None, "--model", "-m", metavar="RUN_DIR", help="Also offer this run folder (repeat for more); shipped models are always offered."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default: this machine only)."),
    port: int = typer.Option(8765, "--port", help="Port to listen on."),
    max_voxels: int = typer.Option(512**3, "--max-voxels", help="Refuse uploads whose header declares more values than this (read before decoding)."),
) -> None:
    """Open a local web app: upload an image, volume or X-ray (with a caption), pick a model, see the
    overlay (a slice slider for volumes), the infected area or volume, and download the mask."""
    from covseg.app import serve
    from covseg.cli._batch import check_options, console

    check_options(port=(0 < port < 65536, f"{port} must be a TCP port (1..65535)"),
                  max_voxels=(max_voxels > 0, f"{max_voxels} must be a positive number of values"))  # fmt: skip
    console().print(f"covseg app on http://{host}:{port}/ (Ctrl-C stops it; it answers only requests addressed to it)")
    serve(list(model or []), host=host, port=port, max_voxels=max_voxels)
