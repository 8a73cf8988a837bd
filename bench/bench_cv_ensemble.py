"""Inference-time levers for the CT model, cross-validated: flip TTA and ensembles of configurations.

Issue 24 §3 asks whether fold ensembles should be the shipped model where they win. Only the
5-fold protocol of ``bench_covid_semiseg.py`` can say so honestly, so this script re-scores
already trained fold runs (no training) on each fold's 10 held-out slices with that bench's own
``score_run`` (last checkpoint, original size, medical Dice@0.5 and the sod protocol) and pools the
folds as its report does. Per fold k it scores:

(a) each variant's fold-k run alone, which must reproduce the stored fold JSON of the bench
    (checked case by case, the largest difference is printed and written);
(b) the same with flip TTA (the predictor's ``tta_flip``: mean of the image and its left-right flip);
(c) the ensemble of the fold-k runs of two or more *configurations* (nnU-Net's ensembling of
    configurations: soft maps averaged by ``EnsemblePredictor``);
(d) the ensemble with flip TTA.

Why only fold-k runs on fold k: every member of a fold-k ensemble trained on fold k's training
slices only, so the held-out slices stay unseen by all members and the estimate stays a
cross-validation estimate. Averaging the five fold models (each fold's model saw the other folds'
held-out slices) on a fold's held-out slices would score models on slices they trained on; that
is how the shipped all-data model differs from its CV recipe, never how the recipe is scored.
The script refuses members whose training cases include the fold's held-out slices.

A variant's fold counts as complete when the bench wrote its result file
(``<stored>/<variant>/fold<k>.json``, written after training and scoring), so folds still
training are left out. Costs: CPU seconds of each scoring (process time, so the load of other jobs
on the machine does not inflate it), prediction CPU seconds per slice (model loading excluded) on
one fold, and the shipped size of each member (its last checkpoint packed as the zoo packs it, fp16
safetensors).

Usage::

    python bench/bench_cv_ensemble.py --runs /root/covseg-runs/bench/covid_semiseg
    python bench/bench_cv_ensemble.py --variants resunet_all_effl0_e100_neg,resunet_all_effl0_e100,resunet_all_effl1_e100 \
        --stored /work/main/bench/results/covid_semiseg --runs /root/covseg-runs/bench/covid_semiseg
    python bench/bench_cv_ensemble.py --report     # tables from the scored folds only

Results: ``bench/results/covid_semiseg/ensembles/<lever>/fold<k>.json``, ``summary.json``, ``summary.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cv_common import ROOT, machine, pooled, score_run

DEFAULT_VARIANTS = "resunet_all_effl0_e100_neg,resunet_all_effl0_e100"
STORED = ROOT / "bench" / "results" / "covid_semiseg"
RUNS = ROOT / "runs" / "bench" / "covid_semiseg"
OUT = STORED / "ensembles"
TARGETS = {"mean_dice": 0.750, "s_measure": 0.800, "mae": 0.064}  # Semi-Inf-Net's published level (issue 24)
SOD = ("mean_dice", "mean_sensitivity", "mean_specificity", "s_measure", "mean_e_measure", "mae")
TTA = "__tta"


def lever_name(members: tuple[str, ...], tta: bool) -> str:
    """``a`` alone, ``a+b`` an ensemble; ``__tta`` when predicted with flip TTA."""
    return "+".join(members) + (TTA if tta else "")


def parse_lever(name: str) -> tuple[tuple[str, ...], bool]:
    tta = name.endswith(TTA)
    return tuple(name.removesuffix(TTA).split("+")), tta


def complete_folds(stored: Path, variant: str, folds: list[int]) -> list[int]:
    """The folds whose bench result file exists: trained to the end and scored."""
    return [k for k in folds if (stored / variant / f"fold{k}.json").exists()]


def levers_for(variants: list[str], ensembles: list[tuple[str, ...]]) -> list[str]:
    """Every variant alone and with TTA, then every ensemble alone and with TTA."""
    return [lever_name(m, t) for m in [(v,) for v in variants] + ensembles for t in (False, True)]


def check_members_honest(run_dirs: list[Path]) -> None:
    """Refuse an ensemble whose members trained on a held-out slice of the fold, or hold out other slices."""
    splits = [json.loads((d / "splits.json").read_text()) for d in run_dirs]
    held_out = set(splits[0]["val"])
    for d, s in zip(run_dirs, splits):
        if set(s["val"]) != held_out:
            raise SystemExit(f"{d}: holds out other slices than {run_dirs[0]}")
        if held_out & set(s["train"]):
            raise SystemExit(f"{d}: trained on slices that the fold holds out")


def reproduction_gap(result: dict[str, Any], stored: dict[str, Any]) -> float:
    """Largest absolute difference over every per-case metric of a re-scored fold against the stored one."""
    gap = 0.0
    for key in ("medical_records", "sod_records"):
        if len(result[key]) != len(stored[key]):
            return float("inf")
        for a, b in zip(result[key], stored[key]):
            if a.get("case_id") != b.get("case_id"):
                return float("inf")
            for m, v in a.items():
                if isinstance(v, (int, float)) and isinstance(b.get(m), (int, float)):
                    gap = max(gap, abs(float(v) - float(b[m])))
    return gap


def pool(results: list[dict[str, Any]]) -> dict[str, float]:
    """Pooled metrics over every held-out slice of the given fold results, as the bench's report pools them."""
    med = [r for res in results for r in res["medical_records"]]
    sod = [r for res in results for r in res["sod_records"]]
    row = {"dice@0.5": pooled(med, "dice")[0]}
    row.update({m: pooled(sod, m)[0] for m in SOD})
    return row


