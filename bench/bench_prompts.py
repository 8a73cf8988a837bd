"""Prompt-driven segmentation on QaTa-COV19 and the BiomedParse demo set (issue 17).

Stages (each writes to ``bench/results/prompts/``; run folders go to ``runs/bench_prompts/``,
ignored by git; a finished run is reused, an interrupted one resumed):

- ``captions``: captions made from the masks (``covseg.data.captions``) against QaTa's human
  ones: zone, laterality and count agreement on ``train`` (where the lung frame was fitted) and
  ``valid``; writes the generated ``captions.csv`` of both splits and the prompt types P0..P4
  (CRIS-style JSON, P4 = the human caption) under ``runs/bench_prompts/text/``.
- ``gen-captions``: ``c2fvl`` (``c2fvl_qata``) trained once on the generated and once on the human
  captions with the same recipe (``--epochs``, ``--limit`` training images; the measured run used
  3 epochs on 500 images, the README's QaTa row 10 on 1,000), each scored on ``valid`` with the
  human and with the generated captions (``covseg evaluate-prompts``, types ``human`` and
  ``generated``), with a paired bootstrap interval of the difference between the two models.
- ``prompts``: ``cris``, ``c2fvl``, ``lvit`` (their ``*_qata`` configs) fine-tuned with one prompt
  type drawn per case and step (P0..P4, random phrasing; ``--epochs`` default 2, ``--limit``
  default 500 training images), then ``covseg evaluate-prompts`` on QaTa ``valid`` (all five
  types, ``--eval-limit`` cases spread over the split) and on the BiomedParse demo set (P0 the
  target, P1 + site, P2 the demo's own prompt).

Run: ``nice -n 10 python bench/bench_prompts.py captions``, then
``gen-captions --epochs 3 --limit 500 --eval-limit 700`` and ``prompts --epochs 2 --limit 500 --eval-limit 300``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from covseg.utils.atomic import write_json, write_text
from covseg.utils.paths import data_root

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "prompts"
RUNS = ROOT / "runs" / "bench_prompts"
TEXT = RUNS / "text"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def machine() -> dict[str, Any]:
    import os

    import torch

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "")
    return {
        "cpu": model or platform.processor(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "note": "2 CPU cores shared with other engineers' jobs during the runs; wall times are upper bounds",
    }  # fmt: skip


def qata(split: str) -> Path:
    return data_root() / "qata_cov19_sgseg" / split


def stamp() -> dict[str, Any]:
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"), "machine": machine()}


# ------------------------------------------------------------------------------------------ captions
def stage_captions(args) -> dict[str, Any]:
    from covseg.data.captions import caption_for_file, captions_csv, mask_files, prompts_json, zone_agreement
    from covseg.data.text_sources import load_texts

    out: dict[str, Any] = {"stage": "captions", **stamp(), "splits": {}}
    all_rows, t0 = [], time.perf_counter()
    for split in ("train", "valid"):
        human = load_texts(qata(split) / "captions.csv")
        rows = [caption_for_file(p, None, human) for p in mask_files(qata(split) / "masks")]
        ref = [human.lookup(r.mask) for r in rows]
        agree = zone_agreement([r.facts.zones for r in rows], [e.meta["pseudo_label"] for e in ref])
        agree["caption_identical"] = float(np.mean([r.caption == e.text for r, e in zip(rows, ref)]))
        agree["regions_histogram"] = np.bincount([r.facts.regions for r in rows]).tolist()
        agree["extent_median"] = float(np.median([r.facts.extent for r in rows]))
        out["splits"][split] = agree
        write_text(TEXT / f"captions_generated_{split}.csv", captions_csv(rows))
        all_rows += rows
        print(split, agree, flush=True)
    # one file per kind for both splits (names differ between the splits), usable as data.text
    write_text(TEXT / "captions_generated.csv", captions_csv(all_rows))
    write_json(TEXT / "prompts_qata.json", prompts_json(all_rows))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["examples"] = [{"mask": r.mask.name, "generated": r.caption, "prompts": r.prompts} for r in all_rows[:3]]
    write_json(RESULTS / "captions_agreement.json", out)
    return out


# ------------------------------------------------------------------------------------------- training
def train_run(config: str, run_dir: Path, overrides: list[str], quiet: bool = True):
    """Train (or reuse / resume) a run; returns the trainer and timing."""
    from covseg.runs import RunFolder
    from covseg.training.config import load_config
    from covseg.training.trainer import build_trainer

    cfg = load_config(config, overrides)
    run = RunFolder(run_dir)
    finished = len(run.read_history()) >= cfg.train.epochs
    resume = run.checkpoint("last").exists() and not finished
    t0, c0 = time.perf_counter(), cpu_seconds()
    trainer = build_trainer(cfg, run_dir, resume=resume or finished, quiet=quiet)
    trainer.fit()
    history = run.read_history()
    info = {
        "config": config, "overrides": overrides, "epochs": cfg.train.epochs, "train_cases": len(trainer.train_data),
        "val_cases": len(trainer.val_data), "train_time_s_sum_of_epochs": round(sum(float(r.get("time_s") or 0) for r in history), 1),
        "this_invocation_wall_s": round(time.perf_counter() - t0, 1), "this_invocation_cpu_s": round(cpu_seconds() - c0, 1),
        "reused": bool(finished), "history": history,
    }  # fmt: skip
    return trainer, info


def bootstrap_diff(a, b, n: int = 2000, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    a_, b_ = np.asarray(a), np.asarray(b)
    idx = rng.integers(0, len(a_), size=(n, len(a_)))
    d = a_[idx].mean(1) - b_[idx].mean(1)
    return [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))]


def caption_kinds_json() -> Path:
    """Each valid mask's human and generated caption as two prompt types (``human``, ``generated``)."""
    from covseg.data.text_sources import load_texts

    human = load_texts(qata("valid") / "captions.csv")
    generated = load_texts(TEXT / "captions_generated_valid.csv")
    items = [
        {"img_name": f"{name}.png", "mask_name": f"{name}.png", "prompts": {"human": [human[name]], "generated": [generated[name]]}}
        for name in generated
    ]
    path = TEXT / "valid_caption_kinds.json"
    write_json(path, items)
    return path


