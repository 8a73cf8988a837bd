"""Entry point: ``covseg <command>``. Errors in user input print one line, never a traceback."""

from __future__ import annotations

import sys

import typer

from covseg import __version__
from covseg.cli import (
    data_cmd,
    demo_cmd,
    evaluate_cmd,
    export_cmd,
    lungmask_cmd,
    predict_cmd,
    pseudo_cmd,
    train_cmd,
)

app = typer.Typer(
    name="covseg",
    help="COVID-19 lung-infection segmentation on CT and chest X-ray: data checks, training, prediction, evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_cmd.app, name="data", help="Check and convert datasets.")
app.command("demo")(demo_cmd.demo)
app.command("evaluate")(evaluate_cmd.evaluate)
app.command("train")(train_cmd.train)
app.command("predict")(predict_cmd.predict)
app.command("pseudo-label")(pseudo_cmd.pseudo_label)
app.command("models")(train_cmd.list_models)
app.command("export")(export_cmd.export)
app.command("lungmask")(lungmask_cmd.lungmask)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"covseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Show the version."),
) -> None:
    """COVID-19 lung-infection segmentation toolkit."""


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user-input errors become one red line and exit code 2.

    Usage errors (a missing option, a bad value) are click's, printed with the usage line
    in standalone mode; errors in the user's files and configs are ``CovsegError``.
    """
    from covseg.errors import CovsegError

    try:
        app(args=argv, prog_name="covseg")
    except CovsegError as exc:
        _fail(str(exc))


def _fail(message: str, code: int = 2) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
