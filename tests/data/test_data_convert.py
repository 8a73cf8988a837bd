"""``covseg data convert``: volumes → windowed axial PNG slices (orientation tested), Inf-Net ↔ folder,
folder → co-supervision; inputs untouched, bad cases listed while the rest convert."""

from __future__ import annotations

import csv
import filecmp
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covseg.data import open_dataset
from covseg.data.convert import apply_window, axial_slices, convert_dataset, parse_window
from covseg.data.imageio import read_image, read_mask, read_spacing_2d, write_volume
from covseg.errors import DataError
from covseg.transforms.edges import mask_to_edge

from tests.data.test_data_check import run_cli
from tests.data.test_data_layouts import blob, make_folder, make_pairs, save_png

LUNG = (-1250.0, 250.0)


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    if any(not filecmp.cmp(a / f, b / f, shallow=False) for f in cmp.common_files):
        return False
    return all(same_tree(a / d, b / d) for d in cmp.common_dirs)


# --- windowing and orientation -------------------------------------------------------------------


def test_parse_and_apply_window():
    assert parse_window("lung") == LUNG and parse_window("-1250,250") == LUNG and parse_window("-100:100") == (-100.0, 100.0)
    with pytest.raises(DataError, match="bad window"):
        parse_window("250,-1250")
    with pytest.raises(DataError, match="bad window"):
        parse_window("wide")
    hu = np.array([-2000, -1250, -500, 0, 250, 3000])
    np.testing.assert_array_equal(apply_window(hu, LUNG), [0, 0, 128, 212, 255, 255])  # 127.5 rounds to even


def marker_volume():
    """X=10 (RAS: toward patient right), Y=8 (anterior), Z=3; a bright voxel right-anterior on slice 1."""
    vol = np.full((10, 8, 3), -1000.0, np.float32)
    vol[9, 7, 1] = 200.0  # patient right, anterior
    vol[0, 0, 1] = -500.0  # patient left, posterior
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    affine[:3, 3] = (-3.0, -2.0, 10.0)
    return vol, affine


def test_axial_slices_radiological_and_neurological():
    vol, affine = marker_volume()
    slices, spacing, z_mm = axial_slices(vol, affine)
    assert slices.shape == (3, 8, 10) and spacing == (0.8, 0.7)
    np.testing.assert_allclose(z_mm, [10.0, 12.5, 15.0])
    assert slices[1, 0, 0] == 200.0  # anterior at the top, patient right on the viewer's left
    assert slices[1, -1, -1] == -500.0
    neuro, _, _ = axial_slices(vol, affine, "neurological")
    assert neuro[1, 0, -1] == 200.0  # patient right on the viewer's right
    # The same anatomy stored the other way round (x and y flipped in the file) gives the same slices.
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:3, 3] = (9, 7, 0)
    stored_lps = vol[::-1, ::-1, :]
    np.testing.assert_array_equal(axial_slices(stored_lps, affine @ flip)[0], slices)
    with pytest.raises(ValueError):
        axial_slices(vol, affine, "sideways")


def test_axial_slices_agree_with_transforms_orientation():
    from covseg.transforms.orientation import slice_spacing, volume_to_slices

    vol, affine = marker_volume()
    slices, spacing, _ = axial_slices(vol, affine)
    np.testing.assert_array_equal(slices, volume_to_slices(vol, affine))
    assert spacing == slice_spacing((0.7, 0.8, 2.5), affine)


# --- volumes → PNG slices -------------------------------------------------------------------------------


def test_nifti_to_png_slices_values_masks_and_provenance(tmp_path, capsys):
    src = tmp_path / "ct"
    rng = np.random.default_rng(0)
    vol = rng.uniform(-1600, 600, size=(12, 10, 4)).astype(np.float32)
    vol[11, 9, 2] = 99.0  # marker: patient right, anterior
    affine = np.diag([0.75, 0.75, 3.0, 1.0])
    labels = np.zeros(vol.shape, np.uint8)
    labels[2:6, 3:8, 1] = 11  # lung lobe labels, as in TotalSegmentator
    labels[6:9, 3:8, 1:3] = 12
    labels[0:2, 0:2, 3] = 5  # not a lung label
    write_volume(src / "images" / "ct1.nii.gz", vol, affine)
    write_volume(src / "masks" / "ct1.nii.gz", labels, affine, dtype="uint8")
    before = snapshot(src)
    code, out = run_cli(capsys, "data", "convert", src, tmp_path / "png", "--to", "folder", "--window", "-1250,250", "--labels", "11,12")
    assert code == 0, out
    assert "4 slices" in out
    assert snapshot(src) == before  # input untouched
    index = open_dataset(tmp_path / "png")
    assert index.case_ids == ["ct1_000", "ct1_001", "ct1_002", "ct1_003"] and not index.findings
    from covseg.data.check import check_dataset

    empty = [Path(f.path).name for f in check_dataset(tmp_path / "png").findings]
    assert empty == ["ct1_000.png", "ct1_003.png"]  # no lung label there (label 5 is not selected)
    for k in range(4):
        png = read_image(tmp_path / "png" / "images" / f"ct1_{k:03d}.png")
        expected_hu = vol[:, :, k].T[::-1, ::-1]  # rows anterior → posterior, columns right → left
        expected = np.rint(np.clip((expected_hu + 1250) / 1500, 0, 1) * 255)
        np.testing.assert_array_equal(png, expected)
        mask = read_mask(tmp_path / "png" / "masks" / f"ct1_{k:03d}.png")
        np.testing.assert_array_equal(mask, np.isin(labels[:, :, k], [11, 12]).T[::-1, ::-1])
        assert read_spacing_2d(tmp_path / "png" / "images" / f"ct1_{k:03d}.png") == (0.75, 0.75)
    assert read_image(tmp_path / "png" / "images" / "ct1_002.png")[0, 0] == 229  # (99 + 1250) / 1500 * 255 = 229.3
    assert np.unique(np.asarray(Image.open(tmp_path / "png" / "masks" / "ct1_001.png"))).tolist() == [0, 255]
    rows = list(csv.DictReader((tmp_path / "png" / "slices.csv").open()))
    assert [r["z_mm"] for r in rows] == ["0.0", "3.0", "6.0", "9.0"] and rows[0]["orientation"] == "radiological"


