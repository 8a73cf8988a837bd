"""``covseg predict --lungs-only``: infected volume with and without the lung restriction, and its cost.

Two measurements, written to ``bench/results/lungs_only/lungs_only.json`` (numbers only, no image):

- **Real CT** (``$COVSEG_DATA/ct3d_totalseg_example``, not a COVID case): the zoo model
  ``covid-ct-infection`` predicts the volume once; the infected mL is counted without the
  restriction and with it at several margins, beside the classical lung mask's volume, its Dice
  with the TotalSegmentator reference lungs (lobes 10–14: a model's output, not manual truth), the
  share of those reference lungs the restricted region covers, and the infected mL inside and
  outside them. Wall time: the lung mask alone, and ``api.predict`` end to end with and without
  ``lungs_only`` (medians of ``--rounds``, interleaved, since the machine is shared), and the
  distance from the lung mask of the voxels the restriction removes.
- **Full-size timing**: the lung mask and its margin on a 512 × 512 × 100 CT phantom.
- **3D phantoms** (``covseg.data.synthetic3d``: lesions biased to the lung periphery, true lungs
  known): the share of ground-truth infection voxels, and of consolidation voxels, that the region
  (lung mask grown by each margin) keeps. This does not depend on any model: it is what
  ``--lungs-only`` can cost a perfect prediction.

    COVSEG_THREADS=1 nice -n 19 python bench/bench_lungs_only.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np

from cv_common import cpu_name

OUT = Path(__file__).parent / "results" / "lungs_only"
MARGINS = (0.0, 3.0, 5.0, 10.0, 15.0, 20.0)
LOBES = (10, 11, 12, 13, 14)


def real_ct(data: Path, rounds: int) -> dict:
    import nibabel as nib

    from covseg.api import predict
    from covseg.data.imageio import read_volume
    from covseg.engine.runtime import Runtime
    from covseg.inference.loading import load_predictor
    from covseg.inference.postprocess import lungs_of, zero_outside
    from covseg.transforms.lungmask import dilate_mm

    case = data / "ct3d_totalseg_example" / "images" / "example_ct_sm.nii.gz"
    volume, spacing, affine = read_volume(case)
    reference = np.isin(np.asarray(nib.load(str(case).replace("/images/", "/masks/")).dataobj), LOBES)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    predictor = load_predictor("covid-ct-infection", runtime=Runtime.create("cpu", "off"))
    probs = predictor.predict_array(volume, affine).probs
    lungs = lungs_of(volume, affine)
    plain = probs >= predictor.threshold
    from scipy import ndimage

    removed_mm = ndimage.distance_transform_edt(~lungs, sampling=spacing)[plain & ~lungs]

    def ml(mask: np.ndarray) -> float:
        return round(float(mask.sum()) * voxel_ml, 3)

    by_margin = {}
    for margin in MARGINS:
        region = dilate_mm(lungs, affine, margin)
        kept = zero_outside(probs, region, 1) >= predictor.threshold
        by_margin[f"{margin:g}"] = {
            "infected_ml": ml(kept),
            "infected_ml_inside_reference_lungs": ml(kept & reference),
            "infected_ml_outside_reference_lungs": ml(kept & ~reference),
            "region_ml": ml(region),
            "reference_lungs_covered": round(float((region & reference).sum() / reference.sum()), 4),
        }

    mask_s, plain_s, lungs_s = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            t0 = time.perf_counter()
            lungs_of(volume, affine)
            mask_s.append(time.perf_counter() - t0)
            for flag, times in ((False, plain_s), (True, lungs_s)):
                t0 = time.perf_counter()
                predict("covid-ct-infection", case, Path(tmp) / f"{r}_{flag}", overlays=False, device="cpu", lungs_only=flag)
                times.append(time.perf_counter() - t0)
    return {
        "case": str(case.relative_to(data)),
        "shape": list(volume.shape),
        "spacing_mm": [float(s) for s in spacing],
        "model": "covid-ct-infection",
        "infected_ml_without_lungs_only": ml(plain),
        "infected_ml_without_lungs_only_inside_reference_lungs": ml(plain & reference),
        # None when the model marks nothing outside the lung mask (nothing for the restriction to remove)
        "infected_outside_lung_mask_distance_mm_min_median": (
            [round(float(removed_mm.min()), 1), round(float(np.median(removed_mm)), 1)] if removed_mm.size else None
        ),
        "lungs_only_by_margin_mm": by_margin,
        "lung_mask_ml": ml(lungs),
        "reference_lungs_ml": ml(reference),
        "lung_mask_dice_vs_reference": round(float(2 * (lungs & reference).sum() / (lungs.sum() + reference.sum())), 4),
        "lung_mask_seconds_median": round(statistics.median(mask_s), 3),
        "predict_seconds_median": round(statistics.median(plain_s), 3),
        "predict_lungs_only_seconds_median": round(statistics.median(lungs_s), 3),
        "rounds": rounds,
    }


def phantoms(n: int) -> dict:
    from covseg.data.synthetic3d import make_phantom_volume
    from covseg.transforms.lungmask import dilate_mm, lung_mask

    kept = {f"{m:g}": {"infection": [0, 0], "consolidation": [0, 0]} for m in MARGINS}
    dice = []
    for seed in range(n):
        ph = make_phantom_volume(1000 + seed)
        lungs = lung_mask(ph.image, ph.affine).astype(bool)
        dice.append(2 * (lungs & (ph.lungs > 0)).sum() / (lungs.sum() + ph.lungs.sum()))
        for m in MARGINS:
            region = dilate_mm(lungs, ph.affine, m)
            for name, truth in (("infection", ph.infection > 0), ("consolidation", ph.classes == 2)):
                kept[f"{m:g}"][name][0] += int((truth & region).sum())
                kept[f"{m:g}"][name][1] += int(truth.sum())
    share = {m: {k: round(a / b, 4) if b else None for k, (a, b) in v.items()} for m, v in kept.items()}
    return {"phantoms": n, "shape": [64, 64, 32], "spacing_mm": [5.0, 5.0, 8.0], "lung_mask_dice_mean": round(float(np.mean(dice)), 4),
            "truth_kept_by_margin_mm": share}


def full_size_timing() -> dict | str:
    """Lung mask and margin on a full-size CT phantom (512 × 512 × 100 at 0.7 × 0.7 × 2.5 mm), the
    one ``bench/bench_volume.py`` caches; skipped when that cache is absent."""
    from covseg.data.imageio import read_volume
    from covseg.inference.postprocess import LUNG_MARGIN_MM, lungs_of
    from covseg.training.cache import default_cache_root
    from covseg.transforms.lungmask import dilate_mm

    case = default_cache_root() / "bench_volume" / "volumes" / "ct_512x512x100.nii.gz"
    if not case.is_file():
        return f"skipped: {case} not found (bench/bench_volume.py writes it)"
    volume, spacing, affine = read_volume(case)
    t0 = time.perf_counter()
    lungs = lungs_of(volume, affine)
    t1 = time.perf_counter()
    dilate_mm(lungs, affine, LUNG_MARGIN_MM)
    t2 = time.perf_counter()
    return {"case": "3D CT phantom 512x512x100 at 0.7x0.7x2.5 mm (covseg.data.synthetic3d)", "lung_mask_seconds": round(t1 - t0, 2),
            f"margin_{LUNG_MARGIN_MM:g}mm_seconds": round(t2 - t1, 2), "lung_ml": round(float(lungs.sum() * np.prod(spacing)) / 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--phantoms", type=int, default=12)
    parser.add_argument("--no-full-size", action="store_true", help="skip the 512 x 512 x 100 timing (about a minute)")
    args = parser.parse_args()
    import torch

    from covseg.utils.paths import data_root

    torch.set_num_threads(int(os.environ.get("COVSEG_THREADS", "1")))
    data = data_root()
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{cpu_name()}, {os.cpu_count()} logical CPUs (shared), torch threads {torch.get_num_threads()}",
        "command": "COVSEG_THREADS=1 nice -n 19 python bench/bench_lungs_only.py",
        "phantoms": phantoms(args.phantoms),
    }
    if (data / "ct3d_totalseg_example").is_dir():
        result["real_ct"] = real_ct(data, args.rounds)
    else:
        result["real_ct"] = f"skipped: {data}/ct3d_totalseg_example not found"
    result["full_size_timing"] = "skipped (--no-full-size)" if args.no_full_size else full_size_timing()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "lungs_only.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