def paired_deltas(
    per_fold: dict[int, dict[str, float]], baseline: dict[int, dict[str, float]], metric: str
) -> dict[str, Any]:
    """Per-fold differences of a metric against the baseline on the same folds, and how many are gains."""
    folds = sorted(set(per_fold) & set(baseline))
    deltas = {k: per_fold[k][metric] - baseline[k][metric] for k in folds}
    better = sum(d < 0 if metric == "mae" else d > 0 for d in deltas.values())
    return {"per_fold": deltas, "better": better, "folds": len(folds)}


def packed_mib(run_dir: Path) -> float:
    """Size of the run's last checkpoint packed as the zoo ships it (fp16 safetensors), in MiB."""
    from covseg.runs.packing import WEIGHTS, pack_run

    with tempfile.TemporaryDirectory() as tmp:
        return (pack_run(run_dir, tmp, {}, checkpoint="last") / WEIGHTS).stat().st_size / 2**20


def predict_cpu_per_slice(run_dirs: list[Path], tta: bool) -> float:
    """CPU seconds per held-out slice of ``predict_image`` (models loaded and warmed up first)."""
    import torch

    from covseg.data import load_sample
    from covseg.inference.loading import load_predictors
    from covseg.training.config import load_config
    from covseg.training.data import open_records

    torch.set_num_threads(1)
    cfg = load_config(run_dirs[0] / "config.yaml")
    val = json.loads((run_dirs[0] / "splits.json").read_text())["val"]
    records = {r.case_id: r for r in open_records(cfg.data.root, cfg.data.layout, cfg.data.split)}
    images = [load_sample(records[c]).image for c in val]
    predictor = load_predictors(run_dirs, checkpoint="last")
    predictor.predict_image(images[0], tta_flip=tta)
    t0 = time.process_time()
    for image in images:
        predictor.predict_image(image, tta_flip=tta)
    return (time.process_time() - t0) / len(images)


