"""Classical lung masks of a batch of CT volumes (``covseg lungmask``), each in its input's geometry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from covseg.inference.files import BatchReport


def lung_mask_files(
    files: list[Path], output: Path, strict: bool = False, on_done: Callable[[], None] | None = None
) -> BatchReport:
    """Write ``<name>.nii.gz`` (uint8, the input's shape and affine) per volume and ``lungs.csv`` with the
    lung volume in ml; a file that is not a CT volume in HU is listed as failed and the others go on."""
    from covseg.data.imageio import is_volume, read_volume, stem_of, write_volume
    from covseg.data.intensity import HU, space_of
    from covseg.errors import DataError
    from covseg.inference.files import for_each_file, write_failures
    from covseg.transforms.intensity import SPACE_WORDS
    from covseg.transforms.lungmask import lung_mask
    from covseg.transforms.volume import voxel_volume_ml
    from covseg.utils.outputs import OutputFolder, write_csv

    folder = OutputFolder(
        output, "lungmask", files, owned=(*(f"{stem_of(f)}.nii.gz" for f in files), "lungs.csv", "failed.txt")
    )  # no legacy name: a lungs.csv without the marker may be anyone's
    folder.prepare()

    def work(path: Path) -> dict:
        if not is_volume(path):
            raise DataError("not a CT volume (NIfTI file or DICOM series)", path)
        volume, _, affine = read_volume(path)
        space = space_of(path, volume)
        if space != HU:
            raise DataError(f"volume holds {SPACE_WORDS[space]}, not HU: the lung mask needs HU", path)
        mask = lung_mask(volume, affine)
        out = write_volume(folder.check(output / f"{stem_of(path)}.nii.gz"), mask, affine, dtype="uint8")
        return {
            "input": str(path),
            "mask": str(out),
            "lung_ml": round(float(mask.sum()) * voxel_volume_ml(affine), 2),
        }

    report = for_each_file(files, work, strict=strict, on_done=on_done)
    if report.written:
        write_csv(
            output / "lungs.csv", report.written, ["input", "mask", "lung_ml", "seconds", "cpu_seconds"]
        )
    write_failures(output, report)
    return report
