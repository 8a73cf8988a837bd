"""Entry point: ``covseg <command>``. Errors in user input print one line, never a traceback."""

from __future__ import annotations

import sys

import typer

from covseg import __version__
from covseg.cli import (
    app_cmd,
    data_cmd,
    demo_cmd,
    evaluate_cmd,
    explain_cmd,
    export_cmd,
    lungmask_cmd,
    models_cmd,
    predict_cmd,
    prompts_cmd,
    pseudo_cmd,
    text_cmd,
    train_cmd,
    weights_cmd,
)

app = typer.Typer(
    name="covseg",
    help="COVID-19 lung-infection segmentation on CT and chest X-ray: data checks, training, prediction, evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_cmd.app, name="data", help="Check and convert datasets.")
app.add_typer(text_cmd.app, name="text", help="Captions and prompt types made from masks.")
app.command("demo")(demo_cmd.demo)
app.command("evaluate")(evaluate_cmd.evaluate)
app.command("evaluate-prompts")(prompts_cmd.evaluate_prompts)
app.command("train")(train_cmd.train)
app.command("predict")(predict_cmd.predict)
app.command("explain")(explain_cmd.explain)
app.command("pseudo-label")(pseudo_cmd.pseudo_label)
app.add_typer(models_cmd.app, name="models", help="Registered parts, and the trained models shipped with covseg.")
app.command("export")(export_cmd.export)
app.command("lungmask")(lungmask_cmd.lungmask)
app.command("app")(app_cmd.app)
app.add_typer(weights_cmd.app, name="weights", help="Import published checkpoints as run folders.")


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
    """Run the CLI; every failure becomes one line on stderr, never a traceback.

    Usage errors (a missing option, a bad value) are click's, printed with the usage line in
    standalone mode. Everything else is turned into a line here, in one place:

    * ``CovsegError`` (bad input, config or output; names the file): exit 2;
    * ``OSError`` from the system (a file that vanished, a folder without permission): exit 2;
    * Ctrl-C: one line "interrupted", exit 130 (typer's own silent exit 130 included); running out of memory: exit 3;
    * anything else is a covseg bug: one line saying so, exit 3 (``COVSEG_DEBUG=1`` shows the traceback).
    """
    import os

    from covseg.errors import CovsegError

    try:
        try:
            app(args=argv, prog_name="covseg")
        except SystemExit as exc:  # typer turns Ctrl-C into a silent exit 130: say so
            if _caused_by(exc, KeyboardInterrupt):
                raise KeyboardInterrupt from None
            raise
    except CovsegError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except MemoryError:
        _fail("out of memory (try a smaller --batch-size or fewer cases at once)", 3)
    except OSError as exc:
        if os.environ.get("COVSEG_DEBUG"):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(f"{where}{exc.strerror or exc}")
    except Exception as exc:
        if os.environ.get("COVSEG_DEBUG"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _fail(f"internal error ({type(exc).__name__}: {first}); this is a covseg bug: please report it "
              "(COVSEG_DEBUG=1 shows the traceback)", 3)


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """True when ``kind`` is in ``exc``'s chain of causes and contexts."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        if isinstance(link, kind):
            return True
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return False


def _fail(message: str, code: int = 2) -> None:
    from covseg.cli._batch import console, user_text

    console().print(f"[bold red]error:[/] {user_text(message)}")
    sys.exit(code)


if __name__ == "__main__":
    main()
