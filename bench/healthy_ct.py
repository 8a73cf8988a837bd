"""Infection-free CT for issue 24 §5: training negatives from one contiguous half, false positives on the other.

The only CT without COVID in the data is ``$COVSEG_DATA/ct3d_totalseg_example`` (a 122 × 101 × 30
crop at 3 mm through the lung bases; TotalSegmentator lobes 10–14 mark 11 slices with lung). Its
lung slices are split along z into two contiguous halves: the lower one (``TRAIN_HALF``) may train a
model as negatives (empty masks, ``data.extra``), the upper one (``HELD_OUT_HALF``) is never trained
on and is where the false-positive volume is counted. Neighbouring slices 3 mm apart are not
independent, so the held-out half is the whole upper block, not every other slice.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

CASE = Path("ct3d_totalseg_example") / "images" / "example_ct_sm.nii.gz"
LOBES = (10, 11, 12, 13, 14)


def data_root() -> Path:
    from covseg.utils.paths import data_root as root

    return root()


def lung_slices(reference: np.ndarray) -> list[int]:
    """z indices (last axis) holding any reference lung voxel."""
    return [z for z in range(reference.shape[-1]) if reference[..., z].any()]


def halves(reference: np.ndarray) -> tuple[list[int], list[int]]:
    """The lung slices split into a lower (trainable) and an upper (held-out) contiguous block."""
    z = lung_slices(reference)
    cut = len(z) // 2
    return z[:cut], z[cut:]


def reference_lungs(case: Path) -> np.ndarray:
    import nibabel as nib

    return np.isin(np.asarray(nib.load(str(case).replace("/images/", "/masks/")).dataobj), LOBES)


def prepare_negatives(dst: Path) -> Path:
    """The lower half's lung slices in the lung window as a folder dataset (images/ only are read:
    the run uses them with ``masks: empty``); made once, the data folder is never written."""
    if (dst / "images").is_dir():
        return dst
    from covseg.data.convert import convert_dataset

    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    convert_dataset(data_root() / "ct3d_totalseg_example", tmp, "folder", window="lung", labels=list(LOBES), skip_empty=True)
    train, _ = halves(reference_lungs(data_root() / CASE))
    keep = {f"_{z:03d}" for z in train}
    for sub in ("images", "masks"):
        for f in (tmp / sub).iterdir():
            if not any(f.stem.endswith(k) for k in keep):
                f.unlink()
    (tmp / "slices.csv").unlink(missing_ok=True)
    if len(list((tmp / "images").iterdir())) != len(train):
        raise RuntimeError(f"expected {len(train)} negative slices in {tmp}")
    tmp.rename(dst)
    return dst


def false_positives(predictor: Any) -> dict[str, Any]:
    """Infected volume (ml) a predictor marks on the infection-free CT, with and without ``lungs_only``,
    in the held-out half, the trainable half and the whole crop."""
    from covseg.data.imageio import read_volume
    from covseg.inference.options import PredictOptions

    case = data_root() / CASE
    volume, spacing, affine = read_volume(case)
    reference = reference_lungs(case)
    train, held_out = halves(reference)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out: dict[str, Any] = {"held_out_slices": held_out, "train_half_slices": train}
    for name, lungs_only in (("lungs_only", True), ("plain", False)):
        labels = predictor.predict_array(volume, affine, PredictOptions(lungs_only=lungs_only)).labels > 0
        out[name] = {
            "held_out_ml": round(float(labels[..., held_out].sum()) * voxel_ml, 3),
            "train_half_ml": round(float(labels[..., train].sum()) * voxel_ml, 3),
            "whole_ml": round(float(labels.sum()) * voxel_ml, 3),
        }
    out["held_out_lung_ml"] = round(float(reference[..., held_out].sum()) * voxel_ml, 3)
    return out
