"""FLARE's NSD: covseg's surfel-area surface Dice against DeepMind's ``surface_distance`` (FLARE's script).

The reference library is not a covseg dependency: clone github.com/google-deepmind/surface-distance
somewhere outside the repository and give its folder (the one holding ``surface_distance/``)::

    python bench/bench_nsd_reference.py --reference /tmp/surface-distance [--cases 50]

For ``--cases`` random blob pairs (2D up to 64², 3D up to 40³, anisotropic spacing, seeds 0..N-1;
the generator is :func:`blob_pair`, the same as in ``tests/metrics/test_metrics_surface_area.py``) it
compares, for tolerances 0.5 / 1 / 2 / 3 mm, the surface Dice, the 95 % robust Hausdorff distance and
both average surface distances with the library, and the surface Dice with covseg's voxel-count NSD
(MONAI ``compute_surface_dice``, ``covseg.metrics.surface``) on the same pairs. It also times both NSDs
(CPU seconds) on one synthetic 512×512×100 label map with 13 organs, the size of a FLARE22 case.
Results: ``bench/results/nsd_reference/`` (``results.json``, ``README.md``). ``--write-test-data``
(re)writes ``tests/assets/nsd_reference.json``, the reference values the test checks, from the first
``--test-cases`` seeds.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_dilation, gaussian_filter

from covseg.metrics import surface_area
from covseg.metrics.surface import surface_metrics

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "nsd_reference"
TEST_DATA = ROOT / "tests" / "assets" / "nsd_reference.json"
TOLERANCES = (0.5, 1.0, 2.0, 3.0)


def blob_pair(seed: int) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """``(pred, gt, spacing)``: a smooth random blob and a perturbed copy; every third seed is 2D."""
    rng = np.random.default_rng(seed)
    ndim = 2 if seed % 3 == 0 else 3
    shape = tuple(int(n) for n in rng.integers(24, 65 if ndim == 2 else 41, ndim))
    spacing = tuple(float(s) for s in np.round(rng.uniform(0.4, 3.0, ndim), 3))
    field = gaussian_filter(rng.random(shape), rng.uniform(1.5, 3.0))
    gt = field > np.quantile(field, rng.uniform(0.5, 0.85))
    noisy = gaussian_filter(gt + rng.normal(0, 0.6, shape), rng.uniform(0.8, 1.5))
    return noisy > 0.5, gt, spacing


def reference_values(sd, pred: np.ndarray, gt: np.ndarray, spacing) -> dict:
    d = sd.compute_surface_distances(gt, pred, spacing)
    asd = sd.compute_average_surface_distance(d)
    return {
        "nsd": [float(sd.compute_surface_dice_at_tolerance(d, t)) for t in TOLERANCES],
        "hd95": float(sd.compute_robust_hausdorff(d, 95)),
        "asd_gt_to_pred": float(asd[0]),
        "asd_pred_to_gt": float(asd[1]),
        "area_gt": float(d["surfel_areas_gt"].sum()),
        "area_pred": float(d["surfel_areas_pred"].sum()),
    }


def covseg_values(pred: np.ndarray, gt: np.ndarray, spacing) -> dict:
    d = surface_area.surfel_distances(pred, gt, spacing)
    asd = surface_area.average_surface_distances(d)
    return {
        "nsd": [surface_area.surface_dice(d, t) for t in TOLERANCES],
        "hd95": surface_area.robust_hausdorff(d, 95),
        "asd_gt_to_pred": asd[0],
        "asd_pred_to_gt": asd[1],
        "area_gt": float(d.gt_areas.sum()),
        "area_pred": float(d.pred_areas.sum()),
    }


def flare_like_case() -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """A 512×512×100 label map with 13 ellipsoid organs and a prediction shifted by (3, -2, 1) voxels."""
    rng = np.random.default_rng(1)
    x, y, z = np.ogrid[:512, :512, :100]
    gt = np.zeros((512, 512, 100), np.uint8)
    radii = [
        (90, 70, 30),
        (30, 25, 20),
        (40, 35, 20),
        (45, 15, 10),
        (10, 10, 40),
        (12, 12, 40),
        (8, 6, 6),
        (8, 6, 6),
        (15, 12, 10),
        (8, 8, 30),
        (60, 45, 20),
        (35, 15, 15),
        (30, 25, 20),
    ]
    for c, (a, b, h) in enumerate(radii, 1):
        cx, cy, cz = rng.uniform(130, 380), rng.uniform(130, 380), rng.uniform(35, 65)
        gt[((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 + ((z - cz) / h) ** 2 <= 1] = c
    return np.roll(gt, (3, -2, 1), axis=(0, 1, 2)), gt, (0.8, 0.8, 2.5)


def time_case(repeats: int = 3) -> dict:
    """CPU seconds of the 13 organs' NSD of one 512×512×100 case: voxel count, surfel area, flare table."""
    from covseg.metrics.flare import FlareMetrics

    pred, gt, spacing = flare_like_case()
    runs = {
        "voxel_nsd": lambda: [surface_metrics(pred == c, gt == c, spacing)["nsd"] for c in range(1, 14)],
        "surfel_nsd": lambda: [
            surface_area.surfel_surface_dice(pred == c, gt == c, spacing) for c in range(1, 14)
        ],
        "flare_metrics_voxel": lambda: FlareMetrics(num_classes=13, nsd="voxel").update(pred, gt, spacing),
        "flare_metrics_surfel": lambda: FlareMetrics(num_classes=13, nsd="surfel").update(pred, gt, spacing),
    }
    out = {}
    for name, run in runs.items():
        best = float("inf")
        for _ in range(repeats):
            start = time.process_time()
            run()
            best = min(best, time.process_time() - start)
        out[name] = round(best, 3)
    return out


