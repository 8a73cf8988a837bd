"""False-positive infection volume on infection-free CT (issue 24 §5), a standing benchmark row.

For each shipped CT model (zoo name) and each cross-validated variant of ``bench_covid_semiseg.py``
(every finished fold's run), the model predicts the non-COVID CT ``ct3d_totalseg_example`` and the
infected ml is counted with and without ``--lungs-only`` in the held-out half of its lung slices
(``healthy_ct.halves``: variants trained with negatives saw only the other half). Target: ≤ 1 ml
with ``--lungs-only``, without losing cross-validated Dice.

    COVSEG_THREADS=1 python bench/bench_healthy_fp.py --zoo covid-ct-infection \\
        --variants resunet_all_e100,resunet_all_effl0_e100,resunet_all_effl0_e100_neg

Results: ``bench/results/healthy_fp/summary.{json,md}`` (rows merged with earlier ones by name).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cv_common import ROOT, machine
from healthy_ct import false_positives

OUT = ROOT / "bench" / "results" / "healthy_fp"
CV_RUNS = ROOT / "runs" / "bench" / "covid_semiseg"


def measure(source: str) -> dict:
    import torch

    from covseg.engine.runtime import Runtime
    from covseg.inference.loading import load_predictor

    torch.set_num_threads(1)
    return false_positives(load_predictor(source, runtime=Runtime.create("cpu", "off")))


def variant_row(variant: str) -> dict | None:
    done = ROOT / "bench" / "results" / "covid_semiseg" / variant  # folds whose training finished (and was scored)
    folds = sorted(p for p in (CV_RUNS / variant).glob("fold[0-9]") if (done / f"{p.name}.json").exists())
    if not folds:
        return None
    per_fold = {p.name: measure(str(p)) for p in folds}
    row: dict = {"kind": "cv folds", "folds": per_fold}
    for mode in ("lungs_only", "plain"):
        values = [r[mode]["held_out_ml"] for r in per_fold.values()]
        row[f"{mode}_held_out_ml_median"] = round(statistics.median(values), 3)
        row[f"{mode}_held_out_ml_max"] = round(max(values), 3)
    return row


def write(rows: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "summary.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "| model | kind | held-out ml, --lungs-only | held-out ml, plain | whole crop ml, --lungs-only |",
        "|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        if name.startswith("_"):
            continue
        if row["kind"] == "zoo":
            lines.append(f"| {name} | shipped | {row['lungs_only']['held_out_ml']} | {row['plain']['held_out_ml']} | {row['lungs_only']['whole_ml']} |")
        else:
            whole = statistics.median(f["lungs_only"]["whole_ml"] for f in row["folds"].values())
            lines.append(
                f"| {name} | {len(row['folds'])} CV fold runs (median, max) | {row['lungs_only_held_out_ml_median']} "
                f"({row['lungs_only_held_out_ml_max']}) | {row['plain_held_out_ml_median']} ({row['plain_held_out_ml_max']}) | {whole:.3f} |"
            )
    meta = rows.get("_meta", {})
    (OUT / "summary.md").write_text(
        f"False-positive infection on infection-free CT (ct3d_totalseg_example, held-out half: slices {meta.get('held_out_slices')}, "
        f"{meta.get('held_out_lung_ml')} ml of reference lung); {meta.get('date')}, {meta.get('machine')}.\n\n" + "\n".join(lines) + "\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="", help="comma list of shipped model names")
    ap.add_argument("--variants", default="", help="comma list of bench_covid_semiseg variants (their fold runs)")
    args = ap.parse_args()
    rows = json.loads((OUT / "summary.json").read_text()) if (OUT / "summary.json").exists() else {}
    for name in filter(None, args.zoo.split(",")):
        rows[name] = {"kind": "zoo", **measure(name)}
        print(name, rows[name]["lungs_only"], flush=True)
    for name in filter(None, args.variants.split(",")):
        row = variant_row(name)
        if row is None:
            print(f"{name}: no finished fold runs in {CV_RUNS / name}", flush=True)
            continue
        rows[name] = row
        print(name, row["lungs_only_held_out_ml_median"], row["lungs_only_held_out_ml_max"], flush=True)
    any_row = next((r for r in rows.values() if isinstance(r, dict) and "lungs_only" in r), None)
    any_row = any_row or next((next(iter(r["folds"].values())) for r in rows.values() if isinstance(r, dict) and "folds" in r), None)
    if any_row:
        rows["_meta"] = {"date": dt.date.today().isoformat(), "machine": machine(), "held_out_slices": any_row["held_out_slices"],
                         "held_out_lung_ml": any_row["held_out_lung_ml"]}
    write(rows)


if __name__ == "__main__":
    main()
