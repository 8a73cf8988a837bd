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
    from covseg.api import lung_masks
    from covseg.cli._batch import finish, progress_bar
    from covseg.inference.predictor import list_inputs

    with progress_bar("lung masks", len(list_inputs(input, series_folders=True)), quiet) as advance:
        report = lung_masks(input, output, strict=strict, on_done=advance)
    finish(report, output, f"{len(report.written)} lung masks written to {output}")