def score(lever: str, fold: int, runs: Path, stored: Path, out: Path) -> None:
    """Score one lever on one fold (skipped when its result file exists)."""
    result_file = out / lever / f"fold{fold}.json"
    if result_file.exists():
        return
    members, tta = parse_lever(lever)
    run_dirs = [runs / m / f"fold{fold}" for m in members]
    check_members_honest(run_dirs)
    t0 = time.process_time()
    result = score_run(run_dirs if len(run_dirs) > 1 else run_dirs[0], 1, tta_flip=tta)
    result.update(
        {
            "lever": lever,
            "members": list(members),
            "tta_flip": tta,
            "fold": fold,
            "score_cpu_seconds": time.process_time() - t0,
        }
    )
    if len(members) == 1 and not tta:
        result["reproduction_gap"] = reproduction_gap(
            result, json.loads((stored / members[0] / f"fold{fold}.json").read_text())
        )
        print(
            f"[{lever} fold {fold}] largest per-case difference to the stored fold: {result['reproduction_gap']:.2e}",
            flush=True,
        )
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result, indent=1))
    print(
        f"[{lever} fold {fold}] sod mean Dice {pool([result])['mean_dice']:.4f} ({result['score_cpu_seconds']:.1f} CPU s)",
        flush=True,
    )


