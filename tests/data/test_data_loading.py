"""load_sample and edge derivation: shapes, geometry, derived edges, errors naming both files."""

from __future__ import annotations

import numpy as np
import pytest

from covseg.data import CaseRecord, load_sample, open_dataset
from covseg.data.imageio import read_mask, write_image, write_volume
from covseg.errors import DataError
from covseg.transforms.edges import mask_to_edge

from tests.data.test_data_layouts import blob, make_folder, make_pairs, make_volume_pair, picture, save_png

# --- load_sample, 2D ------------------------------------------------------------------------------


def test_load_sample_2d_given_and_derived_edges(tmp_path):
    root = make_folder(tmp_path / "ds", n=2, edges=True)
    rec = open_dataset(root)["1"]
    sample = load_sample(rec)
    assert sample.image.shape == (32, 32) and sample.image.dtype == np.float32
    assert sample.mask.dtype == np.uint8 and set(np.unique(sample.mask)) == {0, 1}
    assert sample.spacing is None and sample.affine is None and sample.source == rec.image
    np.testing.assert_array_equal(sample.edge, mask_to_edge(sample.mask))  # the edges/ file
    rec.edge = None
    derived = load_sample(rec)
    np.testing.assert_array_equal(derived.edge, mask_to_edge(derived.mask))
    assert load_sample(rec, derive_edge=False).edge is None
    assert load_sample(rec, channels=3).image.shape == (32, 32, 3)


def test_load_sample_keeps_text_label_meta_and_spacing(tmp_path):
    write_image(tmp_path / "img.png", picture(24, 1), spacing=(0.6, 0.7))
    save_png(tmp_path / "mask.png", blob(24) * 255)
    rec = CaseRecord("c1", tmp_path / "img.png", tmp_path / "mask.png", text="lesion", texts={"P0": "lesion"}, label=1, meta={"k": 2})
    sample = load_sample(rec)
    assert sample.spacing == (0.6, 0.7)
    # meta keeps the record's own entries; loading adds the intensity space it read the image in
    assert (sample.text, sample.texts, sample.label, sample.meta) == ("lesion", {"P0": "lesion"}, 1, {"k": 2, "intensity_space": "display"})
    rec.meta["spacing"] = (1.5, 1.5)
    assert load_sample(rec).spacing == (1.5, 1.5)


def test_dicom_chest_xray_in_a_folder_gets_its_pixel_spacing(tmp_path):
    from tests.data.test_imageio import write_dicom_2d

    (tmp_path / "ds" / "images").mkdir(parents=True)
    write_dicom_2d(tmp_path / "ds" / "images" / "cxr1.dcm", (picture(24, 2).astype(np.uint16) * 16), spacing=(0.139, 0.139))
    save_png(tmp_path / "ds" / "masks" / "cxr1.png", blob(24) * 255)
    [rec] = open_dataset(tmp_path / "ds").records
    sample = load_sample(rec)
    assert sample.spacing == (0.139, 0.139) and sample.image.shape == (24, 24) and sample.mask.sum() == blob(24).sum()


def test_size_mismatch_names_both_files(tmp_path):
    root = make_pairs(tmp_path / "ds", ["a"])
    save_png(root / "masks" / "a.png", blob(40) * 255)
    with pytest.raises(DataError) as err:
        load_sample(open_dataset(root)["a"])
    assert err.value.path == str(root / "masks" / "a.png")
    assert "40×40 differs from image a.png (32×32" in err.value.problem and str(root / "images" / "a.png") in err.value.problem
    root2 = make_folder(tmp_path / "ds2", n=1, edges=True)
    save_png(root2 / "edges" / "0.png", np.zeros((31, 32), np.uint8))
    with pytest.raises(DataError, match=r"31×32 differs from image 0\.png") as err:
        load_sample(open_dataset(root2)["0"])
    assert err.value.path.endswith("edges/0.png")


# --- load_sample, 3D -------------------------------------------------------------------------------


