"""Text sources: LViT xlsx, QaTa captions.csv and annotation.json, CRIS prompts, CSV prompts, mappings."""

from __future__ import annotations

import json

import pytest

from covseg.data.text_sources import (
    TextTable,
    load_texts,
    name_key,
    read_cris_prompts,
    read_csv_texts,
    read_lvit_texts,
    read_qata_annotation,
    read_qata_captions,
    read_text_mapping,
    resolve_split,
)
from covseg.errors import DataError

from tests.data.test_data_layouts import write_csv, write_xlsx

# --- LViT xlsx ------------------------------------------------------------------------------------


def test_lvit_xlsx_maps_image_to_description(tmp_path):
    path = write_xlsx(tmp_path / "Train_text.xlsx", [("mask_covid_1.png", " Bilateral pulmonary infection. "), ("mask_covid_2.png", "one area")])
    table = read_lvit_texts(path)
    assert isinstance(table, TextTable) and table.kind == "lvit"
    assert dict(table) == {"mask_covid_1.png": "Bilateral pulmonary infection.", "mask_covid_2.png": "one area"}
    assert table.lookup("/data/img/covid_1.png").text == "Bilateral pulmonary infection."  # image name finds mask_ key
    assert table.find("labelcol/mask_covid_2.png")[0] == "mask_covid_2.png"
    assert table.lookup("covid_3.png") is None


def test_lvit_xlsx_missing_column_names_file_and_columns(tmp_path):
    path = write_xlsx(tmp_path / "Val_text.xlsx", [("a.png", "x")], header=("Image", "Text"))
    with pytest.raises(DataError) as err:
        read_lvit_texts(path)
    assert err.value.path == str(path)
    assert err.value.problem == "column 'Description' not found (columns: Image, Text)"
    assert read_lvit_texts(path, text_column="Text")["a.png"] == "x"


def test_lvit_xlsx_empty_caption_names_the_row(tmp_path):
    path = write_xlsx(tmp_path / "Test_text.xlsx", [("a.png", "fine"), ("b.png", None), ("c.png", "fine too")])
    with pytest.raises(DataError, match=r"row 3: empty 'Description' for 'b.png' \(missing caption\)") as err:
        read_lvit_texts(path)
    assert err.value.path == str(path)
    problems = []
    table = read_lvit_texts(path, problems=problems)
    assert list(table) == ["a.png", "c.png"]
    assert [(p.row, str(p)) for p in problems] == [(3, "row 3: empty 'Description' for 'b.png' (missing caption)")]


def test_unreadable_spreadsheet(tmp_path):
    (tmp_path / "bad.xlsx").write_text("not a workbook")
    with pytest.raises(DataError, match="unreadable spreadsheet"):
        read_lvit_texts(tmp_path / "bad.xlsx")


# --- QaTa ------------------------------------------------------------------------------------------


def test_qata_captions_structured_fields(tmp_path):
    path = write_csv(
        tmp_path / "captions.csv",
        ["name", "caption", "pulmonary_infection", "infected_area", "pseudo_label", "orig_image", "orig_mask"],
        [["covid_1", "bilateral pulmonary infection, five infected areas.", 2, 5, "[1, 1, 1, 0, 1, 1]", "data/a.png", "data/mask_a.png"]],
    )
    table = read_qata_captions(path)
    entry = table.entry("covid_1")
    assert entry.text == "bilateral pulmonary infection, five infected areas."
    assert entry.meta == {"pulmonary_infection": 2, "infected_area": 5, "pseudo_label": [1, 1, 1, 0, 1, 1],
                          "orig_image": "data/a.png", "orig_mask": "data/mask_a.png"}
    assert table.lookup("masks/mask_covid_1.png") is entry


