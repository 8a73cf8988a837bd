"""Image, mask and volume I/O: every mask encoding, 2D DICOM, spacing, DICOM series vs NIfTI."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covseg.data.imageio import (
    analyse_mask,
    image_size,
    read_image,
    read_label_volume,
    read_mask,
    read_spacing_2d,
    read_volume,
    write_image,
    write_mask,
    write_volume,
)
from covseg.errors import DataError

# --- builders -----------------------------------------------------------------------------------


def disk(size: int = 32, radius: int = 9, cy: int = 14, cx: int = 17) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2).astype(np.uint8)


def two_class(size: int = 32) -> np.ndarray:
    labels = disk(size)
    labels[10:14, 12:20] = 2
    return labels


def save(arr: np.ndarray, path: Path, mode: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path, **kw) if mode else Image.fromarray(arr).save(path, **kw)
    return path


def save_palette(labels: np.ndarray, path: Path, palette: list[int] | None = None) -> Path:
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette(palette or [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


# --- masks: every encoding ---------------------------------------------------------------------


def test_palette_mask_gives_indices(tmp_path):
    binary = save_palette(disk(), tmp_path / "p_bin.png", [0, 0, 0, 255, 255, 255])
    multi = save_palette(two_class(), tmp_path / "p_multi.png")
    assert Image.open(binary).mode == "P"
    np.testing.assert_array_equal(read_mask(binary), disk())
    np.testing.assert_array_equal(read_mask(multi), two_class())
    assert analyse_mask(binary).kind == "binary"
    info = analyse_mask(multi)
    assert info.kind == "labels" and info.stored_values == (0, 1, 2)


def test_one_bit_mask(tmp_path):
    path = tmp_path / "bit.png"
    Image.fromarray(disk().astype(bool)).convert("1").save(path)
    assert Image.open(path).mode == "1"
    np.testing.assert_array_equal(read_mask(path), disk())
    assert analyse_mask(path).kind == "binary"


@pytest.mark.parametrize("scale", [1, 255])
def test_grey_binary_masks(tmp_path, scale):
    path = save((disk() * scale).astype(np.uint8), tmp_path / f"g{scale}.png")
    info = analyse_mask(path)
    np.testing.assert_array_equal(info.labels, disk())
    assert info.kind == "binary" and info.stored_values == (0, scale)


def test_grey_class_index_mask(tmp_path):
    path = save(two_class().astype(np.uint8), tmp_path / "idx.png")
    info = analyse_mask(path)
    assert info.kind == "labels"
    np.testing.assert_array_equal(read_mask(path), two_class())


def test_rgba_white_on_black_mask(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[disk() > 0, :3] = 255
    path = save(rgba, tmp_path / "rgba.png")
    assert Image.open(path).mode == "RGBA"
    info = analyse_mask(path)
    assert info.kind == "binary"
    np.testing.assert_array_equal(info.labels, disk())


def test_rgba_mask_painted_in_alpha_only(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 3] = disk() * 255
    path = save(rgba, tmp_path / "alpha.png")
    np.testing.assert_array_equal(read_mask(path), disk())


def test_sixteen_bit_mask(tmp_path):
    path = tmp_path / "m16.png"
    Image.fromarray(disk().astype(np.uint16) * 65535).save(path)
    assert Image.open(path).mode.startswith("I")
    np.testing.assert_array_equal(read_mask(path), disk())
    assert analyse_mask(path).kind == "binary"


def test_anti_aliased_mask_is_ambiguous_and_binarised_at_half(tmp_path):
    soft = (disk() * 255).astype(np.uint8)
    soft[14, 5:9] = [60, 127, 128, 200]  # grey edge pixels
    path = save(soft, tmp_path / "soft.png")
    info = analyse_mask(path)
    assert info.kind == "ambiguous"
    assert info.labels[14, 5] == 0 and info.labels[14, 6] == 0 and info.labels[14, 7] == 1 and info.labels[14, 8] == 1


def test_colour_coded_mask(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[two_class() == 1] = (255, 0, 0)
    rgb[two_class() == 2] = (0, 255, 0)
    info = analyse_mask(save(rgb, tmp_path / "colour.png"))
    assert info.kind == "colour"
    np.testing.assert_array_equal(info.labels, (two_class() > 0).astype(np.uint8))


def test_grey_stored_as_rgb_is_grey(tmp_path):
    rgb = np.repeat((disk() * 255)[..., None], 3, axis=-1).astype(np.uint8)
    info = analyse_mask(save(rgb, tmp_path / "greyrgb.png"))
    assert info.kind == "binary"
    np.testing.assert_array_equal(info.labels, disk())


def test_jpeg_mask_is_flagged_ambiguous(tmp_path):
    path = save((disk(64, 20, 30, 30) * 255).astype(np.uint8), tmp_path / "m.jpg", quality=75)
    info = analyse_mask(path)
    assert info.kind == "ambiguous"
    assert abs(int(info.labels.sum()) - int(disk(64, 20, 30, 30).sum())) < 40


def test_tiff_and_npy_masks(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "m.tif", (disk() * 255).astype(np.uint8))
    np.save(tmp_path / "m.npy", two_class())
    np.testing.assert_array_equal(read_mask(tmp_path / "m.tif"), disk())
    np.testing.assert_array_equal(read_mask(tmp_path / "m.npy"), two_class())


def test_empty_mask_is_binary_and_empty(tmp_path):
    info = analyse_mask(save(np.zeros((16, 16), np.uint8), tmp_path / "e.png"))
    assert info.kind == "binary" and info.is_empty


# --- images --------------------------------------------------------------------------------------


def test_read_image_modes_and_channels(tmp_path):
    grey = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    rgb = np.stack([grey, 255 - grey, grey // 2], axis=-1)
    rgba = np.concatenate([rgb, np.full((32, 32, 1), 7, np.uint8)], axis=-1)
    assert read_image(save(grey, tmp_path / "g.png")).shape == (32, 32)
    assert read_image(save(rgb, tmp_path / "c.png")).shape == (32, 32, 3)
    np.testing.assert_array_equal(read_image(save(rgba, tmp_path / "a.png")), rgb.astype(np.float32))
    grey_rgb = np.repeat(grey[..., None], 3, axis=-1)
    assert read_image(save(grey_rgb, tmp_path / "gr.png")).shape == (32, 32)
    assert read_image(tmp_path / "g.png", channels=3).shape == (32, 32, 3)
    one = read_image(tmp_path / "c.png", channels=1)
    np.testing.assert_allclose(one, rgb @ np.array([0.299, 0.587, 0.114]), atol=1e-3)
    assert read_image(tmp_path / "g.png").dtype == np.float32
    assert image_size(tmp_path / "c.png") == (32, 32)


def test_read_image_float_tiff_and_nan(tmp_path):
    import tifffile

    arr = np.linspace(-1000, 400, 24 * 20, dtype=np.float32).reshape(24, 20)
    tifffile.imwrite(tmp_path / "f.tif", arr)
    np.testing.assert_allclose(read_image(tmp_path / "f.tif"), arr)
    arr[3, 4] = np.nan
    np.save(tmp_path / "nan.npy", arr)
    with pytest.raises(DataError, match="NaN") as err:
        read_image(tmp_path / "nan.npy")
    assert err.value.path == str(tmp_path / "nan.npy")
    assert np.isnan(read_image(tmp_path / "nan.npy", check_finite=False)).sum() == 1


def test_unreadable_and_missing_files_name_the_file(tmp_path):
    good = save((disk() * 255).astype(np.uint8), tmp_path / "good.png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (tmp_path / "text.png").write_text("not an image")
    for path in (truncated, tmp_path / "text.png"):
        with pytest.raises(DataError, match="unreadable image") as err:
            read_image(path)
        assert err.value.path == str(path)
        with pytest.raises(DataError, match="unreadable image"):
            read_mask(path)
    with pytest.raises(DataError, match="file not found"):
        read_image(tmp_path / "absent.png")


def write_dicom_2d(path: Path, pixels: np.ndarray, spacing=(0.14, 0.15), photometric="MONOCHROME2", intercept=0.0) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [spacing[0], spacing[1]]
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.RescaleIntercept, ds.RescaleSlope = intercept, 1.0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_two_d_dicom_image_spacing_and_monochrome1(tmp_path):
    pixels = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30)
    path = write_dicom_2d(tmp_path / "cxr.dcm", pixels, intercept=-5)
    np.testing.assert_array_equal(read_image(path), pixels.astype(np.float32) - 5)
    assert read_spacing_2d(path) == (0.14, 0.15)
    inverted = write_dicom_2d(tmp_path / "inv.dcm", pixels, photometric="MONOCHROME1")
    out = read_image(inverted)
    assert out[0, 0] == pixels.max() and out[-1, -1] == pixels.min()


def test_png_spacing_chunk_round_trip_and_screen_dpi_ignored(tmp_path):
    write_image(tmp_path / "s.png", np.zeros((8, 9)), spacing=(0.7, 0.8))
    write_mask(tmp_path / "m.png", np.ones((8, 9), np.uint8), spacing=(0.7, 0.8))
    assert read_spacing_2d(tmp_path / "s.png") == (0.7, 0.8)
    assert read_spacing_2d(tmp_path / "m.png") == (0.7, 0.8)
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "dpi.png", dpi=(100, 100))
    assert read_spacing_2d(tmp_path / "dpi.png") is None
    assert read_spacing_2d(save(np.zeros((8, 8), np.uint8), tmp_path / "j.jpg")) is None


def test_tiff_resolution_in_centimetres_gives_spacing(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "cm.tif", np.zeros((8, 8), np.uint8), resolution=(40.0, 20.0), resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "inch.tif", np.zeros((8, 8), np.uint8), resolution=(72.0, 72.0), resolutionunit="INCH")
    row, col = read_spacing_2d(tmp_path / "cm.tif")
    assert row == pytest.approx(0.5) and col == pytest.approx(0.25)
    assert read_spacing_2d(tmp_path / "inch.tif") is None


def test_writes_are_atomic_and_binary_scaled(tmp_path):
    write_mask(tmp_path / "out" / "m.png", disk().astype(bool))
    assert np.unique(np.asarray(Image.open(tmp_path / "out" / "m.png"))).tolist() == [0, 255]
    write_mask(tmp_path / "out" / "idx.png", two_class())
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "idx.png")), two_class())
    with pytest.raises(DataError, match="8-bit"):
        write_mask(tmp_path / "out" / "big.png", np.full((4, 4), 300))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["idx.png", "m.png"]  # no temporaries left


# --- volumes -------------------------------------------------------------------------------------


def test_nifti_volume_nan_and_labels(tmp_path):
    vol = np.random.default_rng(0).normal(size=(6, 5, 4)).astype(np.float32)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    write_volume(tmp_path / "v.nii.gz", vol, affine)
    arr, spacing, aff = read_volume(tmp_path / "v.nii.gz")
    np.testing.assert_allclose(arr, vol)
    assert spacing == pytest.approx((0.8, 0.8, 2.5))
    np.testing.assert_allclose(aff, affine)
    vol[1, 2, 3] = np.nan
    write_volume(tmp_path / "nan.nii.gz", vol, affine)
    with pytest.raises(DataError, match="1 NaN") as err:
        read_volume(tmp_path / "nan.nii.gz")
    assert err.value.path == str(tmp_path / "nan.nii.gz")
    write_volume(tmp_path / "lab.nii.gz", np.full((3, 3, 3), 2.5), affine)
    with pytest.raises(DataError, match="whole numbers"):
        read_label_volume(tmp_path / "lab.nii.gz")


def ras_affine(spacing=(0.7, 0.8, 2.5), origin=(-90.0, 40.0, -120.0), rotation=None) -> np.ndarray:
    affine = np.eye(4)
    rot = np.eye(3) if rotation is None else rotation
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def rotation_xyz(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def write_dicom_series(folder: Path, volume: np.ndarray, affine_ras: np.ndarray, seed: int = 0) -> Path:
    """Write ``volume`` (X, Y, Z) as a CT series whose geometry is ``affine_ras``; files in random order."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ras
    sx, sy, sz = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir = lps[:3, 0] / sx, lps[:3, 1] / sy
    series, study = generate_uid(), generate_uid()
    order = np.random.default_rng(seed).permutation(volume.shape[2])
    for n, k in enumerate(order):
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.Modality = series, study, "CT"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.PixelSpacing = [float(sy), float(sx)]
        ds.SliceThickness = float(sz)
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [float(v) for v in (lps @ np.array([0, 0, k, 1.0]))[:3]]
        ds.InstanceNumber = int(k) + 1
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.RescaleIntercept, ds.RescaleSlope = -1024.0, 1.0
        stored = (volume[:, :, k].T + 1024).astype(np.int16)  # rows = Y, columns = X
        ds.PixelData = stored.tobytes()
        ds.save_as(folder / f"IM{n:04d}.dcm", enforce_file_format=True)
    return folder


