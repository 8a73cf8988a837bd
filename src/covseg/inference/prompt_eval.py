"""The same images scored under every prompt type (P0..Pn), for one or several models.

``covseg evaluate-prompts`` runs this: each model (a run folder, or a CLIPSeg weights folder
used zero-shot) predicts every case once per prompt type, with the prompt of that type from
the case's texts (CRIS-style JSON ``prompts``, or a text source given with ``--texts``); Dice
and IoU are per case at the model's threshold, so the types are compared on the same cases
(paired bootstrap intervals of the mean difference). A case that lacks one of the types is
skipped for all of them and listed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from covseg.errors import CovsegError
from covseg.inference.predictor import BasePredictor


def parse_model_spec(spec: str) -> tuple[str, Path]:
    """``LABEL=PATH`` or ``PATH`` (the label is then the folder's name)."""
    if "=" in spec and not Path(spec).exists():
        label, path = spec.split("=", 1)
        return label.strip() or Path(path).name, Path(path)
    return Path(spec).name, Path(spec)


def load_prompt_model(path: Path, work_dir: Path, checkpoint: str = "best", label: str = "model") -> BasePredictor:
    """The predictor of a run folder, or of a CLIPSeg weights folder (a zero-shot run made in ``work_dir``)."""
    from covseg.inference.loading import load_predictor

    if (path / "model.json").is_file():
        predictor = load_predictor(path, checkpoint)
    elif (path / "config.json").is_file():
        from covseg.inference.zero_shot import make_clipseg_run

        predictor = load_predictor(make_clipseg_run(path, work_dir / f"zero_shot_{label}"), "best")
    else:
        raise CovsegError("not a run folder (model.json) nor a CLIPSeg weights folder (config.json)", path)
    if not getattr(predictor, "text_guided", False):
        raise CovsegError("this model is not text-guided: prompts cannot change its output", path)
    return predictor


def prompt_of(record: Any, prompt_type: str) -> str | None:
    """The case's prompt of ``prompt_type`` (case-insensitive key of ``record.texts``)."""
    for key, value in (record.texts or {}).items():
        if key.lower() == prompt_type.lower() and value and str(value).strip():
            return str(value)
    return None


@dataclass
class PromptScores:
    """Per-case Dice and IoU of each model under each prompt type, on the same cases."""

    models: list[str]
    types: list[str]
    case_ids: list[str] = field(default_factory=list)
    prompts: dict[str, list[str]] = field(default_factory=dict)  # type → each case's prompt
    dice: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # model → type → per case
    iou: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (case id, why)

    def mean(self, metric: str, model: str, prompt_type: str) -> float:
        values = getattr(self, metric)[model][prompt_type]
        return float(np.mean(values)) if values else float("nan")

    def table_rows(self) -> list[dict[str, Any]]:
        """One row per prompt type: mean Dice and IoU of each model."""
        rows = []
        for t in self.types:
            row: dict[str, Any] = {"prompt_type": t, "cases": len(self.case_ids)}
            for m in self.models:
                row[f"{m}_dice"] = round(self.mean("dice", m, t), 4)
                row[f"{m}_iou"] = round(self.mean("iou", m, t), 4)
            rows.append(row)
        return rows

    def paired_intervals(self, n_boot: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
        """For each model and pair of types: mean Dice difference (b − a) with a 95 % paired bootstrap interval."""
        out = []
        n = len(self.case_ids)
        if n == 0:
            return out
        idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        for m in self.models:
            for a, b in combinations(self.types, 2):
                diff = np.asarray(self.dice[m][b]) - np.asarray(self.dice[m][a])
                boots = diff[idx].mean(1)
                out.append(
                    {
                        "model": m, "from": a, "to": b, "dice_difference": round(float(diff.mean()), 4),
                        "ci95": [round(float(np.percentile(boots, 2.5)), 4), round(float(np.percentile(boots, 97.5)), 4)],
                        "better_in_cases": int((diff > 0).sum()), "worse_in_cases": int((diff < 0).sum()),
                    }
                )  # fmt: skip
        return out


def _overlap(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    inter = float(np.logical_and(pred, gt).sum())
    total = float(pred.sum() + gt.sum())
    union = float(np.logical_or(pred, gt).sum())
    return (1.0 if total == 0 else 2.0 * inter / total), (1.0 if union == 0 else inter / union)


def evaluate_prompts(
    predictors: dict[str, BasePredictor],
    records: Sequence[Any],
    types: Sequence[str],
    batch_size: int = 8,
    on_case: Callable[[], None] | None = None,
    keep: Callable[[str, str, np.ndarray, dict[str, np.ndarray]], None] | None = None,
) -> PromptScores:
    """Score every model under every prompt type on the records that have all the types.

    ``keep(case_id, type, image, {model: mask})`` receives the predicted masks (for figures).
    """
    from covseg.data import load_sample

    types = list(types)
    if not types:
        raise CovsegError("no prompt types given (e.g. --prompt-types P0,P1,P2)")
    scores = PromptScores(list(predictors), types)
    scores.prompts = {t: [] for t in types}
    scores.dice = {m: {t: [] for t in types} for m in predictors}
    scores.iou = {m: {t: [] for t in types} for m in predictors}
    usable = []
    for rec in records:
        texts = {t: prompt_of(rec, t) for t in types}
        missing = [t for t, v in texts.items() if v is None]
        if missing:
            have = ", ".join(rec.texts or {}) or "none"
            scores.skipped.append((rec.case_id, f"no prompt {', '.join(missing)} (has {have})"))
        elif rec.mask is None:
            scores.skipped.append((rec.case_id, "no mask"))
        else:
            usable.append((rec, texts))
    for start in range(0, len(usable), batch_size):
        chunk = usable[start : start + batch_size]
        samples = []
        for rec, texts in chunk:
            try:
                samples.append((rec, texts, load_sample(rec)))
            except CovsegError as exc:
                scores.skipped.append((rec.case_id, str(exc)))
        if not samples:
            continue
        images = [s.image for _, _, s in samples]
        for t in types:
            texts_t = [texts[t] for _, texts, _ in samples]
            masks: dict[str, list[np.ndarray]] = {}
            for m, predictor in predictors.items():
                probs = predictor.predict_batch(images, batch_size=batch_size, texts=texts_t).probs  # the batch, as one call
                masks[m] = [predictor.to_labels(p) > 0 for p in probs]
            for k, (rec, _, sample) in enumerate(samples):
                gt = np.asarray(sample.mask) > 0
                for m in predictors:
                    d, i = _overlap(masks[m][k], gt)
                    scores.dice[m][t].append(d)
                    scores.iou[m][t].append(i)
                if keep is not None:
                    keep(rec.case_id, t, sample.image, {m: masks[m][k] for m in predictors})
            scores.prompts[t] += texts_t
        for rec, _, _ in samples:
            scores.case_ids.append(rec.case_id)
            if on_case is not None:
                on_case()
    return scores


def summary(scores: PromptScores, sources: dict[str, str], data: str) -> dict[str, Any]:
    """The JSON written beside the table."""
    return {
        "data": data,
        "models": sources,
        "prompt_types": scores.types,
        "cases": len(scores.case_ids),
        "skipped": [{"case": c, "why": w} for c, w in scores.skipped],
        "table": scores.table_rows(),
        "paired_bootstrap": scores.paired_intervals(),
        "threshold": "each model's own (model.json), mean per-case Dice and IoU at the mask's original size",
    }


def markdown_table(scores: PromptScores, examples: dict[str, str] | None = None) -> str:
    """Prompt types as rows, each model's Dice and IoU side by side."""
    head = "| prompt type | " + " | ".join(f"{m} Dice | {m} IoU" for m in scores.models)
    head += " | example prompt |" if examples else " |"
    sep = "|---|" + "---|---|" * len(scores.models) + ("---|" if examples else "")
    lines = [head, sep]
    for row in scores.table_rows():
        t = row["prompt_type"]
        cells = " | ".join(f"{row[f'{m}_dice']:.4f} | {row[f'{m}_iou']:.4f}" for m in scores.models)
        example = f" | {examples.get(t, '')} |" if examples else " |"
        lines.append(f"| {t} | {cells}{example}")
    return "\n".join(lines) + "\n"