def test_qata_captions_errors(tmp_path):
    no_caption = write_csv(tmp_path / "a.csv", ["name", "text_en"], [["covid_1", "x"]])
    with pytest.raises(DataError, match=r"column 'caption' not found \(columns: name, text_en\)"):
        read_qata_captions(no_caption)
    empty = write_csv(tmp_path / "b.csv", ["name", "caption"], [["covid_1", "x"], ["covid_2", "  "]])
    with pytest.raises(DataError, match=r"row 3: empty 'caption' for 'covid_2' \(missing caption\)"):
        read_qata_captions(empty)
    bad = write_csv(tmp_path / "c.csv", ["name", "caption", "pseudo_label"], [["covid_1", "x", "[1, 0"]])
    with pytest.raises(DataError, match="row 2: bad structured field"):
        read_qata_captions(bad)


def test_qata_annotation_json_splits(tmp_path):
    data = {
        "train": [{"image_path": "mask_covid_1.png", "caption": "c1", "pulmonary_infection": 1, "infected_area": 1, "pseudo_label": [0, 0, 1, 0, 0, 0]}],
        "valid": [{"image_path": "mask_sub-1.png", "caption": "v1", "pulmonary_infection": 2, "infected_area": 2, "pseudo_label": [1, 0, 0, 1, 0, 0]},
                  {"image_path": "mask_sub-2.png", "caption": ""}],
    }
    path = tmp_path / "annotation.json"
    path.write_text(json.dumps(data))
    train = read_qata_annotation(path, split="train")
    assert dict(train) == {"mask_covid_1.png": "c1"} and train.lookup("covid_1.png").meta["split"] == "train"
    with pytest.raises(DataError, match=r"valid\[1\]: empty 'caption' for 'mask_sub-2.png' \(missing caption\)"):
        read_qata_annotation(path, split="val")
    problems = []
    assert list(read_qata_annotation(path, problems=problems)) == ["mask_covid_1.png", "mask_sub-1.png"]
    assert len(problems) == 1
    with pytest.raises(DataError, match=r"no split 'test' \(splits: train, valid\)"):
        read_qata_annotation(path, split="test")


# --- CRIS prompts ------------------------------------------------------------------------------------


def test_cris_prompts(tmp_path):
    refs = [
        {"img_name": "1.png", "mask_name": "1.png", "prompts": {"p0": "", "p1": "infection", "p2": ["ground glass", "opacity"]}},
        {"img_name": "2.png", "mask_name": "2.png", "sentences": [{"sent": "lesion on the left"}, {"sent": "left lesion"}]},
    ]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(refs))
    table = read_cris_prompts(path)
    assert dict(table) == {"1.png": "infection", "2.png": "lesion on the left"}
    assert table.entry("1.png").texts == {"p1": "infection", "p2": "ground glass"}
    assert table.entry("1.png").meta["prompt_choices"] == {"p2": ["ground glass", "opacity"]}
    assert table.entry("2.png").texts == {"sent0": "lesion on the left", "sent1": "left lesion"}
    assert read_cris_prompts(path, prompt="P2", problems=[])["1.png"] == "ground glass"
    with pytest.raises(DataError, match=r"item 1: no prompt 'P2' for '2.png' \(has sent0, sent1\)"):
        read_cris_prompts(path, prompt="P2")


def test_cris_missing_text_and_shape_errors(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps([{"img_name": "1.png", "mask_name": "1.png", "prompts": {"p0": ""}}]))
    with pytest.raises(DataError, match=r"item 0: no prompts or sentences for '1.png' \(missing text\)"):
        read_cris_prompts(path)
    path.write_text(json.dumps({"a": 1}))
    with pytest.raises(DataError, match="expected a JSON list"):
        read_cris_prompts(path)
    path.write_text("{broken")
    with pytest.raises(DataError, match="unreadable JSON"):
        read_cris_prompts(path)


# --- CSV prompt column ------------------------------------------------------------------------------------