def stage_gen_captions(args) -> dict[str, Any]:
    """c2fvl trained on generated vs on human captions (same recipe), both scored with either caption on valid."""
    import torch

    torch.set_num_threads(args.threads)
    gen = TEXT / "captions_generated.csv"
    if not gen.exists():
        raise SystemExit("run the 'captions' stage first")
    epochs, limit = args.epochs or 10, args.limit or 0
    runs, training = {}, {}
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    for arm, text in (("generated", [f"data.text={gen}"]), ("human", [])):
        if arm not in arms:
            continue
        overrides = [
            f"data.root={qata('train')}", f"data.val_root={qata('valid')}", f"train.threads={args.threads}",
            f"train.epochs={epochs}", f"train.val_every={epochs}", "data.val_limit=64", *text,
        ]  # fmt: skip
        if limit:
            overrides.append(f"data.limit={limit}")
        if args.no_train:  # score the runs as they stand (stopped early: the epochs done are in history.csv)
            training[arm] = history_info(RUNS / f"c2fvl_{arm}_captions")
            continue
        print(f"== c2fvl on {arm} captions", flush=True)
        _, info = train_run("c2fvl_qata", RUNS / f"c2fvl_{arm}_captions", overrides, args.quiet)
        info.pop("history")
        training[arm] = info
        runs[f"trained_on_{arm}"] = RUNS / f"c2fvl_{arm}_captions"
    result: dict[str, Any] = {
        "stage": "gen-captions", **stamp(), "model": "c2fvl (c2fvl_qata)", "training": training,
        "recipe": {"epochs": epochs, "train_cases": limit or 1000},
    }  # fmt: skip
    if args.train_only:
        write_json(RESULTS / f"captions_training_{'_'.join(training)}.json", result)
        return result
    for arm in ("generated", "human"):  # arms trained by other processes (--train-only)
        runs[f"trained_on_{arm}"] = RUNS / f"c2fvl_{arm}_captions"
        part = RESULTS / f"captions_training_{arm}.json"
        if arm not in training:
            training[arm] = json.loads(part.read_text())["training"][arm] if part.exists() else history_info(runs[f"trained_on_{arm}"])
    out = RESULTS / "captions_c2fvl"
    result["valid"] = evaluate(runs, qata("valid"), caption_kinds_json(), "human,generated", out, args.eval_limit, checkpoint=args.checkpoint)
    per_case: dict[tuple[str, str], list[float]] = {}
    for row in csv.DictReader((out / "per_case.csv").open()):
        per_case.setdefault((row["model"], row["prompt_type"]), []).append(float(row["dice"]))
    a, b = per_case[("trained_on_generated", "human")], per_case[("trained_on_human", "human")]
    result["generated_minus_human_trained_dice_on_human_captions"] = {
        "difference": round(float(np.mean(a) - np.mean(b)), 4), "ci95": bootstrap_diff(a, b),
    }  # fmt: skip
    readme = ROOT / "bench" / "results" / "qata_text.json"
    if readme.exists():
        ref = json.loads(readme.read_text())["models"].get("c2fvl")
        if ref:
            result["readme_c2fvl_row"] = {"dice": ref["with_caption"]["dice"], "epochs": ref["epochs"], "train_cases": ref["train_cases"]}
    write_json(RESULTS / "generated_captions_c2fvl.json", result)
    print(json.dumps(result["generated_minus_human_trained_dice_on_human_captions"]), flush=True)
    return result


