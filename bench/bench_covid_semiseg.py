"""5-fold cross-validation of the 2D supervised models on COVID-SemiSeg (50 labelled CT slices).

Same folds for every model (``covseg.training.data.kfold_split``: fixed seed, case ids only).
Each fold trains from the shipped config with the overrides below and is scored on its 10
held-out slices with the last checkpoint; every slice is held out exactly once, so the table
pools the 50 held-out predictions. Reported: medical Dice at 0.5 (original resolution) and the
sod protocol (mean Dice / sensitivity / specificity over 256 thresholds, S-measure, mean
E-measure, MAE), plus CPU training time per fold.

Usage::

    python bench/bench_covid_semiseg.py --variants all --parallel 2
    python bench/bench_covid_semiseg.py --report          # table + figure from finished folds
    python bench/bench_covid_semiseg.py --variants resunet_all_tta   # re-score a variant's runs with flip TTA
    python bench/bench_covid_semiseg.py --variants resunet_all_inner0,resunet_all_inner1,resunet_all_inner2,resunet_all_inner3
    python bench/bench_covid_semiseg.py --variants multiclass_prior_oof   # after its nested runs (NEEDS)
    python bench/bench_covid_semiseg.py --variants ens_resunet_e100_seeds   # average finished runs (ENSEMBLE_OF)

Results: ``bench/results/covid_semiseg/<variant>/fold<k>.json``, ``summary.json``, ``summary.md``,
``summary.png``. Runs live in ``runs/bench/covid_semiseg/`` (not versioned).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cv_common import ROOT, machine, pooled, run_jobs, score_run, train_fold

COMMON = ["preprocess.size=[256,256]", "train.epochs=40", "train.val_every=20"]
EXTRA: list[str] = []  # --override: applied after every variant's own overrides (device, a toy size, ...)
OUT = ROOT / "bench" / "results" / "covid_semiseg"
RUNS = ROOT / "runs" / "bench" / "covid_semiseg"
VARIANTS: dict[str, tuple[str, list[str], int]] = {
    "infnet_pretrained": ("infnet_pretrained_covid_semiseg", [], 1),
    "infnet": ("infnet_covid_semiseg", [], 1),
    "unet": ("unet_covid_semiseg", [], 1),
    "resunet_all": ("resunet_cosup_covid_semiseg", [], 1),
    "resunet": ("resunet_cosup_covid_semiseg", ["model.params.esm=false", "model.params.assm=false", "model.params.afm=false", "loss.aux_weight=0", "loss.edge_weight=0", "data.edges=false"], 1),
    "multiclass": ("multiclass_covid_semiseg", [], 3),
    # The Semi-Inf-Net + multi-class U-Net cascade: the fold's resunet_all run (trained on the same
    # fold's training slices) gives the infection map as an extra input channel.
    "multiclass_prior": ("multiclass_covid_semiseg", ["model.params.prior_channel=true", f"data.prior_run={RUNS / 'resunet_all' / 'fold{fold}'}"], 3),
    "resunet_esm": ("resunet_cosup_covid_semiseg", ["model.params.assm=false", "model.params.afm=false", "loss.aux_weight=0"], 1),
    "resunet_assm": ("resunet_cosup_covid_semiseg", ["model.params.esm=false", "model.params.afm=false", "loss.edge_weight=0", "data.edges=false"], 1),
    "resunet_afm": ("resunet_cosup_covid_semiseg", ["model.params.esm=false", "model.params.assm=false", "loss.aux_weight=0", "loss.edge_weight=0", "data.edges=false"], 1),
    # Nested CV for out-of-fold priors: each of the fold's 40 training slices split 4 ways again
    # (30 train / 10 held out, the fold's own held-out slices never read).
    **{f"resunet_all_inner{j}": ("resunet_cosup_covid_semiseg", ["data.inner_folds=4", f"data.inner_fold={j}"], 1) for j in range(4)},
    # The cascade with out-of-fold priors (as nnU-Net's cascade): training slices get the map of the
    # nested run that held them out; held-out slices (and prediction) the fold's resunet_all run.
    "multiclass_prior_oof": (
        "multiclass_covid_semiseg",
        [
            "model.params.prior_channel=true",
            f"data.prior_run={RUNS / 'resunet_all' / 'fold{fold}'}",
            "data.prior_oof_runs=[" + ", ".join(f'"{RUNS / f"resunet_all_inner{j}" / "fold{fold}"}"' for j in range(4)) + "]",
        ],
        3,
    ),
    # The best model trained 2.5x longer (the fold-0 exploration suggested a few points from length).
    "resunet_all_e100": ("resunet_cosup_covid_semiseg", ["train.epochs=100"], 1),
    "resunet_all_e150": ("resunet_cosup_covid_semiseg", ["train.epochs=150"], 1),  # run on folds 0-1 only
    # The best model with another seed: seed noise, and an ensemble member.
    "resunet_all_e100_seed1": ("resunet_cosup_covid_semiseg", ["train.epochs=100", "train.seed=1"], 1),
}
# Weight averaging (issue 18's levers): an EMA of the weights (decay 0.98 a step, ~50 of the 200
# steps) scored instead of the last weights; the 40-epoch recipe, paired with resunet_all.
VARIANTS["resunet_all_ema"] = ("resunet_cosup_covid_semiseg", ["train.ema_decay=0.98"], 1)
# ImageNet encoder for the best model (issue 18's levers): the co-supervised ResUNet with the pretrained
# EfficientNet-Lite0 encoder and its input normalisation; nothing else changed (paired with resunet_all:
# same folds, 40 epochs, learning rate, augmentation; 100 epochs did not fit the session's CPU time).
VARIANTS["resunet_all_effl0"] = (
    "resunet_cosup_covid_semiseg",
    ["model.params.encoder=efficientnet-lite0", "model.params.pretrained=true", "preprocess.mean=[0.498]", "preprocess.std=[0.502]"],
    1,
)  # fmt: skip
# Issue 24's strongest supervised recipe: the ImageNet EfficientNet-Lite0 ResUNet at the 100 epochs that lifted
# the random-init ResUNet by 4.6 points (paired with resunet_all_e100 and resunet_all_effl0).
VARIANTS["resunet_all_effl0_e100"] = ("resunet_cosup_covid_semiseg", [*VARIANTS["resunet_all_effl0"][1], "train.epochs=100"], 1)
# The same at Inf-Net's input size (352², ~1.9x the pixels), and with the deeper Lite1 / deeper and wider Lite2.
VARIANTS["resunet_all_effl0_e100_352"] = ("resunet_cosup_covid_semiseg", [*VARIANTS["resunet_all_effl0_e100"][1], "preprocess.size=[352,352]"], 1)
for _n in (1, 2):
    VARIANTS[f"resunet_all_effl{_n}_e100"] = (
        "resunet_cosup_covid_semiseg",
        [o.replace("efficientnet-lite0", f"efficientnet-lite{_n}") for o in VARIANTS["resunet_all_effl0_e100"][1]],
        1,
    )
# Issue 24 §5: the same with the lower half of the infection-free CT's lung slices as negatives (empty masks;
# bench/healthy_ct.py), so healthy lung is seen in training; bench_healthy_fp.py counts false positives on the other half.
NEGATIVES = RUNS / "healthy_negatives"
NEGATIVES_LOCK = threading.Lock()
VARIANTS["resunet_all_effl0_e100_neg"] = (
    "resunet_cosup_covid_semiseg",
    [*VARIANTS["resunet_all_effl0_e100"][1], f"data.extra=[{{root: '{NEGATIVES}', masks: empty, label: 0, train_only: true}}]"],
    1,
)
# The same negatives with the Lite1 encoder: the best single recipe of the CV table (0.753 sod mean Dice) with
# the healthy lung that brought the Lite0 recipe's S-measure from 0.794 to 0.797 and 0.0 ml on healthy CT.
VARIANTS["resunet_all_effl1_e100_neg"] = (
    "resunet_cosup_covid_semiseg",
    [*VARIANTS["resunet_all_effl1_e100"][1], VARIANTS["resunet_all_effl0_e100_neg"][1][-1]],
    1,
)
# The plain multi-class model and the out-of-fold cascade trained 2.5x longer (priors unchanged).
VARIANTS["multiclass_e100"] = ("multiclass_covid_semiseg", ["train.epochs=100"], 3)
VARIANTS["multiclass_prior_oof_e100"] = ("multiclass_covid_semiseg", [*VARIANTS["multiclass_prior_oof"][1], "train.epochs=100"], 3)
# Semi-Inf-Net's recipe on the best supervised model: the fold's 100-epoch ResUNet labels all 1,600
# unlabelled slices (any matching a held-out slice by content is dropped), a fresh ResUNet pre-trains on them for 3
# epochs (600 steps) and fine-tunes on the 40 labelled slices (40 epochs at 0.3x the learning rate).
VARIANTS["semi_resunet_e100"] = (
    "resunet_cosup_covid_semiseg",
    [
        "trainer=semi_infnet",
        "semi.unlabeled.root=${COVSEG_DATA}/covid_semiseg_infnet/unlabeled",
        f"semi.semi_infnet.init_run={RUNS / 'resunet_all_e100' / 'fold{fold}'}",
        "semi.semi_infnet.initial_epochs=0",
        "semi.semi_infnet.group_size=1600",
        "semi.semi_infnet.epochs_per_group=1",
        "semi.semi_infnet.pretrain_epochs=3",
        "semi.semi_infnet.finetune_epochs=40",
        "semi.semi_infnet.finetune_lr_scale=0.3",
    ],
    1,
)
# Run on fold 0 only. It fell 8 points below its teacher; bench_unlabeled_shift.py shows why: the
# teacher marks chest wall and mediastinum as infection on the coronacases slices (another CT
# window). The same recipe with the radiopaedia slices only (lung window, 481 slices; 10 pre-train
# epochs keep the ~600 steps), run on folds 0-1 only: no gain over the teacher:
VARIANTS["semi_resunet_e100_radiopaedia"] = (
    "resunet_cosup_covid_semiseg",
    [
        *(o for o in VARIANTS["semi_resunet_e100"][1] if not o.startswith("semi.semi_infnet.pretrain_epochs")),
        "semi.unlabeled.include=['*radiopaedia*']",
        "semi.semi_infnet.pretrain_epochs=10",
    ],
    1,
)
# Issue 24: the same recipe on all 1,600 slices, histogram-standardised per volume onto the fold's labelled
# training slices (bench_unlabeled_shift.py measures the shift before and after), 5 folds:
VARIANTS["semi_resunet_e100_std"] = (
    "resunet_cosup_covid_semiseg",
    [*VARIANTS["semi_resunet_e100"][1], "semi.unlabeled.standardize=histogram", "semi.unlabeled.standardize_per=volume"],
    1,
)
# Variants whose runs need other variants' finished runs of the same fold.
NEEDS = {
    "multiclass_prior": ["resunet_all"],
    "multiclass_prior_oof": ["resunet_all", *(f"resunet_all_inner{j}" for j in range(4))],
    "multiclass_prior_oof_e100": ["resunet_all", *(f"resunet_all_inner{j}" for j in range(4))],
    "semi_resunet_e100": ["resunet_all_e100"],
    "semi_resunet_e100_radiopaedia": ["resunet_all_e100"],
    "semi_resunet_e100_std": ["resunet_all_e100"],
}
# The same runs scored with flip test-time augmentation (``covseg predict --tta``): no training.
TTA_OF = {"resunet_all_tta": "resunet_all", "infnet_pretrained_tta": "infnet_pretrained", "resunet_all_e100_tta": "resunet_all_e100",
          "resunet_all_effl0_e100_tta": "resunet_all_effl0_e100"}
# Ensembles (``covseg predict -m RUN -m RUN``): the members' runs of a fold, soft maps averaged;
# no training. Name -> (members, flip TTA).
ENSEMBLE_OF = {
    "ens_resunet_e100_infnet_pre_e40": (["resunet_all_e100", "infnet_pretrained"], False),
    "ens_resunet_e100_seeds": (["resunet_all_e100", "resunet_all_e100_seed1"], False),
    "ens_multiclass_e100_plain_oof": (["multiclass_e100", "multiclass_prior_oof_e100"], False),
}
PUBLISHED = {  # Inf-Net paper (Fan et al., TMI 2020) on its 48-slice test split, sod protocol (as quoted in the issue)
    "U-Net (paper)": {"mean_dice": 0.439},
    "Inf-Net (paper)": {"mean_dice": 0.682, "s_measure": 0.781, "mae": 0.082},
    "Semi-Inf-Net (paper)": {"mean_dice": 0.739, "s_measure": 0.800, "mae": 0.064},
}


def _spec(variant: str) -> tuple[str, list[str], int]:
    """The training spec of a variant, or of the runs it re-scores (TTA) or averages (ensemble)."""
    if variant in ENSEMBLE_OF:
        return VARIANTS[ENSEMBLE_OF[variant][0][0]]
    return VARIANTS[TTA_OF.get(variant, variant)]


def work(variant: str, fold: int, spec) -> None:
    config, overrides, num_classes = spec
    result_file = OUT / variant / f"fold{fold}.json"
    if result_file.exists():
        return
    needs = NEEDS.get(variant, []) + ([TTA_OF[variant]] if variant in TTA_OF else []) + ENSEMBLE_OF.get(variant, ([], False))[0]
    unfinished = [v for v in needs if not (OUT / v / f"fold{fold}.json").exists()]
    if unfinished:
        raise RuntimeError(f"needs the finished fold {fold} of {', '.join(unfinished)}; run those variants first")
    if variant in ENSEMBLE_OF:
        members, tta = ENSEMBLE_OF[variant]
        result = score_run([RUNS / m / f"fold{fold}" for m in members], num_classes, tta_flip=tta)
        result.update({"variant": variant, "fold": fold, "members": members, "tta_flip": tta})
        result_file.parent.mkdir(parents=True, exist_ok=True)
        result_file.write_text(json.dumps(result, indent=1))
        return
    if variant in TTA_OF:
        trained = json.loads((OUT / TTA_OF[variant] / f"fold{fold}.json").read_text())
        result = score_run(RUNS / TTA_OF[variant] / f"fold{fold}", num_classes, tta_flip=True)
        result.update({"variant": variant, "fold": fold, "config": config, "overrides": trained["overrides"], "tta_flip": True})
        result_file.parent.mkdir(parents=True, exist_ok=True)
        result_file.write_text(json.dumps(result, indent=1))
        return
    if any(str(NEGATIVES) in o for o in overrides):
        from healthy_ct import prepare_negatives

        with NEGATIVES_LOCK:  # parallel folds once wrote the same temporary folder at once and all but one failed
            prepare_negatives(NEGATIVES)
    run_dir = RUNS / variant / f"fold{fold}"
    wall = train_fold(config, COMMON + overrides + EXTRA, run_dir, fold, RUNS / variant / f"fold{fold}.log")
    result = score_run(run_dir, num_classes)
    result.update({"variant": variant, "fold": fold, "config": config, "overrides": COMMON + overrides + EXTRA, "wall_seconds": wall})
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result, indent=1))
    print(f"[{variant} fold {fold}] done in {wall:.0f}s", flush=True)


def _cpu_cell(row: dict) -> str:
    """Mean training CPU minutes per fold, with how many folds measured it when not all did."""
    if row.get("train_cpu_min_per_fold") is None:
        return "–"
    partial = "" if row.get("train_cpu_folds") == row["folds"] else f" ({row['train_cpu_folds']} of {row['folds']} folds)"
    return f"{row['train_cpu_min_per_fold']:.1f}{partial}"


def report() -> None:
    rows = []
    # The four nested runs of a fold form one row: every training slice predicted out of fold.
    groups: dict[str, list[str]] = {}
    for variant in [*VARIANTS, *TTA_OF, *ENSEMBLE_OF]:
        groups.setdefault("resunet_all_nested" if variant.startswith("resunet_all_inner") else variant, []).append(variant)
    for variant, members in groups.items():
        num_classes = _spec(members[0])[2]
        files = sorted(f for m in members for f in (OUT / m).glob("fold*.json"))
        if not files:
            continue
        results = [json.loads(f.read_text()) for f in files]
        med = [r for res in results for r in res["medical_records"]]
        sod = [r for res in results for r in res["sod_records"]]
        row = {"variant": variant, "folds": len({res["fold"] for res in results}), "cases": len({c for res in results for c in res["cases"]})}
        row["train_min_per_fold"] = sum(r["train_seconds"] for r in results) / len(results) / 60
        cpu = [r.get("train_cpu_seconds") for r in results]
        cpu = [c for c in cpu if c is not None]  # folds trained before history.csv had cpu_s have none
        row["train_cpu_min_per_fold"] = sum(cpu) / len(cpu) / 60 if cpu else None
        row["train_cpu_folds"] = len(cpu)
        if num_classes == 1:
            row["dice@0.5"], row["dice@0.5_std"] = pooled(med, "dice")
            for m in ("mean_dice", "mean_sensitivity", "mean_specificity", "s_measure", "mean_e_measure", "mae"):
                row[m], _ = pooled(sod, m)
        else:
            for cls, name in ((1, "ggo_dice"), (2, "consolidation_dice")):
                row[name], row[f"{name}_std"] = pooled([r for r in med if int(r["class"]) == cls], "dice")
        rows.append(row)
    summary = {"date": dt.date.today().isoformat(), "machine": machine(), "protocol": COMMON + EXTRA, "rows": rows, "published": PUBLISHED}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = [
        "| model | folds | medical Dice@0.5 | sod mean Dice | sensitivity | specificity | S-measure | mean E-measure | MAE | wall min/fold | CPU min/fold |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "dice@0.5" in r:
            lines.append(
                f"| {r['variant']} | {r['folds']} | {r['dice@0.5']:.3f} ± {r['dice@0.5_std']:.3f} | {r['mean_dice']:.3f} | {r['mean_sensitivity']:.3f} | "
                f"{r['mean_specificity']:.3f} | {r['s_measure']:.3f} | {r['mean_e_measure']:.3f} | {r['mae']:.3f} | {r['train_min_per_fold']:.1f} | "
                f"{_cpu_cell(r)} |"
            )
    for name, p in PUBLISHED.items():
        cell = {k: f"{p[k]:.3f}" if k in p else "–" for k in ("mean_dice", "s_measure", "mae")}
        lines.append(f"| {name} | 48-slice test split | – | {cell['mean_dice']} | – | – | {cell['s_measure']} | – | {cell['mae']} | – | – |")
    mc = [r for r in rows if "ggo_dice" in r]
    if mc:
        lines += ["", "| multi-class model | folds | GGO Dice@argmax | consolidation Dice@argmax | train min/fold |", "|---|---|---|---|---|"]
        for r in mc:
            lines.append(f"| {r['variant']} | {r['folds']} | {r['ggo_dice']:.3f} ± {r['ggo_dice_std']:.3f} | {r['consolidation_dice']:.3f} ± {r['consolidation_dice_std']:.3f} | {r['train_min_per_fold']:.1f} |")
        lines.append("| Semi-Inf-Net + multi-class U-Net (paper) | test split | 0.624 | 0.362 | – |")
    (OUT / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _figure(rows)


def _figure(rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    binary = [r for r in rows if "dice@0.5" in r]
    if not binary:
        return
    fig, ax = plt.subplots(figsize=(8, 3.5))
    names = [r["variant"] for r in binary]
    ax.bar([i - 0.2 for i in range(len(names))], [r["dice@0.5"] for r in binary], 0.4, yerr=[r["dice@0.5_std"] for r in binary], label="medical Dice@0.5")
    ax.bar([i + 0.2 for i in range(len(names))], [r["mean_dice"] for r in binary], 0.4, label="sod mean Dice")
    ax.axhline(0.739, ls="--", c="k", lw=1, label="Semi-Inf-Net (paper, test split)")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("COVID-SemiSeg 5-fold CV (50 slices)")
    fig.tight_layout()
    fig.savefig(OUT / "summary.png", dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="all", help="comma list or 'all'")
    ap.add_argument("--folds", default="0,1,2,3,4")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--report", action="store_true", help="only write the summary from finished folds")
    ap.add_argument("--override", action="append", default=[], help="extra config override for every run (repeatable), e.g. runtime.device=cuda")
    ap.add_argument("--tag", default="", help="results in bench/results/covid_semiseg_<tag>/ and runs beside (e.g. another machine's)")
    args = ap.parse_args()
    global OUT, RUNS
    if args.tag:
        OUT, RUNS = OUT.with_name(f"covid_semiseg_{args.tag}"), RUNS.with_name(f"covid_semiseg_{args.tag}")
    EXTRA[:] = args.override
    if not args.report:
        names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
        folds = [int(f) for f in args.folds.split(",")]
        jobs = [(v, f, _spec(v)) for v in names for f in folds]
        run_jobs(jobs, work, args.parallel)
    report()


if __name__ == "__main__":
    main()