def test_csv_prompt_column_keyed_by_mask_or_image(tmp_path):
    path = write_csv(tmp_path / "pairs.csv", ["image", "mask", "prompt"],
                     [["images/a.png", "masks/a_lesion.png", "lesion in CT"], ["images/a.png", "masks/a_lung.png", "lung in CT"]])
    by_mask = read_csv_texts(path)
    assert dict(by_mask) == {"masks/a_lesion.png": "lesion in CT", "masks/a_lung.png": "lung in CT"}
    assert by_mask.lookup("/x/masks/a_lung.png").text == "lung in CT"
    by_image = read_csv_texts(path, key_column="image")
    assert by_image.entry("images/a.png").texts == {"row2": "lesion in CT", "row3": "lung in CT"}
    with pytest.raises(DataError, match=r"column 'caption' not found \(columns: image, mask, prompt\)"):
        read_csv_texts(path, text_column="caption")
    empty = write_csv(tmp_path / "e.csv", ["image", "text"], [["a.png", ""]])
    with pytest.raises(DataError, match=r"row 2: empty 'text' for 'a.png' \(missing text\)"):
        read_csv_texts(empty)


def test_csv_semicolon_and_quoted_commas(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text('image;caption\na.png;"left, lower lobe"\n', encoding="utf-8")
    assert read_csv_texts(path)["a.png"] == "left, lower lobe"


# --- plain mappings and dispatch --------------------------------------------------------------------------


def test_plain_mappings(tmp_path):
    assert dict(read_text_mapping({"a": "x", "b.png": {"P0": "y", "P1": "z"}})) == {"a": "x", "b.png": "y"}
    (tmp_path / "m.json").write_text(json.dumps({"c": "w"}))
    assert dict(read_text_mapping(tmp_path / "m.json")) == {"c": "w"}
    (tmp_path / "m.tsv").write_text("# stem\ttext\nd\tleft lung, lower\ne,right lung\n")
    assert dict(read_text_mapping(tmp_path / "m.tsv")) == {"d": "left lung, lower", "e": "right lung"}
    (tmp_path / "bad.txt").write_text("f\t \n")
    with pytest.raises(DataError, match=r"row 1: empty text for 'f' \(missing caption\)"):
        read_text_mapping(tmp_path / "bad.txt")
    with pytest.raises(DataError, match="empty text for 'g'"):
        read_text_mapping({"g": ""})


def test_load_texts_chooses_the_reader(tmp_path):
    xlsx = write_xlsx(tmp_path / "Train_text.xlsx", [("a.png", "x")])
    qata = write_csv(tmp_path / "captions.csv", ["name", "caption"], [["a", "y"]])
    prompts = write_csv(tmp_path / "p.csv", ["image", "prompt"], [["a.png", "z"]])
    (tmp_path / "ann.json").write_text(json.dumps({"train": [{"image_path": "mask_a.png", "caption": "q"}]}))
    (tmp_path / "cris.json").write_text(json.dumps([{"img_name": "a.png", "mask_name": "a.png", "prompts": {"p0": "r"}}]))
    (tmp_path / "map.json").write_text(json.dumps({"a": "s"}))
    kinds = {p.name: load_texts(p).kind for p in (xlsx, qata, prompts, tmp_path / "ann.json", tmp_path / "cris.json", tmp_path / "map.json")}
    assert kinds == {"Train_text.xlsx": "lvit", "captions.csv": "qata-captions", "p.csv": "csv",
                     "ann.json": "qata-annotation", "cris.json": "cris", "map.json": "mapping"}
    with pytest.raises(DataError, match="unknown text source type"):
        load_texts(tmp_path / "x.docx")


def test_name_keys_and_split_aliases():
    assert name_key("labelcol/mask_covid_1.png") == "covid_1"
    assert name_key("case.nii.gz") == "case"
    assert name_key("mask_") == "mask_"
    assert resolve_split("val", ["train", "valid"]) == "valid"
    assert resolve_split("Validation", ["train", "val"]) == "val"
    assert resolve_split("test", ["train", "valid"]) is None
