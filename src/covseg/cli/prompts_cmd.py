"""``covseg evaluate-prompts``: the same images scored under every prompt type, model by model."""

from __future__ import annotations

from pathlib import Path

import typer

from covseg.cli._batch import console, progress_bar


def _spread(records: list, limit: int) -> list:
    """``limit`` records spread evenly over the (sorted) list, deterministic."""
    import numpy as np

    if limit <= 0 or limit >= len(records):
        return records
    picks = np.linspace(0, len(records) - 1, limit).round().astype(int)
    return [records[int(i)] for i in picks]


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
    from covseg.data import open_dataset
    from covseg.errors import CovsegError
    from covseg.inference.prompt_eval import (
        evaluate_prompts as run_eval,
    )
    from covseg.inference.prompt_eval import (
        load_prompt_model,
        markdown_table,
        parse_model_spec,
        summary,
    )
    from covseg.utils.atomic import write_json, write_text
    from covseg.utils.outputs import OutputFolder, write_csv
    from covseg.viz.prompts import prompt_figure

    types = [t.strip() for t in prompt_types.split(",") if t.strip()]
    specs = [parse_model_spec(spec) for spec in model]
    folder = OutputFolder(
        out, "evaluate-prompts", [data, texts, *(path for _, path in specs)],
        owned=("summary.json", "prompt_table.md", "prompt_table.csv", "per_case.csv", "prompts_figure.png",
               *(f"zero_shot_{label}" for label, _ in specs)),
        legacy=("prompt_table.md",),
    )  # fmt: skip
    folder.prepare()  # before a CLIPSeg folder's zero-shot run is made in it
    predictors, sources = {}, {}
    for label, path in specs:
        if label in predictors:
            raise CovsegError(f"two models labelled {label!r}; name them LABEL=PATH")
        predictors[label] = load_prompt_model(path, out, checkpoint, label)
        sources[label] = str(path)
    index = open_dataset(data, split=split, text=texts)
    records = _spread([r for r in index.records if r.mask is not None], limit)
    if not records:
        raise CovsegError("no cases with masks in this dataset", data)
    figure: dict = {}

    def keep(case_id, prompt_type, image, masks):
        wanted = figure_case or figure.setdefault("case", case_id)
        if case_id == wanted:
            figure["image"] = image
            for m, mask in masks.items():
                figure.setdefault("masks", {}).setdefault(m, {})[prompt_type] = mask

    with progress_bar("scoring prompts", len(records), quiet) as advance:
        scores = run_eval(predictors, records, types, batch_size=batch_size, on_case=advance, keep=keep)
    if not scores.case_ids:
        raise CovsegError(f"no case has all the prompt types {', '.join(types)}: {scores.skipped[0][1]}", data)
    examples = {t: scores.prompts[t][0] for t in types}
    result = summary(scores, sources, str(data))
    write_json(out / "summary.json", result)
    write_text(out / "prompt_table.md", markdown_table(scores, examples))
    write_csv(out / "prompt_table.csv", result["table"], list(result["table"][0]))
    rows = [
        [case, t, m, float(scores.dice[m][t][k]), float(scores.iou[m][t][k]), scores.prompts[t][k]]
        for k, case in enumerate(scores.case_ids) for t in types for m in scores.models
    ]  # fmt: skip
    write_csv(out / "per_case.csv", rows, ["case", "prompt_type", "model", "dice", "iou", "prompt"], float_format=".5f")
    if "image" in figure:
        from covseg.data import load_sample

        rec = next(r for r in records if r.case_id == figure.get("case", figure_case))
        k = scores.case_ids.index(rec.case_id)
        prompt_figure(
            figure["image"], load_sample(rec).mask, figure["masks"], {t: scores.prompts[t][k] for t in types},
            out / "prompts_figure.png", f"{rec.case_id}: one image under each prompt type",
        )  # fmt: skip
    con = console()
    con.print(markdown_table(scores), markup=False)
    con.print(f"{len(scores.case_ids)} cases scored; results in {out}", markup=False)
    if scores.skipped:
        con.print(f"[yellow]{len(scores.skipped)} cases skipped[/] (listed in summary.json), e.g. {scores.skipped[0][0]}: {scores.skipped[0][1]}")


