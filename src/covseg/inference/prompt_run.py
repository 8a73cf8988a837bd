"""``covseg evaluate-prompts`` from the models to the files: :func:`run_prompt_evaluation`.

The models are loaded (run folders, or CLIPSeg weights used zero-shot), the dataset's cases scored
under every prompt type (:func:`covseg.inference.prompt_eval.evaluate_prompts`), and the results
written into the output folder: ``summary.json``, ``prompt_table.md`` / ``.csv``, ``per_case.csv``
and, given a ``figure`` renderer (from :mod:`covseg.viz`, a layer up), ``prompts_figure.png``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covseg.errors import CovsegError
from covseg.inference.options import PromptEvalOptions
from covseg.inference.prompt_eval import PromptScores

#: ``figure(image, gt, {model: {type: mask}}, {type: prompt}, path, title)`` writes the figure of one case
FigureRenderer = Callable[..., Any]


def spread(records: list, limit: int) -> list:
    """``limit`` records spread evenly over the (sorted) list, deterministic (all of them when ``limit`` <= 0)."""
    if limit <= 0 or limit >= len(records):
        return records
    picks = np.linspace(0, len(records) - 1, limit).round().astype(int)
    return [records[int(i)] for i in picks]


def run_prompt_evaluation(
    models: Sequence[str],
    data: str | Path,
    out: str | Path,
    options: PromptEvalOptions,
    *,
    figure: FigureRenderer | None = None,
    on_start: Callable[[int], None] | None = None,
    on_case: Callable[[], None] | None = None,
) -> tuple[PromptScores, dict[str, Any]]:
    """Score each model (``[LABEL=]PATH``) under each prompt type on ``data`` and write the results into ``out``;
    returns the scores and the summary written. ``on_start(n)`` gets the number of cases, ``on_case()`` follows each."""
    from covseg.data import open_dataset
    from covseg.inference.prompt_eval import (
        evaluate_prompts,
        load_prompt_model,
        markdown_table,
        parse_model_spec,
        summary,
    )
    from covseg.utils.atomic import write_json, write_text
    from covseg.utils.outputs import OutputFolder, write_csv

    data, out, texts = Path(data), Path(out), None if options.texts is None else Path(options.texts)
    types = list(options.prompt_types)
    specs = [parse_model_spec(spec) for spec in models]
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
        predictors[label] = load_prompt_model(path, out, options.checkpoint, label)
        sources[label] = str(path)
    index = open_dataset(data, split=options.split, text=texts)
    records = spread([r for r in index.records if r.mask is not None], options.limit)
    if not records:
        raise CovsegError("no cases with masks in this dataset", data)
    if on_start is not None:
        on_start(len(records))
    shown: dict = {}

    def keep(case_id, prompt_type, image, masks):
        wanted = options.figure_case or shown.setdefault("case", case_id)
        if case_id == wanted:
            shown["image"] = image
            for m, mask in masks.items():
                shown.setdefault("masks", {}).setdefault(m, {})[prompt_type] = mask

    scores = evaluate_prompts(
        predictors, records, types, batch_size=options.batch_size, on_case=on_case, keep=keep
    )
    if not scores.case_ids:
        raise CovsegError(
            f"no case has all the prompt types {', '.join(types)}: {scores.skipped[0][1]}", data
        )
    examples = {t: scores.prompts[t][0] for t in types}
    result = summary(scores, sources, str(data))
    write_json(out / "summary.json", result)
    write_text(out / "prompt_table.md", markdown_table(scores, examples))
    write_csv(out / "prompt_table.csv", result["table"], list(result["table"][0]))
    rows = [
        [case, t, m, float(scores.dice[m][t][k]), float(scores.iou[m][t][k]), scores.prompts[t][k]]
        for k, case in enumerate(scores.case_ids) for t in types for m in scores.models
    ]  # fmt: skip
    write_csv(
        out / "per_case.csv",
        rows,
        ["case", "prompt_type", "model", "dice", "iou", "prompt"],
        float_format=".5f",
    )
    if figure is not None and "image" in shown:
        from covseg.data import load_sample

        rec = next(r for r in records if r.case_id == shown.get("case", options.figure_case))
        k = scores.case_ids.index(rec.case_id)
        figure(
            shown["image"], load_sample(rec).mask, shown["masks"], {t: scores.prompts[t][k] for t in types},
            out / "prompts_figure.png", f"{rec.case_id}: one image under each prompt type",
        )  # fmt: skip
    return scores, result
