"""Layout readers on small synthetic folders: one test group per layout, plus detection and splits.

The builders at the top are shared by the other ``test_data_*`` files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covseg.data import DatasetIndex, detect_layout, list_splits, load_sample, open_dataset
from covseg.data.imageio import write_volume
from covseg.errors import DataError

# --- builders ------------------------------------------------------------------------------------


def blob(size: int = 32, seed: int = 0, empty: bool = False) -> np.ndarray:
    """A binary ellipse whose position depends on ``seed``."""
    if empty:
        return np.zeros((size, size), np.uint8)
    rng = np.random.default_rng(seed)
    cy, cx = rng.integers(size // 3, 2 * size // 3, size=2)
    ry, rx = rng.integers(size // 8, size // 4, size=2)
    yy, xx = np.mgrid[:size, :size]
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)


def picture(size: int = 32, seed: int = 0, rgb: bool = False) -> np.ndarray:
    rng = np.random.default_rng(100 + seed)
    shape = (size, size, 3) if rgb else (size, size)
    return rng.integers(0, 256, size=shape).astype(np.uint8)


def save_png(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def save_palette(path: Path, labels: np.ndarray) -> Path:
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (253 * 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def make_pairs(
    root: Path,
    stems: list[str],
    image_dir: str = "images",
    mask_dir: str | None = "masks",
    edge_dir: str | None = None,
    image_ext: str = ".png",
    mask_name: str = "{stem}.png",
    size: int = 32,
    empty: tuple[str, ...] = (),
) -> Path:
    """Images (and 0/255 masks, Inf-Net edges) for ``stems`` under ``root``."""
    from covseg.transforms.edges import mask_to_edge

    for i, stem in enumerate(stems):
        save_png(root / image_dir / f"{stem}{image_ext}", picture(size, i), **({"quality": 95} if image_ext == ".jpg" else {}))
        mask = blob(size, i, empty=stem in empty)
        if mask_dir:
            save_png(root / mask_dir / mask_name.format(stem=stem), mask * 255)
        if edge_dir:
            save_png(root / edge_dir / f"{stem}.png", mask_to_edge(mask) * 255)
    return root


def make_folder(root: Path, n: int = 4, edges: bool = False, multiclass: bool = False, **kw) -> Path:
    """Generic folder layout: images/ masks/ [edges/ masks_multiclass/]."""
    stems = [str(i) for i in range(n)]
    make_pairs(root, stems, edge_dir="edges" if edges else None, **kw)
    if multiclass:
        for i, stem in enumerate(stems):
            labels = blob(kw.get("size", 32), i)
            labels[labels > 0] = 1 + (np.arange(labels.sum()) % 2)
            save_palette(root / "masks_multiclass" / f"{stem}.png", labels)
    return root


def write_xlsx(path: Path, rows: list[tuple], header: tuple = ("Image", "Description")) -> Path:
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(list(header))
    for row in rows:
        ws.append(list(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def qata_caption(i: int) -> list:
    label = [int(b) for b in f"{(i * 37) % 64:06b}"]
    return [f"{sum(label)} infected areas, case {i}.", 2 if any(label[:3]) and any(label[3:]) else 1, sum(label), json.dumps(label)]


def make_qata(root: Path, stems: list[str], captions: bool = True) -> Path:
    make_pairs(root, stems)
    if captions:
        write_csv(
            root / "captions.csv",
            ["name", "caption", "pulmonary_infection", "infected_area", "pseudo_label"],
            [[stem, *qata_caption(i)] for i, stem in enumerate(stems)],
        )
    return root


def make_volume_pair(images: Path, labels: Path | None, name: str, shape=(10, 9, 4), seed: int = 0, channels: int = 0):
    rng = np.random.default_rng(seed)
    affine = np.diag([0.9, 0.8, 3.0, 1.0])
    suffixes = [f"_{c:04d}" for c in range(channels)] if channels else [""]
    for suf in suffixes:
        write_volume(images / f"{name}{suf}.nii.gz", rng.normal(size=shape).astype(np.float32) * 100, affine)
    if labels is not None:
        lab = np.zeros(shape, np.uint8)
        lab[2:6, 3:7, 1:3] = 1
        write_volume(labels / f"{name}.nii.gz", lab, affine, dtype="uint8")
    return affine


# --- generic folder ------------------------------------------------------------------------------


def test_folder_layout_pairs_edges_and_named_masks(tmp_path):
    root = make_folder(tmp_path / "ds", n=12, edges=True, multiclass=True, image_ext=".jpg")
    save_png(root / "masks_prior" / "3.png", blob(32, 3) * 255)
    assert detect_layout(root) == "folder"
    index = open_dataset(root)
    assert isinstance(index, DatasetIndex) and index.layout == "folder" and not index.findings
    assert index.case_ids == [str(i) for i in range(12)]  # natural order: 2 before 10
    rec = index["3"]
    assert rec.image.name == "3.jpg" and rec.mask.name == "3.png" and rec.edge.parent.name == "edges"
    assert set(rec.masks) == {"multiclass", "prior"} and set(index["4"].masks) == {"multiclass"}
    summary = index.summary()
    assert summary["cases"] == 12 and summary["labelled"] == 12 and summary["with_edge"] == 12
    assert summary["extra_masks"] == {"multiclass": 12, "prior": 1}
    sample = load_sample(rec)
    assert sample.masks["multiclass"].max() == 2 and sample.mask.max() == 1


def test_folder_layout_unlabelled_orphans_duplicates(tmp_path):
    unlabelled = make_pairs(tmp_path / "pool", ["a", "b", "c"], mask_dir=None)
    index = open_dataset(unlabelled)
    assert [r.mask for r in index] == [None, None, None]
    assert [(f.kind, f.severity) for f in index.findings] == [("unlabelled", "warning")]

    root = make_pairs(tmp_path / "ds", ["a", "b"])
    save_png(root / "images" / "c.png", picture(32, 9))  # image without mask
    save_png(root / "masks" / "zz.png", blob(32) * 255)  # mask without image
    save_png(root / "images" / "a.jpg", picture(32, 1))  # same stem twice
    kinds = {(f.kind, Path(f.path).name) for f in open_dataset(root).findings}
    assert kinds == {("orphan_image", "c.png"), ("orphan_mask", "zz.png"), ("duplicate_case", "a.png")}


def test_folder_layout_mask_name_variants_and_texts_json(tmp_path):
    root = make_pairs(tmp_path / "ds", ["x1", "x2"], mask_name="mask_{stem}.png")
    (root / "texts.json").write_text(json.dumps({"x1": "left lower lobe", "x2.png": "bilateral"}))
    index = open_dataset(root)
    assert [r.mask.name for r in index] == ["mask_x1.png", "mask_x2.png"]
    assert [r.text for r in index] == ["left lower lobe", "bilateral"] and index.has_text


def test_text_option_attaches_any_source_and_reports_missing(tmp_path):
    root = make_pairs(tmp_path / "ds", ["a", "b", "c"])
    index = open_dataset(root, text={"a": "one", "b.png": "two", "zz": "unused"})
    assert [r.text for r in index] == ["one", "two", None]
    kinds = sorted((f.kind, f.severity) for f in index.findings)
    assert kinds == [("missing_text", "error"), ("unused_text", "info")]


# --- Inf-Net ---------------------------------------------------------------------------------------


def test_infnet_layout(tmp_path):
    root = make_pairs(tmp_path / "LungInfection-Train", ["0", "1", "10"], "Imgs", "GT", "Edge", image_ext=".jpg")
    for stem in ("0", "1", "10"):
        save_png(root / "Prior" / f"{stem}.png", blob(32, 1) * 255)
    save_png(root / "GT-1" / "0.png", blob(32, 0) * 255)
    assert detect_layout(root) == "infnet"
    index = open_dataset(root)
    assert index.layout == "infnet" and index.case_ids == ["0", "1", "10"] and not index.findings
    assert index["0"].edge.parent.name == "Edge" and set(index["0"].masks) == {"prior", "gt-1"}
    unlabeled = make_pairs(tmp_path / "Unlabeled", ["u1"], "Imgs", None)
    assert open_dataset(unlabeled, layout="infnet")[0].mask is None


# --- co-supervision ----------------------------------------------------------------------------------


def test_cosup_layout_plain_and_numbered(tmp_path):
    train = make_pairs(tmp_path / "data" / "train", ["1", "2"], "image", "mask", "mask_")
    val = make_pairs(tmp_path / "data" / "val", ["3"], "image1", "mask1", "mask_1")
    assert detect_layout(train) == "cosup" and detect_layout(val) == "cosup"
    rec = open_dataset(train)["2"]
    assert rec.mask.parent.name == "mask" and rec.edge.parent.name == "mask_"
    assert open_dataset(val)["3"].edge.parent.name == "mask_1"
    both = open_dataset(tmp_path / "data")
    assert both.splits == ["train", "val"] and both.case_ids == ["train/1", "train/2", "val/3"]


# --- LViT ------------------------------------------------------------------------------------------------


def make_lvit(root: Path) -> Path:
    for split, stems in (("Train", ["covid_1", "covid_2", "covid_10"]), ("Val", ["covid_5"])):
        folder = root / f"{split}_Folder"
        make_pairs(folder, stems, "img", "labelcol", mask_name="mask_{stem}.png")
        write_xlsx(folder / f"{split}_text.xlsx", [(f"mask_{s}.png", f"text of {s}") for s in stems])
    return root


def test_lvit_split_folders_with_xlsx(tmp_path):
    root = make_lvit(tmp_path / "QaTa-LViT")
    assert detect_layout(root) == "lvit" and list_splits(root) == ["train", "val"]
    train = open_dataset(root, split="train")
    assert train.case_ids == ["covid_1", "covid_2", "covid_10"] and not train.findings
    assert train["covid_10"].text == "text of covid_10" and train["covid_10"].mask.name == "mask_covid_10.png"
    assert open_dataset(root, split="valid").case_ids == ["covid_5"]  # alias of val
    merged = open_dataset(root)
    assert merged.splits == ["train", "val"] and "val/covid_5" in merged.case_ids
    assert merged["val/covid_5"].meta["split"] == "val"
    with pytest.raises(DataError, match=r"no split 'test' \(splits: train, val\)"):
        open_dataset(root, split="test")


def test_lvit_shared_form_and_missing_text(tmp_path):
    root = make_pairs(tmp_path / "monuseg", ["TCGA-1", "TCGA-2"])
    write_xlsx(root / "annotations" / "Val_text.xlsx", [("TCGA-1.png", "dense nuclei")])
    assert detect_layout(root) == "lvit"
    index = open_dataset(root)
    assert index.has_text and index["TCGA-1"].text == "dense nuclei" and index["TCGA-2"].text is None
    assert [(f.kind, Path(f.path).name) for f in index.findings] == [("missing_text", "TCGA-2.png")]


# --- QaTa ---------------------------------------------------------------------------------------------------


def test_qata_captions_csv_fields_in_meta(tmp_path):
    root = make_qata(tmp_path / "qata" / "train", ["covid_1", "sub-s1_ses-e1"])
    assert detect_layout(root) == "qata"
    rec = open_dataset(root)["sub-s1_ses-e1"]
    caption, infection, area, label = qata_caption(1)
    assert rec.text == caption
    assert rec.meta["pulmonary_infection"] == infection and rec.meta["infected_area"] == area
    assert rec.meta["pseudo_label"] == json.loads(label)


def test_qata_annotation_json_matched_by_file_and_unused_reported(tmp_path):
    root = make_qata(tmp_path / "qata" / "train", ["covid_1", "covid_2"], captions=False)
    entries = {
        "train": [
            {"image_path": f"mask_covid_{i}.png", "caption": f"caption {i}", "pulmonary_infection": 1, "infected_area": 1, "pseudo_label": [0, 0, 1, 0, 0, 0]}
            for i in range(1, 6)
        ],
        "valid": [{"image_path": "mask_sub-s9.png", "caption": "valid caption", "pulmonary_infection": 2, "infected_area": 2, "pseudo_label": [1, 0, 0, 1, 0, 0]}],
    }
    ann = tmp_path / "qata" / "annotations" / "annotation.json"
    ann.parent.mkdir(parents=True)
    ann.write_text(json.dumps(entries))
    assert detect_layout(root) == "qata"
    index = open_dataset(root)
    assert [r.text for r in index] == ["caption 1", "caption 2"] and index["covid_2"].meta["split"] == "train"
    [unused] = index.findings
    assert unused.kind == "unused_text" and unused.severity == "info" and "3 of 5" in unused.message
    again = open_dataset(root, text=ann)  # explicit text source: split from the folder name too
    assert [r.text for r in again] == ["caption 1", "caption 2"]


# --- CRIS JSON ------------------------------------------------------------------------------------------------


def make_cris(root: Path) -> Path:
    make_pairs(root, ["img1", "img2"], mask_dir=None)
    refs = []
    for i, (image, target) in enumerate([("img1", "lesion"), ("img1", "lung"), ("img2", "lesion")]):
        mask = f"{image}_{target}.png"
        save_png(root / "masks" / mask, blob(32, i) * 255)
        prompts = {"p0": "", "p1": target, "p2": f"{target} in chest CT", "p7": [f"a {target}", f"the {target}"]}
        refs.append({"img_name": f"{image}.png", "mask_name": mask, "segment_id": i, "cat": 0, "bbox": [1, 2, 3, 4], "prompts": prompts,
                     "sentences": [{"idx": 0, "sent_id": i, "sent": target}], "sentences_num": 1})
    (root / "anns").mkdir()
    (root / "anns" / "train.json").write_text(json.dumps(refs[:2]))
    (root / "anns" / "testA.json").write_text(json.dumps(refs[2:]))
    return root


def test_cris_json_prompts_and_splits(tmp_path):
    root = make_cris(tmp_path / "cris")
    assert detect_layout(root) == "cris" and list_splits(root) == ["testA", "train"]
    index = open_dataset(root, split="train", prompt="P2")
    assert index.case_ids == ["img1_lesion", "img1_lung"]  # one case per mask, unique ids
    rec = index["img1_lung"]
    assert rec.image.name == "img1.png" and rec.text == "lung in chest CT"
    assert rec.texts == {"p1": "lung", "p2": "lung in chest CT", "p7": "a lung"}  # empty p0 dropped
    assert rec.meta["prompt_choices"] == {"p7": ["a lung", "the lung"]} and rec.meta["segment_id"] == 1
    assert open_dataset(root, split="train")["img1_lung"].text == "lung"  # first non-empty prompt
    single = open_dataset(root / "anns" / "testA.json")
    assert single.case_ids == ["img2_lesion"] and single.layout == "cris"
    bad = open_dataset(root, split="train", prompt="P9")
    assert bad.records == [] and {f.kind for f in bad.findings} == {"bad_text_row"}


def test_cris_sentences_and_missing_files(tmp_path):
    root = make_cris(tmp_path / "cris")
    refs = json.loads((root / "anns" / "train.json").read_text())
    for ref in refs:
        del ref["prompts"]
    refs[1]["mask_name"] = "gone.png"
    (root / "anns" / "train.json").write_text(json.dumps(refs))
    index = open_dataset(root, split="train")
    assert index["img1_lesion"].texts == {"sent0": "lesion"}
    assert index["gone"].mask is None
    assert [(f.kind, Path(f.path).name) for f in index.findings] == [("missing_file", "gone.png")]


def test_cris_repository_tree(tmp_path):
    """CRIS.pytorch keeps datasets/anns/<name>/<split>.json beside datasets/images/<name>/ and masks/<name>/."""
    ds = make_cris(tmp_path / "build")
    tree = tmp_path / "datasets"
    (tree / "anns").mkdir(parents=True)
    (ds / "anns").rename(tree / "anns" / "kvasir")
    (tree / "images").mkdir()
    (ds / "images").rename(tree / "images" / "kvasir")
    (tree / "masks").mkdir()
    (ds / "masks").rename(tree / "masks" / "kvasir")
    assert detect_layout(tree / "anns" / "kvasir") == "cris"
    index = open_dataset(tree / "anns" / "kvasir", split="train")
    assert index.case_ids == ["img1_lesion", "img1_lung"] and not index.findings
    assert index[0].image == tree / "images" / "kvasir" / "img1.png"
    assert open_dataset(tree / "anns" / "kvasir" / "testA.json")[0].mask == tree / "masks" / "kvasir" / "img2_lesion.png"


# --- CSV -------------------------------------------------------------------------------------------------------


def test_csv_several_masks_per_image(tmp_path):
    root = make_pairs(tmp_path / "bp", ["01_CT_lung", "02_MRI_brain"], mask_dir=None)
    rows = []
    for image, target in [("01_CT_lung", "nodule"), ("01_CT_lung", "COVID-19 infection"), ("02_MRI_brain", "tumor")]:
        mask = f"masks/{image}_{target.replace(' ', '+')}.png"
        save_png(root / mask, blob(32, len(rows)) * 255)
        rows.append([f"images/{image}.png", mask, image.split("_")[1], target, f"{target} in {image.split('_')[2]}"])
    write_csv(root / "pairs.csv", ["image", "mask", "modality", "target", "prompt"], rows)
    assert detect_layout(root) == "csv"
    index = open_dataset(root)
    assert index.case_ids == ["01_CT_lung_nodule", "01_CT_lung_COVID-19+infection", "02_MRI_brain_tumor"]
    rec = index["01_CT_lung_COVID-19+infection"]
    assert rec.image.name == "01_CT_lung.png" and rec.text == "COVID-19 infection in lung"
    assert rec.meta["modality"] == "CT" and rec.meta["target"] == "COVID-19 infection" and rec.meta["row"] == 3
    assert not index.findings and index.has_text


def test_csv_problems_rows_named(tmp_path):
    root = make_pairs(tmp_path / "c", ["a", "b"])
    write_csv(root / "list.csv", ["image_path", "mask_path", "text"],
              [["images/a.png", "masks/a.png", "x"], ["images/a.png", "masks/a.png", "y"], ["images/b.png", "masks/b.png", ""], ["images/q.png", "", "z"]])
    index = open_dataset(root / "list.csv")
    assert index.case_ids == ["a", "b"]
    found = sorted((f.kind, f.message.split(":")[0] if f.kind != "missing_file" else Path(f.path).name) for f in index.findings)
    assert found == [("duplicate_case", "row 3"), ("missing_file", "q.png"), ("missing_text", "list.csv row 4")]


# --- JCS pair lists ----------------------------------------------------------------------------------------------


def test_jcs_pair_lists(tmp_path):
    root = tmp_path / "COVID-19-CT100"
    make_pairs(root, ["tr_im_0001", "tr_im_0002", "tr_im_0003"], "tr_im", None)
    for i in (1, 2, 3):
        save_palette(root / "tr_mask_new" / f"tr_mask_{i:04d}.png", blob(32, i))
    (root / "train.txt").write_text("tr_im/tr_im_0001.png tr_mask_new/tr_mask_0001.png\ntr_im/tr_im_0002.png tr_mask_new/tr_mask_0002.png 1\n")
    (root / "test.txt").write_text("tr_im/tr_im_0003.png\ttr_mask_new/tr_mask_0003.png\n\n# comment\ntr_im/tr_im_0009.png tr_mask_new/tr_mask_0009.png\n")
    assert detect_layout(root) == "jcs" and list_splits(root) == ["test", "train"]
    train = open_dataset(root, split="train")
    assert train.case_ids == ["tr_im_0001", "tr_im_0002"] and train["tr_im_0002"].label == 1
    assert train["tr_im_0001"].mask.name == "tr_mask_0001.png" and not train.findings
    test = open_dataset(root / "test.txt")
    assert test.case_ids == ["tr_im_0003"]
    assert {(f.kind, Path(f.path).name) for f in test.findings} == {("missing_file", "tr_im_0009.png"), ("missing_file", "tr_mask_0009.png")}
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "val.txt").write_text("tr_im/tr_im_0003.png tr_mask_new/tr_mask_0003.png\n")
    assert open_dataset(lists / "val.txt", list_root=root)[0].image == root / "tr_im" / "tr_im_0003.png"


# --- NIfTI and nnU-Net ----------------------------------------------------------------------------------------------


def test_nifti_images_and_masks(tmp_path):
    root = tmp_path / "ct"
    affine = make_volume_pair(root / "images", root / "masks", "case1")
    make_volume_pair(root / "images", None, "case2", seed=1)
    assert detect_layout(root) == "nifti"
    index = open_dataset(root)
    assert index.volumetric and index.case_ids == ["case1", "case2"]
    assert [(f.kind, Path(f.path).name) for f in index.findings] == [("orphan_image", "case2.nii.gz")]
    sample = load_sample(index["case1"])
    assert sample.image.shape == (10, 9, 4) and sample.spacing == pytest.approx((0.9, 0.8, 3.0))
    np.testing.assert_allclose(sample.affine, affine)
    assert sample.mask.sum() == 4 * 4 * 2 and sample.edge is not None and sample.edge.shape == (10, 9, 4)


def test_nnunet_channels_splits_dataset_json(tmp_path):
    root = tmp_path / "Dataset501_Covid"
    for i in range(2):
        make_volume_pair(root / "imagesTr", root / "labelsTr", f"covid_{i:03d}", seed=i, channels=2)
    make_volume_pair(root / "imagesTs", None, "covid_100", channels=2)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT", "1": "CT2"}, "labels": {"background": 0, "lesion": 1}, "file_ending": ".nii.gz"}))
    assert detect_layout(root) == "nifti" and list_splits(root) == ["train", "test"]
    train = open_dataset(root, split="train")
    assert train.case_ids == ["covid_000", "covid_001"] and train.info["labels"] == {"background": 0, "lesion": 1}
    rec = train["covid_001"]
    assert rec.image.name == "covid_001_0000.nii.gz" and len(rec.meta["channels"]) == 2
    assert rec.mask.name == "covid_001.nii.gz"
    assert load_sample(rec).image.shape == (10, 9, 4, 2)
    test = open_dataset(root, split="test")
    assert test[0].mask is None and [f.kind for f in test.findings] == ["unlabelled"]
    assert open_dataset(root).case_ids == ["train/covid_000", "train/covid_001", "test/covid_100"]


# --- DICOM -------------------------------------------------------------------------------------------------------------


def test_dicom_series_folders_with_nifti_masks(tmp_path):
    from tests.data.test_imageio import phantom_volume, ras_affine, write_dicom_series

    root = tmp_path / "dicom"
    affine = ras_affine()
    volume = phantom_volume((8, 6, 4))
    write_dicom_series(root / "patient1", volume, affine)
    write_dicom_series(root / "patient2", phantom_volume((8, 6, 4), seed=1), affine, seed=1)
    mask = (volume > 500).astype(np.uint8)
    write_volume(root / "masks" / "patient1.nii.gz", mask, affine, dtype="uint8")
    assert detect_layout(root) == "dicom" and detect_layout(root / "patient1") == "dicom"
    index = open_dataset(root)
    assert index.case_ids == ["patient1", "patient2"] and index.volumetric
    assert [(f.kind, Path(f.path).name) for f in index.findings] == [("orphan_image", "patient2")]
    sample = load_sample(index["patient1"])
    np.testing.assert_array_equal(sample.image, volume)
    np.testing.assert_array_equal(sample.mask, mask)
    np.testing.assert_allclose(sample.affine, affine, atol=1e-4)
    single = open_dataset(root / "patient2")
    assert single.case_ids == ["patient2"] and single[0].mask is None


# --- split containers, detection, errors ----------------------------------------------------------------------------------


def test_split_container(tmp_path):
    root = tmp_path / "ds"
    make_folder(root / "train", n=3)
    make_folder(root / "valid", n=2)
    make_pairs(root / "unlabeled", ["u0", "u1"], mask_dir=None)
    (root / "notes").mkdir()
    (root / "notes" / "ids.txt").write_text("1\n2\n")
    assert detect_layout(root) == "splits" and list_splits(root) == ["train", "unlabeled", "valid"]
    valid = open_dataset(root, split="val")
    assert valid.split == "valid" and valid.case_ids == ["0", "1"] and valid[0].meta["split"] == "valid"
    merged = open_dataset(root)
    assert merged.splits == ["train", "unlabeled", "valid"] and len(merged) == 7
    assert merged.case_ids[:4] == ["train/0", "train/1", "train/2", "unlabeled/u0"]
    assert merged.summary()["unlabelled"] == 2
    assert merged.select(["valid/1", "u1"]).case_ids == ["valid/1", "unlabeled/u1"]
    with pytest.raises(DataError, match="not found"):
        merged.select(["nope"])


def test_detection_errors_and_explicit_layout(tmp_path):
    with pytest.raises(DataError, match="dataset path not found"):
        open_dataset(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no known dataset layout") as err:
        open_dataset(tmp_path / "empty")
    assert err.value.path == str(tmp_path / "empty")
    with pytest.raises(DataError, match="unknown layout 'coco'"):
        open_dataset(tmp_path / "empty", layout="coco")
    root = make_pairs(tmp_path / "odd", ["a"], "Imgs", "GT")
    assert open_dataset(root, layout="infnet").layout == "infnet"
    with pytest.raises(DataError, match="no images/ folder"):
        open_dataset(root, layout="folder")
    with pytest.raises(TypeError, match="unknown dataset option"):
        open_dataset(root, colour="red")


@pytest.mark.parametrize("first", ["folder", "infnet", "nifti"])
def test_detection_order_does_not_depend_on_which_layout_module_is_imported_first(first):
    """Layouts register at import; importing one family module directly, before the registry
    loads the rest, must not move it ahead in the detection order."""
    import subprocess
    import sys

    code = (
        f"import covseg.data.layouts.{first}, sys; from covseg.data import layout_names; "
        "print(','.join(layout_names())); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["lvit,qata,cris,csv,jcs,infnet,cosup,nifti,flare,dicom,folder", "False"]
