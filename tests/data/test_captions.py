"""Captions and prompt types made from masks: synthetic masks whose zones, sides, counts and extent are known."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from covseg.data.captions import (
    LungFrame,
    describe_mask,
    location_phrase,
    prompt_types,
    qata_caption,
    zone_agreement,
)
from covseg.data.text_sources import load_texts

H = W = 120  # default frame: zones cut at rows 0-34, 34-56, 56-120 (thirds of 0.10..0.65, open ends); midline at column 60


def blob(mask: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    mask[rows, cols] = 1
    return mask


def test_frame_rows_and_lung_mask_frame():
    assert LungFrame().zone_rows(H) == [(0, 34), (34, 56), (56, 120)]
    lungs = np.zeros((H, W), np.uint8)
    lungs[30:90, 10:50] = 1
    lungs[30:90, 70:110] = 1
    frame = LungFrame.from_lung_mask(lungs)
    assert (frame.top, frame.bottom, frame.midline) == (0.25, 0.75, 0.5)
    assert frame.zone_rows(H) == [(30, 50), (50, 70), (70, 90)]


def test_one_lower_right_region():
    m = blob(np.zeros((H, W), np.uint8), slice(80, 100), slice(80, 100))  # image right, lower zone
    f = describe_mask(m)
    assert f.zones == [0, 0, 0, 0, 0, 1] and f.sides == ["right"] and f.laterality == "unilateral"
    assert f.regions == 1 and f.infected_areas == 1
    assert f.extent == pytest.approx(400 / (H * W))
    assert qata_caption(f) == "unilateral pulmonary infection, one infected area, lower right lung."


def test_bilateral_zones_counts_and_qata_wording():
    m = np.zeros((H, W), np.uint8)
    blob(m, slice(5, 100), slice(10, 40))  # left: upper, middle, lower (one region)
    blob(m, slice(60, 70), slice(70, 80))  # right lower, two separate regions
    blob(m, slice(85, 95), slice(90, 100))
    f = describe_mask(m)
    assert f.zones == [1, 1, 1, 0, 0, 1] and f.laterality == "bilateral" and f.regions == 3
    assert qata_caption(f) == "bilateral pulmonary infection, four infected areas, upper middle lower left lung and lower right lung."
    assert location_phrase(f.zones) == "upper middle lower left lung and lower right lung"
    assert f.extent == pytest.approx((95 * 30 + 200) / (H * W)) and f.extent_word == "extensive"  # 21 % of the image


def test_specks_below_the_zone_threshold_do_not_count():
    m = blob(np.zeros((H, W), np.uint8), slice(80, 100), slice(80, 100))
    m[10:12, 10:12] = 1  # 4 pixels in the left upper zone: 0.03 % of the image, below 0.4 %
    f = describe_mask(m)
    assert f.zones == [0, 0, 0, 0, 0, 1] and f.regions == 1
    assert describe_mask(m, min_zone_fraction=0.0001, min_region_fraction=0.0001).zones == [1, 0, 0, 0, 0, 1]


def test_lung_mask_sets_the_zones_and_the_extent():
    lungs = np.zeros((H, W), np.uint8)
    lungs[30:90, 10:50] = 1
    lungs[30:90, 70:110] = 1  # 4,800 lung pixels; zones rows 30-50, 50-70, 70-90
    m = blob(np.zeros((H, W), np.uint8), slice(52, 68), slice(20, 40))  # left middle, 320 px
    f = describe_mask(m, lungs=lungs)
    assert f.zones == [0, 1, 0, 0, 0, 0] and f.extent == pytest.approx(320 / 4800)
    assert f.frame["extent_of"] == "lungs"
    assert "about 7% of the lung field" in prompt_types(f)["P3"][0]


def test_empty_mask_and_prompt_types():
    f = describe_mask(np.zeros((H, W), np.uint8))
    assert f.laterality is None and f.zones == [0] * 6 and f.regions == 0 and f.extent == 0
    assert qata_caption(f) == "no pulmonary infection."
    m = blob(np.zeros((H, W), np.uint8), slice(80, 100), slice(80, 100))
    p = prompt_types(describe_mask(m), caption="human caption")
    assert list(p) == ["P0", "P1", "P2", "P3", "P4"]
    assert p["P0"][0] == "pulmonary infection"
    assert p["P1"][0] == "unilateral pulmonary infection in the lower right lung"
    assert p["P2"][0] == "unilateral pulmonary infection in the lower right lung, one infected region"
    assert p["P3"][0] == p["P2"][0] + ", small extent, about 3% of the image"
    assert p["P4"] == ["human caption"]
    assert all(len(v) >= 1 for v in p.values()) and len(p["P0"]) == 3  # phrasings to sample from


def test_zone_agreement():
    a = zone_agreement([[1, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0]], [[1, 0, 0, 0, 0, 1], [0, 0, 0, 1, 0, 0]])
    assert a["all_six_zones"] == 0.5 and a["per_zone"] == pytest.approx(10 / 12)
    assert a["laterality"] == 1.0 and a["infected_area_count"] == 1.0


def test_make_captions_cli_writes_a_text_source(tmp_path):
    from tests.text.test_prompts import run_cli

    (tmp_path / "masks").mkdir()
    m1 = blob(np.zeros((H, W), np.uint8), slice(80, 100), slice(80, 100))
    m2 = blob(blob(np.zeros((H, W), np.uint8), slice(5, 20), slice(10, 40)), slice(5, 20), slice(70, 100))
    Image.fromarray(m1 * 255).save(tmp_path / "masks" / "a.png")
    Image.fromarray(m2 * 255).save(tmp_path / "masks" / "b.png")
    (tmp_path / "masks" / "broken.png").write_bytes(b"not a png")
    human = tmp_path / "human.csv"
    human.write_text("name,caption\na,the human words for a\n")
    out, prompts = tmp_path / "captions.csv", tmp_path / "prompts.json"
    code = run_cli("text", "make-captions", "--masks", tmp_path / "masks", "--out", out, "--prompts", prompts, "--captions", human, "-q")
    assert code == 1  # the broken mask is listed, the others written
    rows = {r["name"]: r for r in csv.DictReader(out.open())}
    assert set(rows) == {"a", "b"}
    assert rows["b"]["caption"] == "bilateral pulmonary infection, two infected areas, upper left lung and upper right lung."
    assert rows["b"]["pseudo_label"] == "[1, 0, 0, 1, 0, 0]" and rows["b"]["regions"] == "2" and rows["b"]["pulmonary_infection"] == "2"
    table = load_texts(out)  # QaTa captions.csv reader: usable as data.text
    assert table.lookup(tmp_path / "masks" / "a.png").meta["pseudo_label"] == [0, 0, 0, 0, 0, 1]
    items = {i["mask_name"]: i for i in json.loads(prompts.read_text())}
    assert items["a.png"]["prompts"]["P4"] == ["the human words for a"]
    assert items["b.png"]["prompts"]["P4"] == [rows["b"]["caption"]]  # no human caption: the generated one
    cris = load_texts(prompts, prompt="P1")  # CRIS reader picks the type
    assert cris.lookup("a.png").text == "unilateral pulmonary infection in the lower right lung"

    # covseg.api.make_captions is the call behind the command: the same file, the rows and the failure returned
    from covseg.api import make_captions
    from covseg.errors import CovsegError

    started: list[int] = []
    rows_api, failed = make_captions(tmp_path / "masks", tmp_path / "api.csv", captions=human, on_start=started.append)
    assert (tmp_path / "api.csv").read_text() == out.read_text() and started == [3]
    assert [r.caption for r in rows_api] == [rows["a"]["caption"], rows["b"]["caption"]]
    assert [p.name for p, _ in failed] == ["broken.png"]
    with pytest.raises(CovsegError, match=r"broken\.png"):
        make_captions(tmp_path / "masks", tmp_path / "strict.csv", strict=True)


@pytest.mark.data
def test_qata_generated_captions_agree_with_the_human_zones(real_data):
    """On QaTa valid (the lung frame was fitted on train): sides almost always, zones mostly."""
    from covseg.data.captions import caption_for_file, mask_files

    root = real_data / "qata_cov19_sgseg" / "valid"
    human = load_texts(root / "captions.csv")
    files = mask_files(root / "masks")[::10]
    rows = [caption_for_file(p, None, human) for p in files]
    agree = zone_agreement([r.facts.zones for r in rows], [human.lookup(r.mask).meta["pseudo_label"] for r in rows])
    assert agree["laterality"] > 0.95 and agree["per_zone"] > 0.8