def phantom_volume(shape=(12, 10, 6), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1000, size=shape).astype(np.float32)


@pytest.mark.parametrize(
    "rotation", [None, rotation_xyz(0.2, -0.15, 0.4)], ids=["axial", "oblique"]
)
def test_dicom_series_matches_nibabel_nifti(tmp_path, rotation):
    volume = phantom_volume()
    affine = ras_affine(rotation=rotation)
    write_dicom_series(tmp_path / "series", volume, affine)
    write_volume(tmp_path / "same.nii.gz", volume, affine, dtype="int16")
    arr_d, spacing_d, aff_d = read_volume(tmp_path / "series")
    arr_n, spacing_n, aff_n = read_volume(tmp_path / "same.nii.gz")
    np.testing.assert_array_equal(arr_d, arr_n)
    assert spacing_d == pytest.approx(spacing_n, abs=1e-5)
    np.testing.assert_allclose(aff_d, aff_n, atol=1e-4)
    import nibabel as nib

    assert nib.aff2axcodes(aff_d) == nib.aff2axcodes(aff_n)


def test_dicom_series_in_plane_geometry_agrees_with_nibabel_nicom(tmp_path):
    """An independent reading of the first slice: nibabel's DICOM wrapper (row, column order)."""
    warnings.simplefilter("ignore")
    import nibabel.nicom.dicomwrappers as dw

    volume = phantom_volume((8, 6, 3))
    affine = ras_affine(rotation=rotation_xyz(0.1, 0.3, -0.2))
    folder = write_dicom_series(tmp_path / "series", volume, affine)
    _, _, aff = read_volume(folder)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff
    import pydicom

    first = next(f for f in folder.iterdir() if int(pydicom.dcmread(f).InstanceNumber) == 1)  # slice k = 0
    ref = dw.wrapper_from_file(str(first)).affine  # voxel axes (row, column, slice) → LPS
    np.testing.assert_allclose(lps[:3, 0], ref[:3, 1], atol=1e-5)  # our axis 0 runs along a row (columns)
    np.testing.assert_allclose(lps[:3, 1], ref[:3, 0], atol=1e-5)
    np.testing.assert_allclose(lps[:3, 3], ref[:3, 3], atol=1e-4)