def test_nan_volume_and_affine_mismatch_raise(tmp_path):
    root = tmp_path / "ct"
    affine = make_volume_pair(root / "images", root / "masks", "a")
    vol = np.ones((10, 9, 4), np.float32)
    vol[0, 0, 0] = np.nan
    write_volume(root / "images" / "a.nii.gz", vol, affine)
    with pytest.raises(DataError, match="1 NaN") as err:
        load_sample(open_dataset(root)["a"])
    assert err.value.path == str(root / "images" / "a.nii.gz")
    write_volume(root / "images" / "a.nii.gz", np.ones((10, 9, 4), np.float32), affine)
    write_volume(root / "masks" / "a.nii.gz", np.zeros((10, 9, 4), np.uint8), np.diag([1.0, 1.0, 1.0, 1.0]), dtype="uint8")
    with pytest.raises(DataError, match=r"affine differs from image a\.nii\.gz"):
        load_sample(open_dataset(root)["a"])
    write_volume(root / "masks" / "a.nii.gz", np.zeros((10, 9, 5), np.uint8), affine, dtype="uint8")
    with pytest.raises(DataError, match=r"10×9×5 differs from image a\.nii\.gz"):
        load_sample(open_dataset(root)["a"])


# --- edges ---------------------------------------------------------------------------------------------


def test_edge_width_two_is_one_pixel_each_side():
    mask = np.zeros((12, 12), np.uint8)
    mask[3:9, 4:10] = 1  # a 6×6 square
    edge = mask_to_edge(mask)
    inside, outside = edge & mask, edge & (1 - mask)
    ring_in = mask.copy()
    ring_in[4:8, 5:9] = 0
    np.testing.assert_array_equal(inside, ring_in)  # the mask's boundary pixels
    assert outside[2, 4:10].all() and outside[9, 4:10].all() and outside[3:9, 3].all() and outside[3:9, 10].all()
    assert outside.sum() == 24  # 4-neighbours only: corners outside are not marked


def test_edge_inf_net_detail_single_pixel_gap_not_marked():
    """Inf-Net's rule (central differences): a 1-pixel background gap between foreground stays unmarked."""
    mask = np.ones((7, 9), np.uint8)
    mask[3, 2:7] = 0  # one-pixel-high horizontal gap
    edge = mask_to_edge(mask)
    assert edge[3, 4] == 0  # foreground above and below cancel
    assert edge[2, 4] == 1 and edge[4, 4] == 1


@pytest.mark.parametrize("width,inner,outer", [(1, 1, 0), (3, 2, 1), (4, 2, 2)])
def test_edge_other_widths(width, inner, outer):
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 1
    edge = mask_to_edge(mask, width=width)
    row = edge[10]
    assert row[5 - outer : 5 + inner].all() and row[:5 - outer].sum() == 0 and row[5 + inner : 10].sum() == 0


def test_edge_properties():
    assert mask_to_edge(np.zeros((8, 8), np.uint8)).sum() == 0
    multi = np.zeros((10, 10), np.uint8)
    multi[2:8, 2:5], multi[2:8, 5:8] = 1, 2  # touching classes: binarised, no inner edge
    np.testing.assert_array_equal(mask_to_edge(multi), mask_to_edge(multi > 0))
    vol = np.zeros((6, 6, 6), np.uint8)
    vol[1:5, 1:5, 1:5] = 1
    assert mask_to_edge(vol).shape == (6, 6, 6) and mask_to_edge(vol)[3, 3, 0] == 1
    with pytest.raises(ValueError):
        mask_to_edge(vol, width=0)
    with pytest.raises(ValueError):
        mask_to_edge(np.zeros(5))


def test_edges_reproduce_inf_net_shipped_edges(real_data):
    """covid_semiseg_infnet/train/edges were made from the masks; width=2 reproduces every pixel."""
    root = real_data / "covid_semiseg_infnet" / "train"
    total = differing = 0
    shipped_px = derived_px = both = 0
    for mask_path in sorted((root / "masks").glob("*.png")):
        shipped = read_mask(root / "edges" / mask_path.name) > 0
        derived = mask_to_edge(read_mask(mask_path)) > 0
        total += shipped.size
        differing += int((shipped != derived).sum())
        shipped_px, derived_px, both = shipped_px + shipped.sum(), derived_px + derived.sum(), both + (shipped & derived).sum()
    dice = 2 * both / (shipped_px + derived_px)
    print(f"edge agreement on 50 Inf-Net edge maps: {total} pixels, {differing} differ, Dice {dice:.6f}")
    assert differing == 0 and dice == 1.0
