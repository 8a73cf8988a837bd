"""Hostile input, round 2 (issue 25): scans read in their own units, geometry kept, EXIF orientation,
text files, and the smaller refusals. Each test fails on the code before the fix it guards.

Units: one rule (:func:`covseg.data.intensity.intensity_space`) decides whether an input holds HU,
0..255 display values or 0..1 values; the shipped 2D CT model must then give the same mask for
the same slice however it is stored.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from covseg.data.imageio import read_mask, read_volume, write_volume

CT_MODEL = "covid-ct-infection"  # the shipped 2D CT model, trained on 0..255 lung-window slices
CT_MULTICLASS_MODEL = "covid-ct-multiclass"  # the shipped 2D multi-class CT model, same input space


def run_cli(*args) -> tuple[int, str]:
    """``covseg ARGS`` in-process: ``(exit code, stderr + stdout)``; a traceback fails the test."""
    import contextlib
    import io

    from covseg.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    text = err.getvalue() + out.getvalue()
    assert "Traceback" not in text, text
    return code, text


def write_ct_dicom(path: Path, hu: np.ndarray, modality: str = "CT", position=(0.0, 0.0, 0.0), orientation=(1, 0, 0, 0, 1, 0),
                   spacing=(0.8, 0.8), series: str | None = None, number: int = 1) -> Path:  # fmt: skip
    """One DICOM slice storing ``hu`` (rows, columns) as int16 with intercept -1024."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series or generate_uid()
    ds.Modality = modality
    ds.Rows, ds.Columns = hu.shape
    ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
    ds.SliceThickness = 1.0
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.InstanceNumber = number
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.RescaleIntercept, ds.RescaleSlope = -1024.0, 1.0
    ds.PixelData = (np.rint(hu) + 1024).astype(np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# ------------------------------------------------------------------------------------------ units
def test_intensity_space_rule_reads_headers_then_values(tmp_path, real_data):
    """The one rule: real HU NIfTI, real 0..255 JPEG slices, and headers that win over ambiguous values."""
    from covseg.data.intensity import intensity_space, space_of
    from covseg.data.stack import stack_folder

    ct = real_data / "ct3d_totalseg_example" / "images" / "example_ct_sm.nii.gz"
    assert space_of(ct, read_volume(ct)[0]) == "hu"
    jpeg = real_data / "covid_semiseg_infnet" / "train" / "images" / "0.jpg"
    assert space_of(jpeg, np.asarray(Image.open(jpeg), np.float32)) == "display"
    # values alone
    assert intensity_space(np.array([-1000.0, 40.0])) == "hu"
    assert intensity_space(np.array([0.0, 0.25, 0.8], np.float32)) == "unit"
    assert intensity_space(np.array([0.0, 1.0, 200.0], np.float32)) == "display"
    # a nearly black colour stack: grey values 0..0.3, stored by covseg as float; its marker says display
    src = tmp_path / "slices"
    src.mkdir()
    for k in (1, 2):
        rgb = np.zeros((8, 8, 3), np.uint8)
        rgb[..., 0] = np.eye(8, dtype=np.uint8)
        Image.fromarray(rgb).save(src / f"v_{k}.png")
    written, failed = stack_folder(src, tmp_path / "stacked")
    assert not failed
    volume = read_volume(written[0])[0]
    assert intensity_space(volume) == "unit"  # the values alone would misread it
    assert space_of(written[0], volume) == "display"
    # an unscaled uint8 NIfTI is display; a float NIfTI within 0..1 is unit
    write_volume(tmp_path / "u8.nii.gz", np.eye(4, dtype=np.uint8)[..., None].repeat(2, -1), np.eye(4), dtype="uint8")
    assert space_of(tmp_path / "u8.nii.gz", read_volume(tmp_path / "u8.nii.gz")[0]) == "display"
    unit = np.random.default_rng(0).random((4, 4, 2)).astype(np.float32)
    write_volume(tmp_path / "unit.nii.gz", unit, np.eye(4))
    assert space_of(tmp_path / "unit.nii.gz", unit) == "unit"
    # a CT DICOM whose HU all lie in 0..255 (soft tissue only) is still HU: the header says so
    dcm = write_ct_dicom(tmp_path / "soft.dcm", np.full((6, 6), 40.0))
    assert space_of(dcm, np.full((6, 6), 40.0)) == "hu"


def _jcs_stack(real_data: Path, folder: Path, count: int = 3) -> Path:
    """``count`` real 512² CT slices (0..255 lung-window PNGs) named as one volume's slices."""
    folder.mkdir(parents=True)
    for k in range(count):
        shutil.copy(real_data / "covid19_ct100_jcs" / "images" / f"{k + 1:04d}.png", folder / f"vol_{k + 1}.png")
    return folder


def test_stacked_display_volume_predicts_like_its_slices(tmp_path, real_data):
    """covseg's own ``data convert --stack`` output (0..255) is not windowed as HU: the 2D CT model gives
    the stacked volume exactly the masks it gives the slice images (before: 170k vs 104k voxels)."""
    from covseg.transforms.orientation import volume_to_slices

    slices = _jcs_stack(real_data, tmp_path / "slices")
    assert run_cli("data", "convert", slices, tmp_path / "stacked", "--stack")[0] == 0
    nifti = tmp_path / "stacked" / "images" / "vol.nii.gz"
    code, text = run_cli("predict", "-m", CT_MODEL, "-i", nifti, "-o", tmp_path / "pred_vol", "-q", "--no-overlays")
    assert code == 0, text
    code, text = run_cli("predict", "-m", CT_MODEL, "-i", slices, "-o", tmp_path / "pred_2d", "-q", "--no-overlays")
    assert code == 0, text
    labels, _, affine = read_volume(tmp_path / "pred_vol" / "masks" / "vol.nii.gz")
    by_volume = volume_to_slices(labels, affine)
    by_image = np.stack([read_mask(tmp_path / "pred_2d" / "masks" / f"vol_{k + 1}.png") for k in range(3)])
    assert by_image.sum() > 1000  # the slices do hold infection
    np.testing.assert_array_equal(by_volume > 0, by_image > 0)


def test_windowed_nifti_and_single_ct_dicom_predict_like_hu(tmp_path, real_data):
    """The same CT as HU, as a lung-windowed 0..1 NIfTI, and one slice as a single CT DICOM file (HU):
    the 2D model sees the same intensities (before: 0 voxels for the windowed NIfTI; the DICOM unwindowed)."""
    from covseg.api import predict
    from covseg.transforms.orientation import volume_to_slices

    ct = real_data / "ct3d_totalseg_example" / "images" / "example_ct_sm.nii.gz"
    hu, _, affine = read_volume(ct)
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(ct, inputs / "hu.nii.gz")
    unit = np.clip((hu + 1250.0) / 1500.0, 0.0, 1.0).astype(np.float32)  # lung-windowed by someone else: 0..1 floats
    write_volume(inputs / "unit.nii.gz", unit, affine)
    hu_slices = volume_to_slices(hu, affine)
    z = 12
    dcm = write_ct_dicom(tmp_path / "dcm" / "slice.dcm", hu_slices[z])  # alone: a folder with a .dcm is a series
    # The multi-class model: the retrained infection model (trained with infection-free negatives from this very CT)
    # marks only a few voxels here, too few to compare the three encodings; the multi-class model marks thousands.
    for source in (inputs, dcm):
        report = predict(CT_MULTICLASS_MODEL, source, tmp_path / "out", overlays=False, probs=False)
        assert not report.failed and report.written, report.failed
    masks = tmp_path / "out" / "masks"
    ref = volume_to_slices(read_volume(masks / "hu.nii.gz")[0], affine) > 0
    windowed = volume_to_slices(read_volume(masks / "unit.nii.gz")[0], affine) > 0
    assert ref.sum() > 100, ref.sum()
    print("infected voxels: HU", int(ref.sum()), "0..1", int(windowed.sum()), "DICOM slice", int((read_mask(masks / "slice.png") > 0).sum()), "vs", int(ref[z].sum()))
    assert (ref != windowed).sum() <= 0.01 * ref.sum()  # float32 rounding of the window only
    np.testing.assert_array_equal(read_mask(masks / "slice.png") > 0, ref[z])


def test_convert_keeps_display_volumes_and_lungmask_refuses_them(tmp_path, real_data):
    """``data convert --to folder`` (lung window by default) gives a 0..255 volume's slices back unchanged,
    and ``lungmask`` refuses it in one line, both through the one rule."""
    slices = _jcs_stack(real_data, tmp_path / "slices", count=2)
    assert run_cli("data", "convert", slices, tmp_path / "stacked", "--stack")[0] == 0
    code, text = run_cli("data", "convert", tmp_path / "stacked", tmp_path / "back", "--to", "folder")
    assert code == 0, text
    back = sorted((tmp_path / "back" / "images").glob("*.png"))
    assert len(back) == 2
    for k, path in enumerate(back):
        original = np.asarray(Image.open(slices / f"vol_{k + 1}.png"))
        np.testing.assert_array_equal(np.asarray(Image.open(path)), original)
    code, text = run_cli("lungmask", "-i", tmp_path / "stacked" / "images" / "vol.nii.gz", "-o", tmp_path / "lungs")
    assert code == 1 and "0..255 display values, not HU" in text and "vol.nii.gz" in text


def test_hu_model_refuses_display_image(tmp_path):
    """A 2D run that reads HU (``preprocessing.window``) refuses a 0..255 image instead of windowing it as HU."""
    from covseg.errors import DataError
    from covseg.transforms.preprocess import Preprocessing

    pre = Preprocessing(size=None, window=(-1250.0, 250.0))
    with pytest.raises(DataError, match=r"0\.\.255 display values, but this model reads CT in HU"):
        pre.normalise(np.full((4, 4), 128.0, np.float32), "display")
    out = pre.normalise(np.full((4, 4), -500.0, np.float32), "hu")
    np.testing.assert_allclose(out, (0.5 - 0.5) / 0.25)  # -500 HU is mid-window


def test_nifti_marker_is_read_back(tmp_path):
    from covseg.data.intensity import header_space, nifti_marker

    write_volume(tmp_path / "m.nii.gz", np.full((3, 3, 2), 300.0, np.float32), np.eye(4), descrip=nifti_marker("display"))
    assert nib.load(tmp_path / "m.nii.gz").header["descrip"].tobytes().startswith(b"covseg:intensity=display")
    assert header_space(tmp_path / "m.nii.gz") == "display"


# --------------------------------------------------------------------------------------- geometry
def _tilted_series(folder: Path, tilt_deg: float = 20.0, n: int = 6, dz: float = 2.5, spacing=(0.8, 0.8)) -> list[Path]:
    """An axial series acquired with a gantry tilt: each slice origin moves ``dz`` along z and
    ``dz·tan(tilt)`` along y (LPS), while every slice stays axial (ImageOrientationPatient unchanged)."""
    from pydicom.uid import generate_uid

    series = generate_uid()
    shift = dz * np.tan(np.radians(tilt_deg))
    hu = np.random.default_rng(0).integers(-1000, 400, size=(n, 10, 12)).astype(np.float32)
    files = []
    for k in range(n):
        position = (-50.0, -40.0 + k * shift, 10.0 + k * dz)
        files.append(write_ct_dicom(folder / f"IM{k:03d}.dcm", hu[k], position=position, spacing=spacing, series=series, number=k + 1))
    return files


def test_gantry_tilt_is_kept_in_the_affine_and_volumes_use_the_determinant(tmp_path):
    """The affine's slice axis is the step between slice origins (not the normal), so the top slice lands
    where the scanner put it (before: off by dz·tan(tilt)·(n-1)); voxel volume is |det|, not the product."""
    from covseg.data.dicom import read_dicom_series

    files = _tilted_series(tmp_path / "tilted", tilt_deg=20.0, n=6)
    volume, spacing, affine = read_dicom_series(tmp_path / "tilted")
    import pydicom

    last = np.array(pydicom.dcmread(files[-1]).ImagePositionPatient, dtype=np.float64)
    top = affine @ np.array([0.0, 0.0, 5.0, 1.0])
    np.testing.assert_allclose(top[:3], [-last[0], -last[1], last[2]], atol=1e-6)  # RAS = LPS with x, y negated
    assert volume.shape == (12, 10, 6)
    assert spacing[2] == pytest.approx(2.5 / np.cos(np.radians(20.0)))
    from covseg.transforms.volume import voxel_volume_ml
  # the step's length, as nibabel's zooms
    assert voxel_volume_ml(affine) == pytest.approx(0.8 * 0.8 * 2.5 / 1000.0)  # slab thickness along the normal
    assert float(np.prod(spacing)) / 1000.0 > 1.06 * voxel_volume_ml(affine)  # what the product would claim


def test_series_with_mixed_pixel_spacing_is_refused(tmp_path):
    from covseg.data.dicom import read_dicom_series
    from covseg.errors import DataError

    files = _tilted_series(tmp_path / "mixed", tilt_deg=0.0, n=4)
    import pydicom

    ds = pydicom.dcmread(files[2])
    ds.PixelSpacing = [0.9, 0.9]
    ds.save_as(files[2])
    with pytest.raises(DataError, match=r"PixelSpacing 0\.9×0\.9 mm of slice IM002\.dcm differs from the first slice's 0\.8×0\.8 mm") as err:
        read_dicom_series(tmp_path / "mixed")
    assert err.value.path == str(files[2])
    code, text = run_cli("lungmask", "-i", tmp_path / "mixed", "-o", tmp_path / "lungs")
    assert code == 1 and "PixelSpacing" in text and "IM002.dcm" in text


def test_sheared_volumes_in_ml_use_the_determinant(tmp_path, real_data):
    """``lungmask`` and ``evaluate`` give ml from |det(affine)|: a 27° shear adds 12.2 % to the product of sizes."""
    import csv

    ct = real_data / "ct3d_totalseg_example" / "images" / "example_ct_sm.nii.gz"
    img = nib.load(ct)
    sheared = img.affine.copy()
    sheared[1, 2] = sheared[2, 2] * np.tan(np.radians(27.0))  # slices slide along y, as a gantry tilt does
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), sheared), tmp_path / "in" / "ct.nii.gz")
    det_ml = abs(np.linalg.det(sheared[:3, :3])) / 1000.0
    assert np.prod(nib.load(tmp_path / "in" / "ct.nii.gz").header.get_zooms()) / 1000.0 == pytest.approx(1.1223 * det_ml, rel=1e-3)
    code, text = run_cli("lungmask", "-i", tmp_path / "in" / "ct.nii.gz", "-o", tmp_path / "lungs", "-q")
    assert code == 0, text
    mask = read_volume(tmp_path / "lungs" / "ct.nii.gz")[0]
    row = next(csv.DictReader((tmp_path / "lungs" / "lungs.csv").open()))
    assert mask.sum() > 1000 and float(row["lung_ml"]) == pytest.approx(mask.sum() * det_ml, abs=0.01)
    # evaluate: the mask against itself, in the sheared grid
    for name in ("pred", "gt"):
        (tmp_path / name).mkdir()
        shutil.copy(tmp_path / "lungs" / "ct.nii.gz", tmp_path / name / "ct.nii.gz")
    code, text = run_cli("evaluate", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--out", tmp_path / "eval")
    assert code == 0, text
    row = next(csv.DictReader((tmp_path / "eval" / "per_case.csv").open()))
    assert float(row["gt_ml"]) == pytest.approx(mask.sum() * det_ml, rel=1e-6)


# ------------------------------------------------------------------------------------ EXIF orientation
def _sideways_jpeg(path: Path) -> np.ndarray:
    """A 20×30 JPEG with a bright block at the top left, tagged EXIF Orientation 6 (viewers turn it 90° clockwise)."""
    pixels = np.zeros((20, 30), np.uint8)
    pixels[:6, :8] = 250
    im = Image.fromarray(pixels)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(path, quality=100, exif=exif.tobytes())
    return pixels


def test_exif_orientation_is_applied_and_checked(tmp_path):
    from covseg.data.imageio import image_size, read_image

    path = tmp_path / "data" / "images" / "a.jpg"
    path.parent.mkdir(parents=True)
    stored = _sideways_jpeg(path)
    image = read_image(path)
    assert image.shape == (30, 20) and image_size(path) == (30, 20)  # upright, as a viewer shows it
    np.testing.assert_allclose(image, np.rot90(stored, -1), atol=12)  # the block is now at the top right
    assert image[:8, -6:].mean() > 200 and image[:6, :8].mean() < 50
    # a mask drawn on the stored (sideways) pixels no longer fits: data check says so
    (tmp_path / "data" / "masks").mkdir()
    Image.fromarray((stored > 128).astype(np.uint8) * 255).save(tmp_path / "data" / "masks" / "a.png")
    code, text = run_cli("data", "check", tmp_path / "data")
    assert code != 0, text
    assert "mask is 20×30 but image" in text and "30×20 after its EXIF orientation" in text


# ------------------------------------------------------------------------------------------ text files
def test_text_files_with_a_bom_and_duplicate_captions(tmp_path):
    """A UTF-8 BOM (Excel, Notepad) no longer hides the first image's caption; an image listed twice with
    different captions is refused in one line naming the file and the image, not silently overwritten."""
    from covseg.data.text_sources import read_text_mapping
    from covseg.errors import DataError

    tsv = tmp_path / "captions.txt"
    tsv.write_bytes("\ufeffa.png\tbilateral opacity\nb.png\tleft lower lung\n".encode())
    table = read_text_mapping(tsv)
    assert table.lookup("images/a.png").text == "bilateral opacity"
    as_json = tmp_path / "captions.json"
    as_json.write_bytes('\ufeff{"a.png": "right upper lung"}'.encode())
    assert read_text_mapping(as_json).lookup("a.png").text == "right upper lung"
    twice = tmp_path / "twice.txt"
    twice.write_text("a.png\tbilateral opacity\nb.png\tleft lung\na.png\tno infection\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row 3: 'a\.png' is listed twice with different texts") as err:
        read_text_mapping(twice)
    assert err.value.path == str(twice)


# ------------------------------------------------------------------------------------------ smaller ones
def test_convert_labels_out_of_range_or_absent_are_refused(tmp_path, real_data):
    """``--labels 999`` cannot occur in a uint8 label volume: refused up front (before: empty masks written)."""
    ct = real_data / "ct3d_totalseg_example"
    code, text = run_cli("data", "convert", ct, tmp_path / "out", "--to", "folder", "--labels", "999")
    assert code == 2 and "bad --labels '999'" in text and "1..255" in text
    assert not (tmp_path / "out").exists()
    code, text = run_cli("data", "convert", ct, tmp_path / "out2", "--to", "folder", "--labels", "200")
    assert code == 1 and "none of --labels 200 occurs in this mask" in text and "example_ct_sm" in text
