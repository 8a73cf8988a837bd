"""Volumes cut into slice images (``NAME_<k>.<ext>``, k = slice number) stacked back, and the way in.

Several public COVID sets ship CT volumes as numbered axial slices (Semi-Inf-Net's unlabelled
``Data-1_<volume>_<k>.jpg``). Stacked in ``k`` order they are volumes again. Slices are taken as
shown on screen in the radiological convention (covseg's own slice convention, see
:func:`covseg.data.convert.axial_slices`): columns run to the patient's left, rows to posterior,
and ``k`` grows superior. The stacked array is ``(X, Y, Z) = (columns, rows, k)`` with the affine
``diag(-sx, -sy, sz)``, so ``covseg data convert --to folder`` cuts it back into the same slices.
The slice spacing of such sets is unknown: it is a parameter (1 mm by default). Slices cropped one
by one (Semi-Inf-Net's are: each slice has its own lung crop) differ in size; ``pad`` centres each
on the largest size with zeros, which stacks them only approximately aligned.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from covseg.data.imageio import IMAGE_SUFFIXES, read_image, read_mask, stem_of, suffix_of, write_volume
from covseg.data.intensity import DISPLAY, nifti_marker
from covseg.errors import DataError

SLICE_NAME = re.compile(r"^(?P<name>.+)_(?P<k>-?\d+)$")
DEFAULT_SPACING = (1.0, 1.0, 1.0)


def stack_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """Affine of a stacked volume: columns → patient left, rows → posterior, slices → superior."""
    return np.diag([-float(spacing[0]), -float(spacing[1]), float(spacing[2]), 1.0])


@dataclass
class SliceStack(os.PathLike):
    """The slice files of one volume, in slice order; ``os.fspath`` gives ``folder/NAME`` (its stem)."""

    name: str
    files: list[Path]
    spacing: tuple[float, float, float] = DEFAULT_SPACING
    numbers: list[int] = field(default_factory=list)
    pad: bool = False

    def __fspath__(self) -> str:
        return str(self.files[0].parent / self.name)

    def __str__(self) -> str:
        return self.__fspath__()

    def read_volume(self) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
        """``(volume (X, Y, Z) float32, spacing, affine)``, grey values as stored (0..255 for JPEG)."""
        slices = [read_image(f, channels=1) for f in self.files]
        return _stack(slices, self.files, self.pad), tuple(self.spacing), stack_affine(self.spacing)

    def read_labels(self, mask_dir: Path) -> np.ndarray | None:
        """The stacked masks of ``mask_dir/<slice stem>.*`` (all slices need one), or None when none exist."""
        masks = []
        for f in self.files:
            found = next((mask_dir / f"{f.stem}{s}" for s in IMAGE_SUFFIXES if (mask_dir / f"{f.stem}{s}").is_file()), None)
            masks.append(found)
        if not any(masks):
            return None
        missing = next((f for f, m in zip(self.files, masks) if m is None), None)
        if missing is not None:
            raise DataError(f"slice has no mask in {mask_dir} while other slices of {self.name} do", missing)
        return _stack([read_mask(m) for m in masks], masks, self.pad).astype(np.uint8)  # type: ignore[arg-type]


def _stack(slices: list[np.ndarray], files: list, pad: bool = False) -> np.ndarray:
    shape = slices[0].shape
    if pad:
        shape = tuple(max(a.shape[i] for a in slices) for i in range(2))
        slices = [np.pad(a, [((n - m) // 2, n - m - (n - m) // 2) for n, m in zip(shape, a.shape)]) for a in slices]
    for arr, f in zip(slices, files):
        if arr.shape != shape:
            raise DataError(
                f"slice size {arr.shape[1]}×{arr.shape[0]} differs from the first slice's {shape[1]}×{shape[0]} "
                "(slices cropped one by one: stack with --pad)",
                f,
            )
    return np.ascontiguousarray(np.stack(slices, axis=-1).transpose(1, 0, 2))


def find_stacks(folder: str | Path, spacing: tuple[float, float, float] = DEFAULT_SPACING, pad: bool = False) -> list[SliceStack]:
    """The slice stacks of a folder: files ``NAME_<k>.<image ext>`` grouped by NAME, sorted by ``k``.

    A gap in the numbers (a missing slice) is refused, naming the volume: the stack's geometry
    would be wrong. Files not named ``NAME_<k>`` are ignored.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("not a folder", folder)
    groups: dict[str, list[tuple[int, Path]]] = {}
    for path in folder.iterdir():
        if not path.is_file() or suffix_of(path) not in IMAGE_SUFFIXES:
            continue
        match = SLICE_NAME.match(stem_of(path))
        if match:
            groups.setdefault(match["name"], []).append((int(match["k"]), path))
    stacks = []
    for name in sorted(groups):
        items = sorted(groups[name])
        numbers = [k for k, _ in items]
        if numbers[0] < 0:
            raise DataError(f"volume {name}: slice number {numbers[0]} is negative (slices are numbered from 0 or 1)", items[0][1])
        if len(set(numbers)) != len(numbers):
            raise DataError(f"volume {name}: two slices share a number", folder)
        gap = next((a + 1 for a, b in itertools.pairwise(numbers) if b != a + 1), None)
        if gap is not None:
            raise DataError(f"volume {name}: slice {gap} is missing (slices must be contiguous)", folder)
        stacks.append(SliceStack(name, [p for _, p in items], tuple(float(s) for s in spacing), numbers, pad))  # type: ignore[arg-type]
    return stacks


def stack_folder(
    src: str | Path,
    dst: str | Path,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    progress: Callable[[int, int], None] | None = None,
    pad: bool = False,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Stack ``src`` (slices, or ``images/`` with optional ``masks/``) into ``dst/images/NAME.nii.gz``
    (+ ``dst/labels/NAME.nii.gz``). Returns the written files and the volumes that failed (with why);
    a failing volume does not stop the others."""
    src, dst = Path(src), Path(dst)
    image_dir = src / "images" if (src / "images").is_dir() else src
    mask_dir = next((src / d for d in ("masks", "labels") if (src / d).is_dir()), None)
    stacks = find_stacks(image_dir, spacing, pad)
    if not stacks:
        raise DataError("no slices named NAME_<number>.<png|jpg|tif|bmp> to stack", image_dir)
    written: list[Path] = []
    failed: list[tuple[str, str]] = []
    for i, stack in enumerate(stacks):
        try:
            volume, _, affine = stack.read_volume()
            labels = stack.read_labels(mask_dir) if mask_dir is not None else None
            dtype = "uint8" if volume.min() >= 0 and volume.max() <= 255 and np.all(volume == np.round(volume)) else "float32"
            marker = nifti_marker(DISPLAY)  # slices are display values, whatever dtype they are stored in
            written.append(write_volume(dst / "images" / f"{stack.name}.nii.gz", volume, affine, dtype=dtype, descrip=marker))
            if labels is not None:
                written.append(write_volume(dst / "labels" / f"{stack.name}.nii.gz", labels, affine, dtype="uint8"))
        except DataError as exc:
            failed.append((stack.name, str(exc)))
        if progress is not None:
            progress(i + 1, len(stacks))
    return written, failed
