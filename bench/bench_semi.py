"""Semi-supervised learning on COVID-SemiSeg: supervised-only vs pseudo-labelling vs CPS vs CPS + UIF.

Same 5 folds as ``bench_covid_semiseg.py``; the fold's validation slices are never used as
unlabelled data (the trainers drop unlabelled images whose content equals a validation image;
the 1,600 unlabelled slices come from other CT volumes anyway). Two label budgets: all 40
training slices of a fold, and 10 of them (a fixed seeded subset). Every method trains the same
Inf-Net (light residual encoder) at 192² for the same number of optimiser steps per budget
(CPU budget: 150 steps, 300 unlabelled slices, unlabelled batches of 4), and
is scored on the fold's 10 held-out slices with its last checkpoint.

Methods:
  sup       supervised only (trainer ``supervised``)
  pseudo    Semi-Inf-Net schedule (trainer ``semi_infnet``): labelled start, grouped
            pseudo-labelling of the unlabelled slices, pre-train on the pool, fine-tune on labels
  cps       cross pseudo supervision (trainer ``cps``), all unlabelled slices
  cps_uif   CPS with uncertainty-based image filtering (keep the most certain half, re-scored)

Twice the compute (300 steps), compared with each other:
  sup2x        supervised only, 300 steps
  pseudo_init  Semi-Inf-Net as published: pseudo-labelling starts from the converged ``sup`` run
               of the same fold (150 steps), then 150 steps of grouped pseudo-labelling,
               pre-training a fresh model on the pool and fine-tuning it on the labels
  pseudo_cont  self-training: the same start, but no fresh model: the ``sup`` run goes on through
               the pseudo-labelling rounds (labelled + pool batches), then fine-tunes on the labels
  cps2x        CPS, 300 steps
  cps_cutmix2x CPS + CutMix on the unlabelled images (the CPS paper's best setting), 300 steps

Issue 24, long runs on all 1,600 unlabelled slices, histogram-standardised per volume onto the
fold's labelled training slices (``semi.unlabeled.standardize=histogram``), with the best supervised
CT model (the co-supervised ResUNet, ``resunet_cosup_covid_semiseg``, at 256²):
  res_sup          supervised only, RES_STEPS steps (the baseline, and the teacher of res_semi_std)
  res_semi_std     Semi-Inf-Net's recipe: the fold's ``res_sup`` run pseudo-labels all 1,600 slices,
                   a fresh ResUNet pre-trains on them (3 passes) and fine-tunes on the labels
                   (RES_FINETUNE_STEPS at 0.3x the learning rate), as ``semi_resunet_e100``
  res_cps_uif_std  CPS + UIF (two ResUNets; the most certain half, re-scored 4 times), RES_STEPS steps
  res_mt_std       the mean-teacher baseline (``trainer: mean_teacher``: EMA teacher, decay 0.99,
                   probability MSE consistency with weight 1, ramped over the first quarter), RES_STEPS
                   steps; the teacher is scored
  res_semi_soft_std  res_semi_std with soft pseudo labels (the teacher's probabilities)

Usage::

    python bench/bench_semi.py --parallel 2
    python bench/bench_semi.py --methods res_sup --parallel 2       # first: the teachers
    python bench/bench_semi.py --methods res_semi_std,res_cps_uif_std --parallel 2
    python bench/bench_semi.py --report

Results: ``bench/results/semi/<method>_<budget>/fold<k>.json``, ``summary.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cv_common import ROOT, machine, pooled, run_jobs, score_run, train_fold

UNLABELLED = 300
STEPS = 150  # optimiser steps per run, whatever the budget
BATCH = 8
BASE = [
    "preprocess.size=[192,192]",
    f"train.batch_size={BATCH}",
    "semi.cps.unlabeled_batch_size=4",
    "semi.unlabeled.root=${COVSEG_DATA}/covid_semiseg_infnet/unlabeled",
    f"semi.unlabeled.limit={UNLABELLED}",
]
OUT = ROOT / "bench" / "results" / "semi"
RUNS = ROOT / "runs" / "bench" / "semi"
BUDGETS = {"all": None, "10": 10}
RESUNET = ("res_sup", "res_semi_std", "res_cps_uif_std", "res_mt_std", "res_semi_soft_std")  # issue 24: compared with res_sup
METHODS = ("sup", "pseudo", "cps", "cps_uif", "sup2x", "pseudo_init", "pseudo_cont", "cps2x", "cps_cutmix2x", *RESUNET)
LONG = ("sup2x", "pseudo_init", "pseudo_cont", "cps2x", "cps_cutmix2x")  # twice the optimiser steps; compared with sup2x
RES_STEPS = 500  # 100 epochs of 40 slices at batch 8: the steps of resunet_all_e100, the CV table's best row
RES_FINETUNE_STEPS = 200  # resunet_all_e100's 40 fine-tuning epochs of semi_resunet_e100
RES_PRETRAIN_PASSES = 3  # over all 1,600 pseudo-labelled slices: 600 steps
RES_BASE = [
    "preprocess.size=[256,256]",
    f"train.batch_size={BATCH}",
    "semi.cps.unlabeled_batch_size=4",
    "semi.unlabeled.root=${COVSEG_DATA}/covid_semiseg_infnet/unlabeled",
    "semi.unlabeled.limit=null",
    "semi.unlabeled.standardize=histogram",
    "semi.unlabeled.standardize_per=volume",
]


# Semi-Inf-Net phases as fractions of STEPS: labelled start (None: start from the ``sup`` run of
# the same fold and budget), the 4 pseudo-labelling rounds of 75 slices together, pre-training a
# fresh model on the pool, fine-tuning on the labels.
SEMI_INFNET_PHASES = {
    # the same 150 steps as ``sup``, split over every phase
    "pseudo": (0.3, 0.2, 0.3, 0.2),
    # as published: start from a converged labelled model, then 150 more steps
    "pseudo_init": (None, 0.2, 0.4, 0.4),
    # self-training: the same start, no fresh model (the rounds go on from the ``sup`` weights)
    "pseudo_cont": (None, 2 / 3, 0.0, 1 / 3),
}


def _semi_infnet_schedule(method: str, labelled: int, budget: str, fold: int) -> list[str]:
    initial, rounds, pretrain, finetune = SEMI_INFNET_PHASES[method]
    steps_per_epoch = -(-labelled // BATCH)
    pool_steps = -(-UNLABELLED // BATCH)

    def epochs(fraction: float, per_epoch: int) -> int:
        return max(1, round(fraction * STEPS / per_epoch))

    start = (
        [f"semi.semi_infnet.init_run={RUNS / f'sup_{budget}' / f'fold{fold}'}", "semi.semi_infnet.initial_epochs=0"]
        if initial is None
        else [f"semi.semi_infnet.initial_epochs={epochs(initial, steps_per_epoch)}"]
    )
    return [
        *start,
        "semi.semi_infnet.group_size=75",
        f"semi.semi_infnet.epochs_per_group={epochs(rounds / 4, steps_per_epoch)}",
        f"semi.semi_infnet.pretrain_epochs={epochs(pretrain, pool_steps) if pretrain else 0}",
        f"semi.semi_infnet.finetune_epochs={epochs(finetune, steps_per_epoch)}",
    ]


def epochs_for(labelled: int, steps: int = STEPS) -> int:
    steps_per_epoch = -(-labelled // BATCH)
    return max(1, round(steps / steps_per_epoch))


def resunet_spec(method: str, budget: str, fold: int) -> tuple[str, list[str]]:
    """Issue 24's long ResUNet runs on all 1,600 standardised slices (``RESUNET``)."""
    labelled = 40 if BUDGETS[budget] is None else BUDGETS[budget]
    limit = [] if BUDGETS[budget] is None else [f"data.limit={BUDGETS[budget]}"]
    epochs = epochs_for(labelled, RES_STEPS)
    val_every = f"train.val_every={max(1, epochs // 4)}"
    if method == "res_sup":
        return "resunet_cosup_covid_semiseg", ["preprocess.size=[256,256]", f"train.batch_size={BATCH}", *limit, f"train.epochs={epochs}", val_every]
    over = [*RES_BASE, *limit]
    if method in ("res_semi_std", "res_semi_soft_std"):
        finetune = epochs_for(labelled, RES_FINETUNE_STEPS)
        return "resunet_cosup_covid_semiseg", [
            *over,
            f"semi.semi_infnet.soft_labels={'true' if method == 'res_semi_soft_std' else 'false'}",
            "trainer=semi_infnet",
            f"semi.semi_infnet.init_run={RUNS / f'res_sup_{budget}' / f'fold{fold}'}",
            "semi.semi_infnet.initial_epochs=0",
            "semi.semi_infnet.group_size=1600",
            "semi.semi_infnet.epochs_per_group=1",
            f"semi.semi_infnet.pretrain_epochs={RES_PRETRAIN_PASSES}",
            f"semi.semi_infnet.finetune_epochs={finetune}",
            "semi.semi_infnet.finetune_lr_scale=0.3",
            f"train.val_every={max(1, finetune // 4)}",
        ]
    if method == "res_mt_std":
        return "resunet_cosup_covid_semiseg", [
            *over, "trainer=mean_teacher", f"train.epochs={epochs}", val_every, "semi.mean_teacher.weight=1.0", "semi.mean_teacher.unlabeled_batch_size=4",
            "semi.mean_teacher.decay=0.99", f"semi.mean_teacher.rampup_epochs={max(1, epochs // 4)}",
        ]  # fmt: skip
    return "resunet_cosup_covid_semiseg", [
        *over, "trainer=cps", f"train.epochs={epochs}", val_every, "semi.cps.weight=1.0",
        "semi.cps.uif.enabled=true", "semi.cps.uif.keep_fraction=0.5", "semi.cps.uif.score=disagreement",
        f"semi.cps.rampup_epochs={max(1, epochs // 4)}", f"semi.cps.uif.rescore_every={max(1, epochs // 4)}",
    ]  # fmt: skip


