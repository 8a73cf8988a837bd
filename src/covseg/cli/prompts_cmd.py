"""``covseg evaluate-prompts``: the same images scored under every prompt type, model by model."""

from __future__ import annotations

from pathlib import Path

import typer

from covseg.cli._batch import console, progress_bar


def evaluate_prompts(
    model: list[str] = typer.Option(..., "--model", "-m", metavar="[LABEL=]RUN_DIR|CLIPSEG_DIR", help="Run folder, or a CLIPSeg weights folder (zero-shot); repeat to compare."),
    data: Path = typer.Option(..., "--data", help="Dataset folder with masks and prompts (CRIS JSON P0..Pn, or --texts)."),
    prompt_types: str = typer.Option(..., "--prompt-types", help="Comma-separated prompt types, e.g. P0,P1,P2,P3,P4."),
    out: Path = typer.Option(..., "--out", help="Output folder: prompt_table.md/.csv, per_case.csv, summary.json, prompts_figure.png."),
    texts: Path = typer.Option(None, "--texts", help="Text source with the prompt types (replaces the dataset's own)."),
    split: str = typer.Option(None, "--split", help="Dataset split (train, valid, ...)."),
    checkpoint: str = typer.Option("best", help="best or last."),
    limit: int = typer.Option(0, help="Score this many cases, spread evenly over the dataset (0 = all)."),
    figure_case: str = typer.Option(None, "--figure-case", help="Case id of the figure (default: the first scored case)."),
    batch_size: int = typer.Option(8, help="Images per forward pass."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Dice and IoU per prompt type for each model (zero-shot and fine-tuned side by side), paired bootstrap
    intervals between the types, and a figure of one image under each prompt."""
    from covseg.api import evaluate_prompts as run_prompts  # writes through the output guard
    from covseg.inference.options import PromptEvalOptions
    from covseg.inference.prompt_eval import markdown_table

    options = PromptEvalOptions(prompt_types=[t.strip() for t in prompt_types.split(",") if t.strip()], texts=texts, split=split,
                                checkpoint=checkpoint, limit=limit, figure_case=figure_case, batch_size=batch_size)  # fmt: skip
    with progress_bar("scoring prompts", 0, quiet) as advance:
        scores, _ = run_prompts(model, data, out, options, on_start=advance.set_total, on_case=advance)
    con = console()
    con.print(markdown_table(scores), markup=False)
    con.print(f"{len(scores.case_ids)} cases scored; results in {out}", markup=False)
    if scores.skipped:
        con.print(f"[yellow]{len(scores.skipped)} cases skipped[/] (listed in summary.json), e.g. {scores.skipped[0][0]}: {scores.skipped[0][1]}")
