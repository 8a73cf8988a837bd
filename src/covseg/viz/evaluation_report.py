"""The HTML page of ``covseg evaluate``: summary, histogram, curves, worst/best overlays, bad cases."""

from __future__ import annotations

import html
import json
import math
from typing import TYPE_CHECKING, Any

from covseg.viz.overlay import GT_COLOUR, OVERLAP_COLOUR, PRED_COLOUR, overlay, thumbnail
from covseg.viz.plots import curves_png
from covseg.viz.report import HtmlReport
from covseg.viz.svg_plots import histogram_svg

if TYPE_CHECKING:
    from covseg.metrics.evaluation import EvaluationRun


def _legend() -> str:
    def swatch(colour: tuple[int, int, int], label: str) -> str:
        return f'<span style="background: rgb{colour}"></span>{label}'

    return (
        '<p class="legend">'
        + swatch(GT_COLOUR, "ground truth")
        + swatch(PRED_COLOUR, "prediction")
        + swatch(OVERLAP_COLOUR, "overlap")
        + "</p>"
    )


def _stats_rows(metrics: dict[str, dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for name, s in metrics.items():
        mean, std = s["mean"], s["std"]
        pm = "–" if math.isnan(mean) else f"{mean:.4f} ± {std:.4f}" if not math.isnan(std) else f"{mean:.4f}"
        rows.append([name, pm, s["median"], s["min"], s["max"], s["n"], s["n_nan"]])
    return rows


def ranked_cases(run: EvaluationRun, show: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """``(worst, best)`` lists of ``(case_id, score)`` by the primary metric; NaN cases are not ranked."""
    acc = run.accumulator
    scores = [(cid, s) for cid, s in acc.case_scores().items() if not math.isnan(s)]
    better_high = acc.higher_is_better.get(acc.primary_metric, True)
    scores.sort(key=lambda t: t[1], reverse=not better_high)  # worst first
    # With fewer than 2 × show ranked cases, split them between the two lists instead of repeating.
    n_worst = min(show, (len(scores) + 1) // 2)
    worst = scores[:n_worst]
    best = list(reversed(scores[n_worst:]))[:show]
    return worst, best


def _overlay_items(run: EvaluationRun, ranked: list[tuple[str, float]], metric: str) -> list[tuple[Any, str]]:
    from covseg.errors import DataError
    from covseg.metrics.evaluation import case_display_arrays

    by_id = {c.case_id: c for c in run.cases}
    items = []
    for cid, score in ranked:
        case = by_id[cid]
        try:
            image, gt, pred, note = case_display_arrays(case, run)
            rgb = thumbnail(overlay(image, gt, pred))
        except (DataError, ValueError) as exc:
            items.append((_placeholder(), f"{cid}: {metric} {score:.4f} (no overlay: {exc})"))
            continue
        resized = run.resized.get(cid)
        if resized:
            note = (note + "; " if note else "") + f"prediction resized from {'x'.join(map(str, resized))}"
        caption = f"{cid}: {metric} {score:.4f}" + (f" ({note})" if note else "")
        items.append((rgb, caption))
    return items


def _volume_scrollers(
    report: HtmlReport, run: EvaluationRun, ranked: list[tuple[str, float]], metric: str
) -> None:
    """The worst and the best volume case as slice scrollers with three views (axial, coronal, sagittal)."""
    from covseg.data.imageio import read_volume
    from covseg.errors import DataError
    from covseg.metrics.evaluation import case_display_arrays_nd
    from covseg.viz.scroller import scroller_html, view_stacks

    by_id = {c.case_id: c for c in run.cases}
    blocks = []
    for cid, score in dict(ranked).items():
        case = by_id[cid]
        try:
            image, gt, pred, _ = case_display_arrays_nd(case, run)
            if gt.ndim != 3:
                continue
            affine = read_volume(case.gt_path, check_finite=False)[2]
            stacks = view_stacks(
                image if image is not None and image.shape == gt.shape else None, gt, pred, affine
            )
        except (DataError, ValueError) as exc:
            blocks.append(
                f'<p class="note">{html.escape(cid)}: no slice scroller ({html.escape(str(exc))})</p>'
            )
            continue
        blocks.append(
            scroller_html(
                stacks,
                f"{cid}: {metric} {score:.4f}; drag a slider to scroll that view",
                f"scroll-{len(blocks)}",
            )
        )
    if blocks:
        report.heading("Volumes: slice scroller")
        report.raw_html(_legend())
        for block in blocks:
            report.raw_html(block)


def _placeholder() -> Any:
    import numpy as np

    return np.full((64, 64, 3), 200, dtype=np.uint8)


def build_evaluation_report(run: EvaluationRun, summary: dict[str, Any], show: int = 6) -> HtmlReport:
    """Compose the report of one evaluation run (``summary`` as written to ``summary.json``)."""
    acc = run.accumulator
    opts = run.options
    report = HtmlReport(
        f"covseg evaluate: {acc.protocol} protocol",
        subtitle=f"predictions {opts.get('pred', '?')} vs ground truth {opts.get('gt', '?')}; "
        f"{summary['num_cases']} cases scored, {summary['num_bad']} skipped",
    )
    if run.bad:
        report.note(f"{len(run.bad)} case(s) could not be scored; they are listed at the end.")
    if run.resized:
        report.note(
            f"{len(run.resized)} prediction(s) had a different size from their ground truth and were resized "
            "to it (soft maps bilinear, masks nearest); metrics use the ground truth's original resolution."
        )

    report.heading("Summary")
    if acc.protocol == "medical":
        report.paragraph(
            f"Distances (HD95, ASSD) in {summary.get('distance_unit', 'voxel')}; spacing: {run.spacing_source}. "
            f"NaN cases are handled by reduction={summary['reduction']!r} (n = cases used, NaN = cases left out)."
        )
    columns = ["metric", "mean ± std", "median", "min", "max", "n", "NaN"]
    report.table(_stats_rows(summary["metrics"]), columns, caption="Per-case statistics")
    if acc.protocol == "medical" and len(summary.get("per_class", {})) > 1:
        for cls, metrics in summary["per_class"].items():
            report.table(_stats_rows(metrics), columns, caption=f"Class {cls}")
    if acc.protocol == "sod":
        report.table(
            [[k, v] for k, v in summary["toolbox"].items()],
            ["metric", "value"],
            caption="Data-set numbers as the Inf-Net toolbox / pysodmetrics report them "
            "(max_* = max over thresholds of the image-averaged curve)",
        )

    if "classification" in summary or "explanation" in summary:  # a joint model (covseg.metrics.joint)
        from covseg.viz.explanations import add_classification_sections, panel_thumbnail

        panels = [(panel_thumbnail(path), caption) for path, caption in run.extras.get("panels", [])]
        add_classification_sections(report, summary, panels)

    metric = acc.primary_metric
    scores = list(acc.case_scores().values())
    report.heading(f"Per-case {metric}")
    value_range = (0.0, 1.0) if acc.higher_is_better.get(metric, True) else None
    report.svg(
        histogram_svg(
            scores, title=f"{metric} per case (n = {len(scores)})", xlabel=metric, value_range=value_range
        ),
        caption=f"Histogram of per-case {metric}",
    )
    if acc.protocol == "sod" and hasattr(acc, "mean_curves"):
        curves = acc.mean_curves()
        import numpy as np

        x = np.arange(len(next(iter(curves.values())))) / 255
        report.image(
            curves_png(
                x, curves, title="Image-averaged curves", xlabel="threshold", ylabel="score", ylim=(0.0, 1.02)
            ),
            caption="Mean over images at each of the 256 thresholds",
        )

    worst, best = ranked_cases(run, show)
    if worst:
        report.heading("Worst cases")
        report.raw_html(_legend())
        report.gallery(_overlay_items(run, worst, metric))
    if best:
        report.heading("Best cases")
        report.raw_html(_legend())
        report.gallery(_overlay_items(run, best, metric))
    _volume_scrollers(report, run, [*worst[:1], *best[:1]], metric)
    unranked = [cid for cid, s in acc.case_scores().items() if math.isnan(s)]
    if unranked:
        report.paragraph(
            f"Not ranked ({metric} undefined, e.g. empty ground truth and prediction): {', '.join(unranked)}"
        )

    if run.bad:
        report.heading("Skipped cases")
        report.bullet_list([str(b) for b in run.bad])

    report.heading("Protocol, parameters and versions")
    report.preformatted(
        json.dumps(
            {
                "protocol": summary["protocol"],
                "params": summary["params"],
                "options": summary.get("options", {}),
                "versions": summary["versions"],
            },
            indent=2,
            default=str,
        )
    )
    return report


def render_evaluation_report(run: EvaluationRun, summary: dict[str, Any], show: int = 6) -> str:
    """The HTML text of :func:`build_evaluation_report`; pass it (with ``show`` bound) as the
    ``report`` renderer of :func:`covseg.metrics.evaluation.write_outputs` to get ``report.html``."""
    return build_evaluation_report(run, summary, show=show).render()