def report(levers: list[str], baseline: str, out: Path, costs: dict[str, Any]) -> dict[str, Any]:
    """Per-fold and pooled tables, each lever against the baseline on the folds both have."""
    results = {
        lv: {int(f.stem[4:]): json.loads(f.read_text()) for f in sorted((out / lv).glob("fold*.json"))}
        for lv in levers
    }
    per_fold = {lv: {k: pool([r]) for k, r in res.items()} for lv, res in results.items()}
    rows = []
    for lv in levers:
        folds = sorted(results[lv])
        if not folds:
            continue
        row = {"lever": lv, "folds": folds, **pool([results[lv][k] for k in folds])}
        row["baseline_same_folds"] = pool([results[baseline][k] for k in folds if k in results[baseline]])
        row["delta"] = {
            m: paired_deltas(per_fold[lv], per_fold[baseline], m)
            for m in ("mean_dice", "s_measure", "mae", "dice@0.5")
        }
        row["score_cpu_s_per_fold"] = sum(results[lv][k]["score_cpu_seconds"] for k in folds) / len(folds)
        gaps = [results[lv][k]["reproduction_gap"] for k in folds if "reproduction_gap" in results[lv][k]]
        row["reproduction_gap"] = max(gaps) if gaps else None
        row["crosses"] = {m: (row[m] <= t if m == "mae" else row[m] >= t) for m, t in TARGETS.items()}
        row.update(costs.get(lv, {}))
        rows.append(row)
    summary = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "baseline": baseline,
        "targets": TARGETS,
        "rows": rows,
        "per_fold": {lv: {str(k): v for k, v in pf.items()} for lv, pf in per_fold.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = markdown(rows, per_fold, baseline)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return summary


def _fmt(x: float | None, nd: int = 4) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def markdown(
    rows: list[dict[str, Any]], per_fold: dict[str, dict[int, dict[str, float]]], baseline: str
) -> list[str]:
    lines = [
        "| lever | folds | Dice@0.5 | sod mean Dice | S-measure | mean E-measure | MAE | baseline on these folds: sod mean Dice / S / MAE | "
        "Δ sod mean Dice per fold (points) | better folds | "
        "predict CPU s / slice | shipped MiB | score CPU s / fold |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = r["delta"]["mean_dice"]
        deltas = " / ".join(f"{100 * v:+.1f}" for v in d["per_fold"].values())
        mark = {m: "**" if r["crosses"][m] else "" for m in TARGETS}
        b = r["baseline_same_folds"]
        lines.append(
            f"| `{r['lever']}` | {','.join(map(str, r['folds']))} | {r['dice@0.5']:.4f} | {mark['mean_dice']}{r['mean_dice']:.4f}{mark['mean_dice']} | "
            f"{mark['s_measure']}{r['s_measure']:.4f}{mark['s_measure']} | {r['mean_e_measure']:.4f} | {mark['mae']}{r['mae']:.4f}{mark['mae']} | "
            f"{b['mean_dice']:.4f} / {b['s_measure']:.4f} / {b['mae']:.4f} | {deltas} | {d['better']} of {d['folds']} | {_fmt(r.get('predict_cpu_s_per_slice'), 3)} | {_fmt(r.get('shipped_mib'), 1)} | "
            f"{r['score_cpu_s_per_fold']:.1f} |"
        )
    lines.append(
        f"| target (issue 24) | – | – | ≥ {TARGETS['mean_dice']} | ≥ {TARGETS['s_measure']} | – | ≤ {TARGETS['mae']} | – | – | – | – | – | – |"
    )
    lines += [
        "",
        f"Per fold (10 held-out slices each): sod mean Dice / S-measure / MAE; baseline `{baseline}`.",
        "",
    ]
    folds = sorted({k for pf in per_fold.values() for k in pf})
    lines += ["| lever | " + " | ".join(f"fold {k}" for k in folds) + " |", "|---|" + "---|" * len(folds)]
    for lv, pf in per_fold.items():
        cells = [
            f"{pf[k]['mean_dice']:.4f} / {pf[k]['s_measure']:.4f} / {pf[k]['mae']:.4f}" if k in pf else "–"
            for k in folds
        ]
        lines.append(f"| `{lv}` | " + " | ".join(cells) + " |")
    return lines


def measure_costs(levers: list[str], runs: Path, fold: int) -> dict[str, Any]:
    """Prediction CPU s per slice on one fold and the shipped size of each lever's members."""
    sizes: dict[str, float] = {}
    costs = {}
    for lv in levers:
        members, tta = parse_lever(lv)
        for m in members:
            if m not in sizes:
                sizes[m] = packed_mib(runs / m / f"fold{fold}")
        per_slice = predict_cpu_per_slice([runs / m / f"fold{fold}" for m in members], tta)
        costs[lv] = {
            "predict_cpu_s_per_slice": per_slice,
            "shipped_mib": sum(sizes[m] for m in members),
            "timing_fold": fold,
        }
        print(
            f"[{lv}] predict {per_slice:.3f} CPU s / slice, shipped {costs[lv]['shipped_mib']:.1f} MiB",
            flush=True,
        )
    return costs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help="comma list of bench_covid_semiseg variants; the first is the baseline",
    )
    ap.add_argument(
        "--ensembles",
        default="all",
        help="'all' (every combination of two or more variants) or a ';' list of '+'-joined variants",
    )
    ap.add_argument("--folds", default="0,1,2,3,4")
    ap.add_argument("--runs", type=Path, default=RUNS, help="the bench's run folders (read only)")
    ap.add_argument(
        "--stored",
        type=Path,
        default=STORED,
        help="the bench's results: completion markers and the numbers to reproduce",
    )
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--timing-fold", type=int, default=0, help="fold whose held-out slices time prediction")
    ap.add_argument(
        "--report",
        action="store_true",
        help="only write the tables from the scored folds (no costs re-measured)",
    )
    args = ap.parse_args()
    variants = args.variants.split(",")
    if args.ensembles == "all":
        ensembles = [c for n in range(2, len(variants) + 1) for c in combinations(variants, n)]
    else:
        ensembles = [tuple(e.split("+")) for e in args.ensembles.split(";") if e]
    levers = levers_for(variants, ensembles)
    args.out.mkdir(parents=True, exist_ok=True)
    costs_file = args.out / "costs.json"
    costs = json.loads(costs_file.read_text()) if costs_file.exists() else {}
    if not args.report:
        folds = [int(f) for f in args.folds.split(",")]
        complete = {v: complete_folds(args.stored, v, folds) for v in variants}
        for v, done in complete.items():
            if done != folds:
                print(
                    f"{v}: folds {sorted(set(folds) - set(done))} not complete in {args.stored}, left out",
                    flush=True,
                )
        for lv in levers:
            members, _ = parse_lever(lv)
            for k in sorted(set.intersection(*(set(complete[m]) for m in members))):
                score(lv, k, args.runs, args.stored, args.out)
        missing = [
            lv
            for lv in levers
            if lv not in costs
            and args.timing_fold in set.intersection(*(set(complete[m]) for m in parse_lever(lv)[0]))
        ]
        costs.update(measure_costs(missing, args.runs, args.timing_fold))
        costs_file.write_text(json.dumps(costs, indent=1))
    report(levers, lever_name((variants[0],), False), args.out, costs)


if __name__ == "__main__":
    main()