def spec(method: str, budget: str, fold: int = 0) -> tuple[str, list[str]]:
    if method in RESUNET:
        return resunet_spec(method, budget, fold)
    labelled = 40 if BUDGETS[budget] is None else BUDGETS[budget]
    steps = 2 * STEPS if method.endswith("2x") else STEPS
    method = method.removesuffix("2x")
    epochs = epochs_for(labelled, steps)
    over = list(BASE)
    if BUDGETS[budget] is not None:
        over.append(f"data.limit={BUDGETS[budget]}")
    val_every = max(1, epochs // 4)
    if method == "sup":
        return "infnet_covid_semiseg", [*over, f"train.epochs={epochs}", f"train.val_every={val_every}"]
    if method in SEMI_INFNET_PHASES:
        return "semi_infnet", [*over, *_semi_infnet_schedule(method, labelled, budget, fold), f"train.val_every={val_every}"]
    uif = "true" if method == "cps_uif" else "false"
    cutmix = "true" if method == "cps_cutmix" else "false"
    return "cps_uif", [*over, f"train.epochs={epochs}", f"train.val_every={val_every}", f"semi.cps.uif.enabled={uif}",
                       f"semi.cps.rampup_epochs={max(1, epochs // 4)}", f"semi.cps.uif.rescore_every={max(1, epochs // 8)}",
                       f"semi.cps.cutmix={cutmix}"]


def work(variant: str, fold: int, _spec) -> None:
    method, budget = variant.rsplit("_", 1)
    result_file = OUT / variant / f"fold{fold}.json"
    if result_file.exists():
        return
    if method in ("res_semi_std", "res_semi_soft_std") and not (OUT / f"res_sup_{budget}" / f"fold{fold}.json").exists():
        raise RuntimeError(f"needs the finished fold {fold} of res_sup_{budget} (its teacher); run --methods res_sup first")
    config, overrides = spec(method, budget, fold)
    run_dir = RUNS / variant / f"fold{fold}"
    wall = train_fold(config, overrides, run_dir, fold, RUNS / variant / f"fold{fold}.log")
    result = score_run(run_dir)
    result.update({"variant": variant, "fold": fold, "config": config, "overrides": overrides, "wall_seconds": wall})
    if budget != "all":
        result.update(_unused_scores(run_dir))
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result, indent=1))
    print(f"[{variant} fold {fold}] done in {wall:.0f}s", flush=True)