def flare22_cases(n: int = 3):
    """``n`` 13-organ label maps of 96×96×40 (0.8, 0.8, 2.5 mm) and predictions that exercise FLARE22's rules:
    organs moved by a voxel or two, the aorta (5) and esophagus (10) running on past the ground truth's slices, the
    gallbladder (9) missing from the prediction, the left adrenal (8) absent from both, three voxels of pancreas
    (4) in case 0 (DSC < 0.2), liver / spleen / stomach dilated by 1–3 voxels."""
    x, y, z = np.ogrid[:96, :96, :40]
    for case in range(n):
        rng = np.random.default_rng(100 + case)
        gt = np.zeros((96, 96, 40), np.uint8)
        for c in range(1, 14):
            if c == 8:
                continue
            cx, cy, cz = (*rng.uniform(20, 76, 2), rng.uniform(12, 28))
            a, b, h = (*rng.uniform(4, 14, 2), rng.uniform(3, 9))
            gt[((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 + ((z - cz) / h) ** 2 <= 1] = c
        pred = np.roll(
            gt, (int(rng.integers(-4, 5)), int(rng.integers(-4, 5)), int(rng.integers(-1, 2))), axis=(0, 1, 2)
        )
        for c in (1, 3, 11):  # some organs predicted a few voxels too thick
            grown = binary_dilation(pred == c, iterations=int(rng.integers(1, 4)))
            pred[grown & (pred == 0)] = c
        for c in (5, 10):  # tubular organs: the prediction goes on beyond the labelled slices
            zs = np.flatnonzero((gt == c).any(axis=(0, 1)))
            if zs.size:
                pred[..., min(zs[-1] + 1, 39) :][
                    (pred[..., zs[-1]] == c)[..., None] & (pred[..., min(zs[-1] + 1, 39) :] == 0)
                ] = c
        pred[pred == 9] = 0
        if case == 0:
            pred[pred == 4] = 0
            pred[tuple(np.argwhere(gt == 4)[:3].T)] = 4  # 3 voxels of the pancreas: DSC < 0.2
        yield f"case{case}.nii.gz", pred, gt, (0.8, 0.8, 2.5)


def flare22_script_check(script_dir: Path) -> dict:
    """Run FLARE22's own ``FLARE22_DSC_NSD_Eval.py`` (its three paths filled in; ``pandas`` replaced by a CSV
    writer, which is all the script asks of it) on :func:`flare22_cases` written as NIfTI, and compare its
    rounded DSC / NSD per organ with ``FlareMetrics(num_classes=13, tolerance="flare22")``."""
    import csv
    import tempfile
    import types

    import nibabel as nib

    from covseg.metrics.flare import FLARE22_ORGANS, FlareMetrics

    class _Frame:
        def __init__(self, columns):
            self.columns = columns

        def to_csv(self, path, index=False):
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(self.columns)
                w.writerows(zip(*self.columns.values()))

    sys.modules.setdefault("pandas", types.SimpleNamespace(DataFrame=_Frame))
    sys.path.insert(0, str(script_dir))
    ours: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for sub in ("seg", "gt", "out"):
            Path(tmp, sub).mkdir()
        for name, pred, gt, spacing in flare22_cases():
            affine = np.diag([*spacing, 1.0])
            nib.save(nib.Nifti1Image(gt, affine), Path(tmp, "gt", name))
            nib.save(nib.Nifti1Image(pred, affine), Path(tmp, "seg", name))
            ours[name] = FlareMetrics(num_classes=13, tolerance="flare22").update(pred, gt, spacing)
        code = (script_dir / "FLARE22_DSC_NSD_Eval.py").read_text()
        for key, sub in (("seg_path", "seg"), ("gt_path", "gt"), ("save_path", "out")):
            code = code.replace(
                f"{key} = 'path to {'Results' if sub == 'out' else 'segmentation' if sub == 'seg' else 'ground truth'}'",
                f"{key} = {str(Path(tmp, sub))!r}",
            )
        exec(
            compile(code, "FLARE22_DSC_NSD_Eval.py", "exec"),
            {"__name__": "__main__", "print": lambda *a, **k: None},
        )
        with open(Path(tmp, "out", "DSC_NSD_teamname.csv")) as f:
            rows = list(csv.DictReader(f))
    names = list(json.loads(json.dumps(FLARE22_ORGANS)).values())
    organ_cols = [
        "Liver",
        "RK",
        "Spleen",
        "Pancreas",
        "Aorta",
        "IVC",
        "RAG",
        "LAG",
        "Gallbladder",
        "Esophagus",
        "Stomach",
        "Duodenum",
        "LK",
    ]
    worst, compared = 0.0, 0
    for row in rows:
        for c, col in enumerate(organ_cols, 1):
            rec = ours[row["Name"]][c - 1]
            worst = max(
                worst, abs(float(row[f"{col}_DSC"]) - rec["dice"]), abs(float(row[f"{col}_NSD"]) - rec["nsd"])
            )
            compared += 2
    return {
        "cases": len(rows),
        "values_compared": compared,
        "max_abs_difference": worst,
        "organs": names,
        "script_commit": "aad2cc2813d11135d014bf578d4f62cea84ab865 (JunMa11/FLARE, FLARE22/Evaluation)",
        "covseg": {n: [(r["dice"], r["nsd"]) for r in recs] for n, recs in ours.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference", type=Path, required=True, help="folder holding surface_distance/ (DeepMind)"
    )
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--write-test-data", action="store_true")
    parser.add_argument("--test-cases", type=int, default=12)
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument(
        "--flare22-script", type=Path, help="folder with FLARE22's FLARE22_DSC_NSD_Eval.py + SurfaceDice.py"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(args.reference))
    warnings.simplefilter("ignore")  # the library calls scipy.ndimage.filters / morphology (deprecated names)
    import surface_distance as sd

    rows, worst = [], {"nsd": 0.0, "hd95": 0.0, "asd": 0.0, "area": 0.0}
    for seed in range(args.cases):
        pred, gt, spacing = blob_pair(seed)
        ref, ours = reference_values(sd, pred, gt, spacing), covseg_values(pred, gt, spacing)
        voxel = [surface_metrics(pred, gt, spacing, tolerance=t)["nsd"] for t in TOLERANCES]
        worst["nsd"] = max(worst["nsd"], *(abs(a - b) for a, b in zip(ref["nsd"], ours["nsd"])))
        worst["hd95"] = max(worst["hd95"], abs(ref["hd95"] - ours["hd95"]))
        worst["asd"] = max(
            worst["asd"], *(abs(ref[k] - ours[k]) for k in ("asd_gt_to_pred", "asd_pred_to_gt"))
        )
        worst["area"] = max(
            worst["area"], *(abs(ref[k] - ours[k]) / ref[k] for k in ("area_gt", "area_pred"))
        )
        rows.append(
            {
                "seed": seed,
                "shape": list(gt.shape),
                "spacing": list(spacing),
                "gt_voxels": int(gt.sum()),
                "pred_voxels": int(pred.sum()),
                "reference": ref,
                "covseg": ours,
                "voxel_nsd": voxel,
            }
        )
    diff = np.array(
        [[r["reference"]["nsd"][i] - r["voxel_nsd"][i] for i in range(len(TOLERANCES))] for r in rows]
    )
    summary = {
        "cases": len(rows),
        "max_abs_difference_vs_reference": worst,
        "surfel_minus_voxel_nsd": {
            f"{t:g}mm": {
                "mean": float(diff[:, i].mean()),
                "mean_abs": float(np.abs(diff[:, i]).mean()),
                "max_abs": float(np.abs(diff[:, i]).max()),
            }
            for i, t in enumerate(TOLERANCES)
        },
        "reference_commit": "1f805cea446805e559badc80dd27f34175e4173d (google-deepmind/surface-distance)",
        "machine": f"{platform.processor() or platform.machine()}, python {platform.python_version()}",
    }
    if args.flare22_script is not None:
        summary["flare22_script"] = flare22_script_check(args.flare22_script)
    if not args.no_timing:
        summary["cpu_seconds_512x512x100_13_organs"] = time_case()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "results.json").write_text(json.dumps({"summary": summary, "cases": rows}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    if args.write_test_data:
        keep = [
            {k: r[k] for k in ("seed", "shape", "spacing", "gt_voxels", "pred_voxels", "reference")}
            for r in rows[: args.test_cases]
        ]
        TEST_DATA.write_text(
            json.dumps(
                {
                    "about": "DeepMind surface_distance (FLARE's SurfaceDice.py) on bench/bench_nsd_reference.py's "
                    "blob_pair(seed); regenerate with that script --write-test-data",
                    "reference_commit": summary["reference_commit"],
                    "tolerances_mm": list(TOLERANCES),
                    "cases": keep,
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
