"""Pair a semi-supervised method with its supervised twin, fold by fold, on the 30 unused labelled slices.

``bench_semi.py`` scores each 10-label fold on the fold's 30 labelled slices that the run neither
trained nor validated on (``unused_*_records``). When a method's folds were trained in several
result folders (``bench/results/semi`` and ``semi_<tag>``, e.g. on two machines), this reads each
fold from the first folder that has it with those scores, pairs it with the baseline's same fold,
and prints the per-fold and pooled differences in points (medical Dice at 0.5, sod mean Dice) as a
Markdown table.

    python bench/semi_unused_pairs.py res_cps_uif_std --base res_sup \
        --method-dirs semi_rerun,semi --base-dirs semi_rerun
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cv_common import pooled

RESULTS = Path(__file__).resolve().parent / "results"
PROTOCOLS = (("unused_medical_records", "dice", "medical Dice"), ("unused_sod_records", "mean_dice", "sod mean Dice"))


def fold_records(variant: str, dirs: list[str], folds: range) -> dict[int, tuple[str, dict]]:
    """Fold -> (folder name, result) from the first folder holding that fold with unused-slice scores."""
    found: dict[int, tuple[str, dict]] = {}
    for fold in folds:
        for name in dirs:
            path = RESULTS / name / variant / f"fold{fold}.json"
            if path.exists():
                result = json.loads(path.read_text())
                if "unused_medical_records" in result:
                    found[fold] = (name, result)
                    break
    return found


def table(method: dict[int, tuple[str, dict]], base: dict[int, tuple[str, dict]], label: str) -> list[str]:
    folds = sorted(set(method) & set(base))
    if not folds:
        return [f"no fold of {label} has unused-slice scores in both folders"]
    head = "| " + " | ".join([f"{label} vs baseline, 30 unused slices a fold", *(f"fold {f}" for f in folds), f"pooled ({30 * len(folds)} slices)"]) + " |"
    lines = [head, "|" + "---|" * (len(folds) + 2)]
    for key, metric, name in PROTOCOLS:
        cells = []
        for f in folds:
            delta = pooled(method[f][1][key], metric)[0] - pooled(base[f][1][key], metric)[0]
            cells.append(f"{100 * delta:+.1f}")
        pooled_delta = pooled([r for f in folds for r in method[f][1][key]], metric)[0] - pooled([r for f in folds for r in base[f][1][key]], metric)[0]
        lines.append(f"| Δ {name} | " + " | ".join(cells) + f" | **{100 * pooled_delta:+.1f}** |")
    sources = ", ".join(f"fold {f}: {method[f][0]}" for f in folds)
    lines += ["", f"Method folds from {sources}; baseline folds from " + ", ".join(sorted({base[f][0] for f in folds})) + "."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("method", help="bench_semi method, e.g. res_cps_uif_std")
    ap.add_argument("--base", default="res_sup")
    ap.add_argument("--budget", default="10")
    ap.add_argument("--method-dirs", default="semi_rerun,semi", help="result folders under bench/results, first wins")
    ap.add_argument("--base-dirs", default="semi_rerun")
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    folds = range(args.folds)
    method = fold_records(f"{args.method}_{args.budget}", args.method_dirs.split(","), folds)
    base = fold_records(f"{args.base}_{args.budget}", args.base_dirs.split(","), folds)
    print("\n".join(table(method, base, args.method)))


if __name__ == "__main__":
    main()