def test_volume_label_maps_skip_empty_and_edges(tmp_path):
    src = tmp_path / "ct"
    vol = np.zeros((8, 8, 5), np.float32)
    labels = np.zeros(vol.shape, np.uint8)
    labels[2:6, 2:6, 1] = 1
    labels[3:5, 3:5, 3] = 2
    write_volume(src / "images" / "a.nii.gz", vol, np.eye(4))
    write_volume(src / "masks" / "a.nii.gz", labels, np.eye(4), dtype="uint8")
    report = convert_dataset(src, tmp_path / "inf", "infnet", skip_empty=True)
    assert report.ok and report.slices == 2
    assert sorted(p.name for p in (tmp_path / "inf" / "GT").iterdir()) == ["a_001.png", "a_003.png"]
    gt3 = np.asarray(Image.open(tmp_path / "inf" / "GT" / "a_003.png"))
    assert sorted(np.unique(gt3).tolist()) == [0, 2]  # label maps keep their indices on every slice
    np.testing.assert_array_equal(read_mask(tmp_path / "inf" / "Edge" / "a_001.png"), mask_to_edge(labels[:, :, 1].T[::-1, ::-1]))


def test_single_nifti_with_mask_option(real_data, tmp_path):
    src = real_data / "ct3d_totalseg_example" / "images" / "example_ct_sm.nii.gz"
    mask = real_data / "ct3d_totalseg_example" / "masks" / "example_ct_sm.nii.gz"
    report = convert_dataset(src, tmp_path / "out", "folder", mask=mask, labels=[10, 11, 12, 13, 14], skip_empty=True)
    assert report.ok and 0 < report.slices < 30
    index = open_dataset(tmp_path / "out")
    assert len(index) == report.slices and not index.findings  # only slices with lung written: none empty
    img = read_image(index[0].image)
    assert img.shape == (101, 122) and img.min() >= 0 and img.max() <= 255


# --- 2D layouts ----------------------------------------------------------------------------------------------


def make_infnet(root: Path) -> Path:
    make_pairs(root, ["0", "1", "10", "2"], "Imgs", "GT", "Edge", image_ext=".jpg")
    for i, stem in enumerate(["0", "1", "10", "2"]):
        save_png(root / "Prior" / f"{stem}.png", blob(32, i + 5) * 255)
    return root


def test_infnet_folder_round_trips_are_identical(tmp_path):
    src = make_infnet(tmp_path / "inf")
    before = snapshot(src)
    r1 = convert_dataset(src, tmp_path / "folder", "folder")
    assert r1.ok and r1.cases == 4 and not r1.notes
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == ["edges", "images", "masks", "masks_prior"]
    r2 = convert_dataset(tmp_path / "folder", tmp_path / "inf2", "infnet")
    assert r2.ok and same_tree(src, tmp_path / "inf2")
    assert snapshot(src) == before
    folder = make_folder(tmp_path / "f", n=3, edges=True, multiclass=True)
    convert_dataset(folder, tmp_path / "f_inf", "infnet")
    assert (tmp_path / "f_inf" / "GT-Multiclass").is_dir()
    convert_dataset(tmp_path / "f_inf", tmp_path / "f_back", "folder")
    assert same_tree(folder, tmp_path / "f_back")


def test_infnet_round_trip_on_real_data(real_data, tmp_path):
    src = real_data / "covid_semiseg_infnet" / "train"
    assert convert_dataset(src, tmp_path / "inf", "infnet").ok
    assert sorted(p.name for p in (tmp_path / "inf").iterdir()) == ["Edge", "GT", "GT-Multiclass", "Imgs"]
    assert convert_dataset(tmp_path / "inf", tmp_path / "back", "folder").ok
    assert same_tree(src, tmp_path / "back")


