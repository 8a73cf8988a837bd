"""``covseg lungmask``: a classical lung mask (threshold + morphology) of CT volumes, in each input's geometry."""

from __future__ import annotations

from pathlib import Path

import typer


def lungmask(
    input: Path = typer.Option(..., "--input", "-i", help="NIfTI file, DICOM series folder, or a folder of them."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder: <name>.nii.gz masks and lungs.csv."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad input."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Segment the lungs of CT volumes in HU without a network (see ``covseg.transforms.lungmask``).

    Writes one uint8 mask per volume with the input's shape and affine, and ``lungs.csv`` with the
    lung volume in ml; a volume that cannot be read is listed and the others go on.
    """

    from covseg.cli._batch import finish, progress_bar
    from covseg.data.imageio import is_volume, read_volume, stem_of, write_volume
    from covseg.data.intensity import HU, space_of
    from covseg.errors import DataError
    from covseg.inference.batch import for_each_file, write_failures
    from covseg.inference.predictor import list_inputs
    from covseg.transforms.intensity import SPACE_WORDS
    from covseg.transforms.lungmask import lung_mask
    from covseg.transforms.volume import voxel_volume_ml
    from covseg.utils.outputs import OutputFolder, write_csv

    files = list_inputs(input, series_folders=True)
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
        return {"input": str(path), "mask": str(out), "lung_ml": round(float(mask.sum()) * voxel_volume_ml(affine), 2)}

    with progress_bar("lung masks", len(files), quiet) as advance:
        report = for_each_file(files, work, strict=strict, on_done=advance)
    if report.written:
        write_csv(output / "lungs.csv", report.written, ["input", "mask", "lung_ml", "seconds", "cpu_seconds"])
    write_failures(output, report)
    finish(report, output, f"{len(report.written)} lung masks written to {output}")