def _unused_scores(run_dir: Path) -> dict:
    """Scores on the fold's labelled slices a 10-label run never saw (30 a fold): the 10 validation
    slices alone move a fold's mean by up to 4 points per case, more than the gains measured."""
    scored = score_run(run_dir, cases="unused")
    return {"unused_cases": scored["cases"], "unused_medical_records": scored["medical_records"], "unused_sod_records": scored["sod_records"]}


def rescore_unused() -> None:
    """Add the unused-slice scores to finished folds whose run folder is still here (no training)."""
    for result_file in sorted(OUT.glob("*_10/fold*.json")):
        result = json.loads(result_file.read_text())
        run_dir = RUNS / result_file.parent.name / result_file.stem
        if "unused_medical_records" in result or not (run_dir / "checkpoints" / "last.pt").exists():
            continue
        result.update(_unused_scores(run_dir))
        result_file.write_text(json.dumps(result, indent=1))
        print(f"[{result_file.parent.name} {result_file.stem}] scored on {len(result['unused_cases'])} unused slices", flush=True)


def _pooled_on(row: dict, folds: list[int], protocol: str, metric: str) -> float:
    """A variant's pooled metric over the held-out cases of ``folds`` only (deltas are paired by fold)."""
    variant = f"{row['method']}_{row['budget']}"
    records = [r for f in folds for r in json.loads((OUT / variant / f"fold{f}.json").read_text())[protocol]]
    return pooled(records, metric)[0]