def test_masks_normalised_for_infnet_and_edges_derived(tmp_path):
    src = make_pairs(tmp_path / "jcs", ["0000", "0001"], mask_dir=None)
    for i, stem in enumerate(["0000", "0001"]):
        im = Image.fromarray(blob(32, i), mode="P")
        im.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
        (src / "masks").mkdir(exist_ok=True)
        im.save(src / "masks" / f"{stem}.png")
    report = convert_dataset(src, tmp_path / "inf", "infnet")
    assert report.ok and any("re-encoded" in n for n in report.notes)
    gt = Image.open(tmp_path / "inf" / "GT" / "0001.png")
    assert gt.mode == "L" and np.unique(np.asarray(gt)).tolist() == [0, 255]
    np.testing.assert_array_equal(read_mask(tmp_path / "inf" / "Edge" / "0001.png"), mask_to_edge(blob(32, 1)))
    plain = convert_dataset(src, tmp_path / "plain", "folder")
    assert not (tmp_path / "plain" / "edges").exists() and plain.ok


def test_folder_to_cosup(tmp_path):
    src = make_folder(tmp_path / "f", n=3, image_ext=".jpg", multiclass=True)
    make_pairs(src, ["u9"], mask_dir=None)
    report = convert_dataset(src, tmp_path / "cosup", "cosup")
    assert report.ok and any("multiclass masks (3)" in n for n in report.notes)
    for stem in ("0", "1", "2"):
        np.testing.assert_array_equal(read_image(tmp_path / "cosup" / "image" / f"{stem}.png"), read_image(src / "images" / f"{stem}.jpg"))
        mask = np.asarray(Image.open(tmp_path / "cosup" / "mask" / f"{stem}.png"))
        np.testing.assert_array_equal(mask, blob(32, int(stem)))  # 0/1, as the co-supervision loader uses it
        edge = np.asarray(Image.open(tmp_path / "cosup" / "mask_" / f"{stem}.png"))
        np.testing.assert_array_equal(edge, mask_to_edge(blob(32, int(stem))) * 255)
    index = open_dataset(tmp_path / "cosup")
    assert index.layout == "cosup" and index["u9"].mask is None and index["1"].edge is not None
    assert [f.kind for f in index.findings] == ["orphan_image"]  # u9 has no mask: reported on reading back


def test_texts_carried_to_folder(tmp_path):
    from tests.data.test_data_layouts import make_qata

    src = make_qata(tmp_path / "qata", ["covid_1", "covid_2"])
    report = convert_dataset(src, tmp_path / "folder", "folder")
    assert report.ok and (tmp_path / "folder" / "texts.json").is_file()
    back = open_dataset(tmp_path / "folder")
    assert [r.text for r in back] == [r.text for r in open_dataset(src)]


def test_bad_cases_listed_others_converted(tmp_path, capsys):
    src = make_folder(tmp_path / "f", n=4)
    good = src / "masks" / "2.png"
    good.write_bytes(good.read_bytes()[:60])  # truncated mask
    before = snapshot(src)
    code, out = run_cli(capsys, "data", "convert", src, tmp_path / "inf", "--to", "infnet", "--json", tmp_path / "r.json")
    assert code == 1 and "failed 2:" in out and "1 case(s) failed" in out
    assert sorted(p.name for p in (tmp_path / "inf" / "Imgs").iterdir()) == ["0.png", "1.png", "3.png"]  # no half case
    assert sorted(p.name for p in (tmp_path / "inf" / "GT").iterdir()) == ["0.png", "1.png", "3.png"]
    assert snapshot(src) == before
    vol_src = tmp_path / "ct"
    for name, bad in (("a", False), ("b", True)):
        vol = np.zeros((4, 4, 2), np.float32)
        if bad:
            vol[0, 0, 0] = np.nan
        write_volume(vol_src / "images" / f"{name}.nii.gz", vol, np.eye(4))
    report = convert_dataset(vol_src, tmp_path / "vol", "folder")
    assert [c for c, _ in report.failed] == ["b"] and "NaN" in report.failed[0][1] and report.slices == 2


def test_destination_rules(tmp_path):
    src = make_folder(tmp_path / "f", n=1)
    with pytest.raises(DataError, match="outside the source"):
        convert_dataset(src, src / "converted", "folder")
    with pytest.raises(DataError, match="outside the source"):
        convert_dataset(src, tmp_path, "folder")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("keep")
    with pytest.raises(DataError, match="not empty"):
        convert_dataset(src, tmp_path / "full", "folder")
    assert convert_dataset(src, tmp_path / "full", "folder", overwrite=True).ok
    assert (tmp_path / "full" / "x.txt").read_text() == "keep"
    with pytest.raises(DataError, match="unknown target layout"):
        convert_dataset(src, tmp_path / "o", "coco")


def test_split_folders_convert_into_split_subfolders(tmp_path):
    root = tmp_path / "ds"
    make_folder(root / "train", n=2)
    make_pairs(root / "unlabeled", ["u0"], mask_dir=None)
    report = convert_dataset(root, tmp_path / "out", "infnet")
    assert report.ok and report.cases == 3
    assert open_dataset(tmp_path / "out").splits == ["train", "unlabeled"]
    assert sorted(p.name for p in (tmp_path / "out" / "unlabeled").iterdir()) == ["Imgs"]
