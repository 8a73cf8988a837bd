"""``covseg weights``: published checkpoints in, covseg run folders out."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Import the checkpoints the authors of the field's models released.", no_args_is_help=True)


@app.command("import")
def import_(
    file: Path = typer.Argument(..., metavar="FILE", help="The released checkpoint (a state dict; read with weights_only=True)."),
    format: str = typer.Option(..., "--format", "-f", help="Checkpoint format (covseg weights formats)."),
    output: Path = typer.Option(..., "--output", "-o", metavar="RUN_DIR", help="Run folder to write."),
    prior: Path | None = typer.Option(None, "--prior", metavar="RUN_DIR", help="Binary run whose infection map a cascade format (infnet-multiclass) reads."),
    text_encoder: Path | None = typer.Option(
        None, "--text-encoder", metavar="DIR", help="Local Hugging Face text encoder folder a text-guided format reads captions with (lvit: BERT-base, 768-d)."
    ),
    tokenizer: Path | None = typer.Option(
        None, "--tokenizer", metavar="BPE", help="clip format: OpenAI's bpe_simple_vocab_16e6.txt.gz or a CLIP tokenizer folder (for the text tower)."
    ),
    classifier: Path | None = typer.Option(
        None,
        "--classifier",
        metavar="FILE",
        help="jcs format: the authors' classification checkpoint (res2net_cls.pth) for the class probability.",
    ),
) -> None:
    """Turn an author's checkpoint into a run folder for predict, evaluate, explain and export (clip: a CLIP folder for cris)."""
    from rich.console import Console
    from rich.markup import escape

    from covseg.api import import_weights
    from covseg.runs.importers import get_format

    path = import_weights(
        format, file, output, prior, text_encoder=text_encoder, tokenizer=tokenizer, classifier=classifier
    )
    console = Console(stderr=True, highlight=False)
    usage = getattr(get_format(format), "usage", None)
    if usage is not None:
        console.print(f"[bold green]imported[/] {escape(str(file))} → model folder {escape(str(path))}", soft_wrap=True)
        for line in usage(path):
            console.print(f"  {escape(line)}", soft_wrap=True)
        return
    console.print(f"[bold green]imported[/] {escape(str(file))} → run folder {escape(str(path))}", soft_wrap=True)
    from covseg.runs.folder import RunFolder

    text = RunFolder(path).description().text
    if text is not None and text.input == "attributes":
        console.print("[yellow]note[/] predicting reads a QaTa-style caption per image (--text-file captions.csv)", soft_wrap=True)
    elif text is not None and text_encoder is None:
        console.print(f"[yellow]note[/] predicting needs the text encoder {escape(str((text.encoder or {}).get('name')))}", soft_wrap=True)


@app.command("formats")
def formats() -> None:
    """List the checkpoint formats covseg imports and what each one is."""
    from rich.console import Console
    from rich.markup import escape

    from covseg.registry import CHECKPOINT_FORMATS

    console = Console(highlight=False)
    for name, text in CHECKPOINT_FORMATS.describe().items():
        console.print(f"[bold]{escape(name)}[/]  {escape(text)}", soft_wrap=True)