def stage_report(args) -> str:
    """Markdown tables of every stage's results (``bench/results/prompts/tables.md``) for the README."""
    out = []
    agree = json.loads((RESULTS / "captions_agreement.json").read_text())
    out += ["Captions made from the masks against QaTa's human ones (share of cases):", "",
            "| split | laterality | each of the six zones | all six zones (= identical caption) | infected-area count |",
            "|---|---|---|---|---|"]  # fmt: skip
    for split, a in agree["splits"].items():
        out.append(f"| {split} ({a['cases']:,}) | {a['laterality']:.3f} | {a['per_zone']:.3f} | {a['all_six_zones']:.3f} | {a['infected_area_count']:.3f} |")
    from covseg.data.text_sources import load_texts

    out += ["", "Agreement per zone (left upper, middle, lower; right upper, middle, lower):", ""]
    for split in agree["splits"]:
        gen = load_texts(TEXT / f"captions_generated_{split}.csv")
        human = load_texts(qata(split) / "captions.csv")
        g = np.array([gen.entry(k).meta["pseudo_label"] for k in gen])
        h = np.array([human.lookup(k).meta["pseudo_label"] for k in gen])
        out.append(f"- {split}: " + ", ".join(f"{v:.2f}" for v in (g == h).mean(0)))
    gen_path = RESULTS / "generated_captions_c2fvl.json"
    if gen_path.exists():
        g = json.loads(gen_path.read_text())
        table = {row["prompt_type"]: row for row in g["valid"]["table"]}
        done = sorted({int(g["training"][arm]["epochs"]) for arm in ("human", "generated")})
        out += ["", f"`c2fvl`, {'/'.join(map(str, done))} of {g['recipe']['epochs']} scheduled epochs on {g['recipe']['train_cases']} "
                f"training images, scored on {g['valid']['cases']} valid images (mean Dice / IoU):", "",
                "| trained on | tested with human captions | tested with generated captions | training wall time |", "|---|---|---|---|"]  # fmt: skip
        for arm in ("human", "generated"):
            m = f"trained_on_{arm}"
            t = g["training"][arm].get("train_time_s_sum_of_epochs", 0) / 60
            out.append(f"| {arm} captions | {table['human'][m + '_dice']:.4f} / {table['human'][m + '_iou']:.4f} | "
                       f"{table['generated'][m + '_dice']:.4f} / {table['generated'][m + '_iou']:.4f} | {t:.0f} min |")  # fmt: skip
        d = g["generated_minus_human_trained_dice_on_human_captions"]
        out.append(f"\nGenerated − human (both tested with human captions): {d['difference']:+.4f} Dice, 95 % paired bootstrap {d['ci95'][0]:+.4f} to {d['ci95'][1]:+.4f}.")
    for name in ("qata", "demo"):
        summaries = {p.parent.name.split("_", 1)[1]: json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"{name}_*/summary.json"))}
        if not summaries:
            continue
        models = [m for m in ("cris", "c2fvl", "lvit") if m in summaries] + [m for m in summaries if m not in ("cris", "c2fvl", "lvit")]
        cases = {summaries[m]["cases"] for m in models}
        types = summaries[models[0]]["prompt_types"]
        out += ["", f"{name}: {', '.join(str(c) for c in sorted(cases))} cases, mean Dice / IoU per prompt type:", "",
                "| prompt type | " + " | ".join(f"`{m}`" for m in models) + " |", "|---|" + "---|" * len(models)]  # fmt: skip
        for k, t in enumerate(types):
            cells = [f"{summaries[m]['table'][k][m + '_dice']:.4f} / {summaries[m]['table'][k][m + '_iou']:.4f}" for m in models]
            out.append(f"| {t} | " + " | ".join(cells) + " |")
        out += ["", f"Paired bootstrap (95 %) of the Dice difference to {types[0]} and between neighbouring types:", ""]
        for m in models:
            for b in summaries[m]["paired_bootstrap"]:
                if b["from"] == types[0] or types.index(b["to"]) == types.index(b["from"]) + 1:
                    out.append(f"- `{m}` {b['to']} − {b['from']}: {b['dice_difference']:+.4f} [{b['ci95'][0]:+.4f}, {b['ci95'][1]:+.4f}]")
    text = "\n".join(out) + "\n"
    write_text(RESULTS / "tables.md", text)
    print(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["captions", "gen-captions", "prompts", "prompts-eval", "report"])
    parser.add_argument("--train-only", action="store_true", help="prompts / gen-captions: train, do not evaluate")
    parser.add_argument("--arms", default="generated,human", help="gen-captions: which captions to train on")
    parser.add_argument("--no-train", action="store_true", help="gen-captions: score the runs as they stand")
    parser.add_argument("--checkpoint", default="best", help="checkpoint to score (best falls back to last)")
    parser.add_argument("--only", default="", choices=["", "qata", "demo"], help="prompts(-eval): score one data set")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=0, help="override the configs' epochs (0 = as shipped)")
    parser.add_argument("--limit", type=int, default=0, help="training cases (0 = all)")
    parser.add_argument("--models", default="cris,c2fvl,lvit", help="prompts stage: models to fine-tune")
    parser.add_argument("--eval-limit", type=int, default=300, help="prompts stage: valid cases scored (spread evenly; 0 = all)")
    parser.add_argument("--tag", default="", help="smoke runs: results and run folders under a tagged name")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.tag:
        global RESULTS, RUNS
        RESULTS, RUNS = RESULTS.with_name(f"prompts_{args.tag}"), RUNS.with_name(f"bench_prompts_{args.tag}")
    if not qata("train").is_dir():
        raise SystemExit(f"QaTa data not found under {data_root()} (set COVSEG_DATA)")
    stages = {"captions": stage_captions, "gen-captions": stage_gen_captions, "prompts": stage_prompts, "prompts-eval": stage_prompts_eval, "report": stage_report}
    stages[args.stage](args)