def test_dicom_series_left_handed_slices_are_reordered_consistently(tmp_path):
    volume = phantom_volume((8, 6, 5))
    affine = ras_affine()
    affine[:3, 2] *= -1  # slices run inferior: the reader sorts along the slice normal instead
    write_dicom_series(tmp_path / "series", volume, affine)
    arr, _, aff = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(arr, volume[:, :, ::-1])
    for idx in [(0, 0, 0), (3, 2, 4), (7, 5, 1)]:
        world_read = aff @ np.array([*idx, 1.0])
        world_true = affine @ np.array([idx[0], idx[1], volume.shape[2] - 1 - idx[2], 1.0])
        np.testing.assert_allclose(world_read, world_true, atol=1e-4)


def test_dicom_series_problems_name_the_file(tmp_path):
    folder = write_dicom_series(tmp_path / "series", phantom_volume((6, 5, 4)), ras_affine())
    import pydicom

    by_instance = {int(pydicom.dcmread(f).InstanceNumber): f for f in folder.iterdir()}
    by_instance[2].unlink()  # a missing middle slice
    with pytest.raises(DataError, match="not evenly spaced"):
        read_volume(folder)
    by_instance[3].write_bytes(b"garbage" * 10)
    with pytest.raises(DataError, match="unreadable DICOM") as err:
        read_volume(folder)
    assert err.value.path == str(by_instance[3])
