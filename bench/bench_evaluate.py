"""Benchmark the medical protocol on 1,000 masks of 512² (HD95 included) and compare with MONAI.

Three timings of the same cases:

1. ``cli``      – ``covseg evaluate`` in-process (``covseg.cli.main.main``): pairing, reading PNGs,
                  scoring, per-case CSV, summary JSON and the HTML report (files included);
2. ``scoring``  – the same ``MedicalMetrics.update`` the command calls, on arrays already in memory
                  (files excluded): all 8 metrics (Dice, IoU, precision, sensitivity, specificity,
                  HD95, ASSD, NSD);
3. ``monai``    – MONAI's ``compute_dice`` + ``compute_hausdorff_distance(percentile=95)`` on the
                  same binarised arrays (one-hot torch tensors, batches of 8).

The cases are the 52 real ``covid19_ct100_jcs`` masks (512², one empty) under random flips, shifts
and dilation/erosion, with soft-map predictions made by shifting, blurring and adding noise
(synthetic blobs when the real data is absent). Results go to ``bench/results/``.

Run: ``python bench/bench_evaluate.py [--n 1000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import binary_dilation, binary_erosion, gaussian_filter

from covseg.utils.atomic import write_bytes, write_json
from covseg.utils.paths import data_root

RESULTS = Path(__file__).resolve().parent / "results"
SPACING = (0.7, 0.7)  # a typical in-plane CT pixel size; gives HD95/ASSD in mm


def base_masks(size: int) -> tuple[list[np.ndarray], str]:
    """Real JCS masks when available, else synthetic blobs."""
    folder = data_root() / "covid19_ct100_jcs" / "masks"
    paths = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if paths:
        masks = [(np.asarray(Image.open(p)) > 0) for p in paths]
        if all(m.shape == (size, size) for m in masks):
            return masks, f"{len(masks)} covid19_ct100_jcs masks ({folder})"
    rng = np.random.default_rng(0)
    masks = []
    for _ in range(52):
        field = gaussian_filter(rng.random((size, size)), size / 40)
        masks.append(field > np.quantile(field, 1 - rng.uniform(0.01, 0.12)))
    return masks, "52 synthetic blob masks (real data not found)"


def make_case(base: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A perturbed ground truth (uint8 0/1) and a uint8 soft-map prediction for it."""
    gt = base.copy()
    if rng.random() < 0.5:
        gt = gt[::-1]
    if rng.random() < 0.5:
        gt = gt[:, ::-1]
    gt = np.roll(gt, tuple(rng.integers(-20, 21, size=2)), axis=(0, 1))
    k = int(rng.integers(-2, 3))
    if k > 0:
        gt = binary_dilation(gt, iterations=k)
    elif k < 0:
        gt = binary_erosion(gt, iterations=-k)
    if rng.random() < 0.02:
        gt = np.zeros_like(gt)  # a few empty slices, as in real series
    pred = np.roll(gt.astype(np.float32), tuple(rng.integers(-3, 4, size=2)), axis=(0, 1))
    pred = gaussian_filter(pred, rng.uniform(1.0, 4.0))
    if rng.random() < 0.3:  # a false-positive blob
        cy, cx = rng.integers(60, gt.shape[0] - 60, size=2)
        pred[cy - 12 : cy + 12, cx - 15 : cx + 15] += rng.uniform(0.3, 0.9)
    pred += rng.normal(0, 0.04, pred.shape).astype(np.float32)
    soft = np.clip(np.round(pred * 255), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(gt, dtype=np.uint8), soft


def write_cases(root: Path, cases: list[tuple[np.ndarray, np.ndarray]]) -> tuple[Path, Path]:
    pred_dir, gt_dir = root / "pred", root / "gt"
    pred_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    for i, (gt, soft) in enumerate(cases):
        Image.fromarray(gt * 255).save(gt_dir / f"{i:04d}.png", compress_level=1)
        Image.fromarray(soft).save(pred_dir / f"{i:04d}.png", compress_level=1)
    return pred_dir, gt_dir


def time_cli(pred_dir: Path, gt_dir: Path, out_dir: Path) -> float:
    from covseg.cli.main import main

    args = ["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(out_dir)]
    args += ["--spacing", ",".join(map(str, SPACING)), "--tolerance", "1.0"]
    start = time.perf_counter()
    try:
        main(args)
    except SystemExit as exc:
        if exc.code:
            raise RuntimeError(f"covseg evaluate failed with exit code {exc.code}") from None
    return time.perf_counter() - start


def time_scoring(cases: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, list[dict]]:
    from covseg.metrics import MedicalMetrics

    acc = MedicalMetrics(tolerance=1.0)
    start = time.perf_counter()
    for i, (gt, soft) in enumerate(cases):
        acc.update(soft, gt, spacing=SPACING, case_id=f"{i:04d}")
    return time.perf_counter() - start, acc.per_case()


def time_monai(
    cases: list[tuple[np.ndarray, np.ndarray]], batch: int = 8
) -> tuple[float, np.ndarray, np.ndarray]:
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance

    dices, hds = [], []
    start = time.perf_counter()
    for lo in range(0, len(cases), batch):
        chunk = cases[lo : lo + batch]
        gt = torch.from_numpy(np.stack([g for g, _ in chunk])).bool()
        pred = torch.from_numpy(np.stack([s for _, s in chunk]) >= 128)  # p >= 0.5 on the same maps
        y = torch.stack([~gt, gt], dim=1).float()
        y_pred = torch.stack([~pred, pred], dim=1).float()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # empty-mask warnings
            dices.append(compute_dice(y_pred, y, include_background=False).numpy().ravel())
            hds.append(compute_hausdorff_distance(y_pred, y, percentile=95, spacing=SPACING).numpy().ravel())
    return time.perf_counter() - start, np.concatenate(dices), np.concatenate(hds)


def save_figure(path: Path, timings: dict[str, float], per_case_dice: np.ndarray, n: int) -> None:
    from covseg.viz.plots import figure_png, new_figure

    fig = new_figure(9.0, 3.4)
    ax1 = fig.add_subplot(1, 2, 1)
    names = list(timings)
    ax1.barh(
        names, [timings[k] for k in names], color=["#3b75af", "#5a9bd4", "#e07b39", "#c44e52"][: len(names)]
    )
    ax1.set_xlabel("seconds")
    ax1.set_title(f"{n} cases of 512², {os.cpu_count()} shared CPU cores", fontsize=10)
    for y, k in enumerate(names):
        ax1.text(timings[k], y, f" {timings[k]:.1f} s", va="center", fontsize=8)
    ax1.set_xlim(0, max(timings.values()) * 1.3)
    ax2 = fig.add_subplot(1, 2, 2)
    finite = per_case_dice[np.isfinite(per_case_dice)]
    ax2.hist(finite, bins=30, color="#3b75af", edgecolor="white")
    ax2.set_xlabel("Dice")
    ax2.set_ylabel("cases")
    ax2.set_title("per-case Dice of the benchmark cases", fontsize=10)
    write_bytes(path, figure_png(fig))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="number of cases")
    parser.add_argument("--size", type=int, default=512, help="mask side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON and PNG go")
    parser.add_argument("--skip-monai", action="store_true", help="skip the MONAI reference timing")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    bases, source = base_masks(args.size)
    t0 = time.perf_counter()
    cases = [make_case(bases[i % len(bases)], rng) for i in range(args.n)]
    gen_s = time.perf_counter() - t0
    load_before = os.getloadavg()

    tmp = Path(tempfile.mkdtemp(prefix="covseg-bench-"))
    try:
        t0 = time.perf_counter()
        pred_dir, gt_dir = write_cases(tmp, cases)
        write_s = time.perf_counter() - t0

        cli_s = time_cli(pred_dir, gt_dir, tmp / "out")
        summary = json.loads((tmp / "out" / "summary.json").read_text())
        report_kb = (tmp / "out" / "report.html").stat().st_size / 1024
        scoring_s, records = time_scoring(cases)
        monai_s, monai_dice, monai_hd = (float("nan"), None, None)
        if not args.skip_monai:
            monai_s, monai_dice, monai_hd = time_monai(cases)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()

    ours_dice = np.array([r["dice"] for r in records], dtype=np.float64)
    ours_hd = np.array([r["hd95"] for r in records], dtype=np.float64)
    agreement = {}
    if monai_dice is not None:
        both = np.isfinite(ours_hd) & np.isfinite(monai_hd)
        dice_both = np.isfinite(ours_dice) & np.isfinite(monai_dice)
        agreement = {
            "max_abs_dice_diff": float(np.max(np.abs(ours_dice[dice_both] - monai_dice[dice_both]))),
            "max_abs_hd95_diff_mm": float(np.max(np.abs(ours_hd[both] - monai_hd[both]))),
            "cases_compared_hd95": int(both.sum()),
        }
    import covseg

    def versions() -> dict[str, str]:
        from importlib.metadata import version

        return {p: version(p) for p in ("numpy", "scipy", "pillow", "torch", "monai")}

    result = {
        "what": "medical protocol (8 metrics incl. HD95/ASSD/NSD) on 512x512 masks",
        "n_cases": args.n,
        "size": args.size,
        "spacing_mm": SPACING,
        "source_masks": source,
        "seconds": {
            "generate_cases": round(gen_s, 3),
            "write_pngs": round(write_s, 3),
            "cli_end_to_end_files_included": round(cli_s, 3),
            "cli_scoring_loop_files_included": summary["seconds"],
            "scoring_in_memory_files_excluded": round(scoring_s, 3),
            "monai_dice_plus_hd95_in_memory": round(monai_s, 3),
        },
        "per_case_ms": {
            "cli_end_to_end": round(1000 * cli_s / args.n, 3),
            "scoring_in_memory": round(1000 * scoring_s / args.n, 3),
            "monai_dice_plus_hd95": round(1000 * monai_s / args.n, 3),
        },
        "ratio_monai_over_ours_in_memory": round(monai_s / scoring_s, 3),
        "target_seconds": 60,
        "meets_target": bool(cli_s < 60),
        "mean_dice": summary["metrics"]["dice"]["mean"],
        "mean_hd95_mm": summary["metrics"]["hd95"]["mean"],
        "report_kb": round(report_kb, 1),
        "agreement_with_monai": agreement,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in load_after],
            "python": platform.python_version(),
            "platform": platform.platform(),
            "note": "shared machine: other processes were running, timings vary",
        },
        "versions": {"covseg": covseg.__version__, **versions()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "bench_evaluate.json", result)
    timings = {
        "covseg evaluate (files, report)": cli_s,
        "covseg scoring (in memory, 8 metrics)": scoring_s,
    }
    if np.isfinite(monai_s):
        timings["MONAI dice + HD95 (in memory)"] = monai_s
    save_figure(args.out / "bench_evaluate.png", timings, ours_dice, args.n)

    print(f"\n{args.n} cases of {args.size}², {source}; spacing {SPACING} mm")
    print(f"{'timing':48s} {'seconds':>9s} {'ms/case':>9s}")
    rows = [
        ("covseg evaluate, end to end (read + score + CSV/JSON/HTML)", cli_s),
        ("  of which reading + scoring loop", summary["seconds"]),
        ("covseg scoring in memory (MedicalMetrics.update)", scoring_s),
        ("MONAI compute_dice + compute_hausdorff_distance(95)", monai_s),
    ]
    for name, secs in rows:
        print(f"{name:48s} {secs:9.2f} {1000 * secs / args.n:9.2f}")
    print(f"ratio MONAI / covseg (in memory): {monai_s / scoring_s:.2f}x")
    if agreement:
        print(f"agreement with MONAI: {agreement}")
    print(
        f"target < 60 s end to end: {'met' if cli_s < 60 else 'NOT met'}; load average {load_before} -> {load_after}"
    )
    print(f"wrote {args.out / 'bench_evaluate.json'} and {args.out / 'bench_evaluate.png'}")


if __name__ == "__main__":
    main()