DEMO = "biomedparse_demo_textprompt"
QATA_TYPES = "P0,P1,P2,P3,P4"
DEMO_TYPES = "P0,P1,P2"


def demo_prompts() -> Path:
    """P0 the target ("nodule"), P1 + site ("nodule in lung"), P2 the demo's own prompt ("nodule in lung CT")."""
    rows = list(csv.DictReader((data_root() / DEMO / "pairs.csv").open(encoding="utf-8")))
    items = [
        {
            "img_name": Path(r["image"]).name, "mask_name": Path(r["mask"]).name,
            "prompts": {"P0": [r["target"]], "P1": [f"{r['target']} in {r['site']}"], "P2": [r["prompt"]]},
        }
        for r in rows
    ]
    path = TEXT / "prompts_demo.json"
    write_json(path, items)
    return path


def evaluate(runs: dict[str, Path], data: Path, texts: Path, types: str, out: Path, limit: int, split: str | None = None, checkpoint: str = "best") -> dict:
    from covseg.cli.main import main as cli

    args = ["evaluate-prompts", "--data", str(data), "--texts", str(texts), "--prompt-types", types, "--out", str(out), "--quiet", "--checkpoint", checkpoint]
    args += [a for m, run in runs.items() for a in ("--model", f"{m}={run}")]
    if limit:
        args += ["--limit", str(limit)]
    if split:
        args += ["--split", split]
    t0, c0 = time.perf_counter(), cpu_seconds()
    try:
        cli(args)
    except SystemExit as exc:
        if exc.code:
            raise
    result = json.loads((out / "summary.json").read_text())
    result.update({"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(cpu_seconds() - c0, 1), **stamp()})
    write_json(out / "summary.json", result)
    return result


def stage_prompts(args) -> dict[str, Any]:
    """Fine-tune each model with prompt-type sampling, then score every prompt type on QaTa valid and the demo set."""
    import torch

    torch.set_num_threads(args.threads)
    prompts = TEXT / "prompts_qata.json"
    if not prompts.exists():
        raise SystemExit("run the 'captions' stage first")
    epochs, limit = args.epochs or 2, args.limit or 500
    runs, training = {}, {}
    for m in [x.strip() for x in args.models.split(",") if x.strip()]:
        overrides = [
            f"data.root={qata('train')}", f"data.val_root={qata('valid')}", f"data.text={prompts}", "data.prompt=P4",
            "extra.text.prompt_sampling=true", f"train.epochs={epochs}", f"train.val_every={epochs}", f"data.limit={limit}",
            "data.val_limit=64", f"train.threads={args.threads}",
        ]  # fmt: skip
        print(f"== {m}", flush=True)
        _, info = train_run(f"{m}_qata", RUNS / f"{m}_prompts", overrides, args.quiet)
        info.pop("history")
        training[m] = info
        runs[m] = RUNS / f"{m}_prompts"
    result = {"stage": "prompts", **stamp(), "training": training, "recipe": {"epochs": epochs, "train_cases": limit}}
    if args.train_only:  # several models trained in parallel processes; 'prompts-eval' scores them
        write_json(RESULTS / f"prompts_training_{'_'.join(training)}.json", result)
        return result
    write_json(RESULTS / "prompts_training.json", result)
    return evaluate_prompt_runs(args, result)


def history_info(run_dir: Path) -> dict[str, Any]:
    """Training time of a run from its history.csv (for runs whose training process was stopped after it)."""
    from covseg.runs import RunFolder

    history = RunFolder(run_dir).read_history()
    return {"epochs": len(history), "train_time_s_sum_of_epochs": round(sum(float(r.get("time_s") or 0) for r in history), 1), "from": "history.csv"}


def stage_prompts_eval(args) -> dict[str, Any]:
    """Score the fine-tuned runs of the 'prompts' stage (trained with --train-only in parallel processes)."""
    result: dict[str, Any] = {"stage": "prompts", **stamp(), "training": {}}
    for path in sorted(RESULTS.glob("prompts_training_*.json")):
        part = json.loads(path.read_text())
        result["training"].update(part["training"])
        result["recipe"] = part["recipe"]
    for m in [x.strip() for x in args.models.split(",") if x.strip()]:
        result["training"].setdefault(m, history_info(RUNS / f"{m}_prompts"))
    return evaluate_prompt_runs(args, result)


def evaluate_prompt_runs(args, result: dict[str, Any]) -> dict[str, Any]:
    runs = {m: RUNS / f"{m}_prompts" for m in [x.strip() for x in args.models.split(",") if x.strip()]}
    prompts = TEXT / "prompts_qata.json"
    # one model at a time (each can start as soon as its training is done); 'report' joins the tables
    for m, run in runs.items():
        if args.only in ("", "qata"):
            print(f"== {m}: evaluate QaTa valid", flush=True)
            result[f"qata_{m}"] = evaluate({m: run}, qata("valid"), prompts, QATA_TYPES, RESULTS / f"qata_{m}", args.eval_limit)
        if args.only in ("", "demo"):
            print(f"== {m}: evaluate the BiomedParse demo set", flush=True)
            result[f"demo_{m}"] = evaluate({m: run}, data_root() / DEMO, demo_prompts(), DEMO_TYPES, RESULTS / f"demo_{m}", 0)
    write_json(RESULTS / f"prompts_eval_{'_'.join(runs)}{'_' + args.only if args.only else ''}.json", result)
    return result


if __name__ == "__main__":
    sys.exit(main())