def _baseline(rows: list[dict], row: dict) -> dict | None:
    """The supervised row a method is compared with at the same label budget."""
    base_method = "res_sup" if row["method"] in RESUNET else "sup2x" if row["method"] in LONG else "sup"
    return next((b for b in rows if b["budget"] == row["budget"] and b["method"] == base_method), None)


def _paired_delta(row: dict, base: dict, folds: list[int], protocol: str, metric: str) -> str:
    """``row`` minus ``base`` in points, pooled over the same ``folds``."""
    return f"{100 * (_pooled_on(row, folds, protocol, metric) - _pooled_on(base, folds, protocol, metric)):+.1f}"


def report() -> None:
    rows = []
    for budget in BUDGETS:
        for method in METHODS:
            variant = f"{method}_{budget}"
            files = sorted((OUT / variant).glob("fold*.json"))
            if not files:
                continue
            results = [json.loads(f.read_text()) for f in files]
            med = [r for res in results for r in res["medical_records"]]
            sod = [r for res in results for r in res["sod_records"]]
            d, dstd = pooled(med, "dice")
            cpu = [r["train_cpu_seconds"] for r in results if "train_cpu_seconds" in r]
            rows.append({
                "method": method, "budget": budget, "folds": len(results), "dice@0.5": d, "dice@0.5_std": dstd,
                "sod_mean_dice": pooled(sod, "mean_dice")[0], "s_measure": pooled(sod, "s_measure")[0],
                "train_min_per_fold": sum(r["train_seconds"] for r in results) / len(results) / 60,
                "train_cpu_min_per_fold": sum(cpu) / len(cpu) / 60 if cpu else None,
                "fold_ids": sorted(int(f.stem.removeprefix("fold")) for f in files),
            })
    summary = {"date": dt.date.today().isoformat(), "machine": machine(), "steps": STEPS, "unlabelled": UNLABELLED, "rows": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = ["| labels | method | steps | folds | medical Dice@0.5 | Δ vs sup | sod mean Dice | Δ vs sup | S-measure | train min/fold (wall; CPU) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = _baseline(rows, r)
        dd = ds = "–"
        if base and base is not r:  # paired: only the folds both variants have
            common = sorted(set(r["fold_ids"]) & set(base["fold_ids"]))
            paired = f" ({len(common)} folds)" if len(common) < max(r["folds"], base["folds"]) else ""
            dd = f"{_paired_delta(r, base, common, 'medical_records', 'dice')}{paired}"
            ds = f"{_paired_delta(r, base, common, 'sod_records', 'mean_dice')}{paired}"
            r["delta_folds"] = common
        labels = "40 (all)" if r["budget"] == "all" else r["budget"]
        steps = f"{STEPS} + {STEPS}" if r["method"].startswith("pseudo_") else (2 * STEPS if r["method"] in LONG else STEPS)
        if r["method"] in RESUNET:
            semi_steps = f"{RES_STEPS} + {RES_PRETRAIN_PASSES * 200 + RES_FINETUNE_STEPS}"
            steps = {"res_semi_std": semi_steps, "res_semi_soft_std": semi_steps}.get(r["method"], RES_STEPS)
        cpu_min = f"; {r['train_cpu_min_per_fold']:.1f}" if r.get("train_cpu_min_per_fold") else ""
        lines.append(f"| {labels} | {r['method']} | {steps} | {r['folds']} | {r['dice@0.5']:.3f} ± {r['dice@0.5_std']:.3f} | {dd} | {r['sod_mean_dice']:.3f} | {ds} | {r['s_measure']:.3f} | {r['train_min_per_fold']:.1f}{cpu_min} |")
    lines += _unused_table(rows)
    (OUT / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _figure(rows)


def _unused_table(rows) -> list[str]:
    """The 10-label rows again, scored on each fold's 30 unused labelled slices, paired by fold with
    ``res_sup`` / ``sup`` on the folds both have these scores for."""
    def folds_with(row) -> list[int]:
        variant = f"{row['method']}_{row['budget']}"
        return [f for f in row["fold_ids"] if "unused_medical_records" in json.loads((OUT / variant / f"fold{f}.json").read_text())]

    out = []
    for r in rows:
        have = folds_with(r)
        if r["budget"] == "all" or not have:
            continue
        base = _baseline(rows, r)
        dd = ds = "–"
        if base and base is not r:
            common = sorted(set(have) & set(folds_with(base)))
            if common:
                dd = f"{_paired_delta(r, base, common, 'unused_medical_records', 'dice')} ({len(common)} folds)"
                ds = f"{_paired_delta(r, base, common, 'unused_sod_records', 'mean_dice')} ({len(common)} folds)"
        out.append(f"| {r['method']} | {len(have)} | {_pooled_on(r, have, 'unused_medical_records', 'dice'):.3f} | {dd} | {_pooled_on(r, have, 'unused_sod_records', 'mean_dice'):.3f} | {ds} |")
    if not out:
        return []
    return ["", "10 labels, scored on each fold's 30 labelled slices the run neither trained nor validated on:", "",
            "| method | folds | medical Dice@0.5 | Δ vs sup | sod mean Dice | Δ vs sup |", "|---|---|---|---|---|---|", *out]


def _figure(rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for k, budget in enumerate(BUDGETS):
        sel = [r for r in rows if r["budget"] == budget]
        xs = [METHODS.index(r["method"]) + 0.4 * k - 0.2 for r in sel]
        ax.bar(xs, [r["dice@0.5"] for r in sel], 0.4, yerr=[r["dice@0.5_std"] / max(1, r["folds"]) ** 0.5 for r in sel], label=f"{budget} labels")
    ax.set_xticks(range(len(METHODS)), METHODS)
    ax.set_ylabel("medical Dice@0.5 (50 held-out slices)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "summary.png", dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--budgets", default=",".join(BUDGETS))
    ap.add_argument("--folds", default="0,1,2,3,4")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--tag", default="", help="results in bench/results/semi_<tag>/ and runs beside (a re-run on another machine)")
    ap.add_argument("--rescore-unused", action="store_true", help="score finished 10-label folds whose run folder is here on their 30 unused labelled slices, then report")
    args = ap.parse_args()
    global OUT, RUNS
    if args.tag:
        OUT, RUNS = OUT.with_name(f"semi_{args.tag}"), RUNS.with_name(f"semi_{args.tag}")
    if args.rescore_unused:
        rescore_unused()
    elif not args.report:
        jobs = [(f"{m}_{b}", f, None) for b in args.budgets.split(",") for m in args.methods.split(",") for f in map(int, args.folds.split(","))]
        run_jobs(jobs, work, args.parallel)
    report()


if __name__ == "__main__":
    main()
