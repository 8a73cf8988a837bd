"""``covseg data check``: every problem kind detected and named, severities, CLI, the real datasets."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from covseg.cli.main import main
from covseg.data import SEVERITY, open_dataset
from covseg.data.check import check_dataset
from covseg.data.imageio import write_volume

from tests.data.test_data_layouts import (
    blob,
    make_folder,
    make_pairs,
    make_qata,
    make_volume_pair,
    picture,
    save_png,
)


def run_cli(capsys, *args: str) -> tuple[int, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def make_broken_folder(root: Path) -> dict[str, str]:
    """A folder-layout dataset with one instance of every 2D problem; returns kind → file name."""
    make_pairs(root, ["a_good", "b_good"])
    (root / "texts.json").write_text(json.dumps({"a_good": "lesion", "b_good": "lesion", "c_size": "x", "d_trunc": "x",
                                                 "e_grey": "x", "f_empty": "x", "g_colour": "x", "i_nan": "x", "zz_mask": "x"}))
    save_png(root / "images" / "c_size.png", picture(32, 3))
    save_png(root / "masks" / "c_size.png", blob(40) * 255)
    good = save_png(root / "images" / "d_trunc.png", picture(32, 4))
    good.write_bytes(good.read_bytes()[:200])  # truncated file
    save_png(root / "masks" / "d_trunc.png", blob(32) * 255)
    save_png(root / "images" / "e_grey.png", picture(32, 5))
    grey = blob(32, 5) * 255
    grey[grey == 0] = np.arange((grey == 0).sum()) % 7  # JPEG-like noise in the background
    save_png(root / "masks" / "e_grey.png", grey)
    save_png(root / "images" / "f_empty.png", picture(32, 6))
    save_png(root / "masks" / "f_empty.png", np.zeros((32, 32), np.uint8))
    save_png(root / "images" / "g_colour.png", picture(32, 7))
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[blob(32, 7) > 0] = (255, 0, 0)
    colour[:4, :4] = (0, 255, 0)
    save_png(root / "masks" / "g_colour.png", colour)
    save_png(root / "images" / "h_orphan.png", picture(32, 8))  # no mask, no text
    import tifffile

    nan_image = picture(32, 9).astype(np.float32)
    nan_image[5, 5] = np.nan
    tifffile.imwrite(root / "images" / "i_nan.tif", nan_image)
    save_png(root / "masks" / "i_nan.png", blob(32, 9) * 255)
    save_png(root / "masks" / "zz_mask.png", blob(32) * 255)  # no image
    return {
        "size_mismatch": "c_size.png",
        "unreadable": "d_trunc.png",
        "non_binary_mask": "e_grey.png",
        "empty_mask": "f_empty.png",
        "orphan_image": "h_orphan.png",
        "missing_text": "h_orphan.png",
        "nan_volume": "i_nan.tif",
        "orphan_mask": "zz_mask.png",
    }


def test_check_detects_and_names_every_problem(tmp_path, capsys):
    root = tmp_path / "broken"
    expected = make_broken_folder(root)
    report = check_dataset(root, workers=1)
    by_kind: dict[str, set[str]] = {}
    for f in report.all_findings():
        by_kind.setdefault(f.kind, set()).add(Path(f.path).name)
    for kind, name in expected.items():
        assert name in by_kind.get(kind, set()), f"{kind} not reported for {name}: {by_kind}"
    assert by_kind["non_binary_mask"] == {"e_grey.png", "g_colour.png"}
    assert by_kind["unused_text"] == {"texts.json"}  # zz_mask has text but no image
    assert not ({"a_good.png", "b_good.png"} & set().union(*by_kind.values()))
    size = next(f for f in report.findings if f.kind == "size_mismatch")
    assert size.message == f"mask is 40×40 but image {root / 'images' / 'c_size.png'} is 32×32"
    assert report.count("warning") == 1 and not report.ok()

    code, out = run_cli(capsys, "data", "check", root, "--json", tmp_path / "report.json", "--workers", "2")
    assert code == 1 and "FAILED" in out
    for name in expected.values():
        assert name in out
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["ok"] is False and data["kinds"]["orphan_image"] == 1
    assert {f["kind"] for f in data["findings"]} >= set(expected)
    assert all(f["severity"] == SEVERITY[f["kind"]] for f in data["findings"])


def test_check_volumes_nan_geometry_labels(tmp_path):
    root = tmp_path / "ct"
    affine = make_volume_pair(root / "images", root / "masks", "good")
    make_volume_pair(root / "images", root / "masks", "nan", seed=1)
    vol = np.ones((10, 9, 4), np.float32)
    vol[1, 1, 1] = np.nan
    write_volume(root / "images" / "nan.nii.gz", vol, affine)
    make_volume_pair(root / "images", root / "masks", "shifted", seed=2)
    write_volume(root / "masks" / "shifted.nii.gz", np.ones((10, 9, 4), np.uint8), affine @ np.diag([1, 1, -1, 1.0]), dtype="uint8")
    make_volume_pair(root / "images", root / "masks", "soft", seed=3)
    write_volume(root / "masks" / "soft.nii.gz", np.full((10, 9, 4), 0.5, np.float32), affine)
    make_volume_pair(root / "images", root / "masks", "empty", seed=4)
    write_volume(root / "masks" / "empty.nii.gz", np.zeros((10, 9, 4), np.uint8), affine, dtype="uint8")
    found = {(f.kind, Path(f.path).name) for f in check_dataset(root).all_findings()}
    assert found == {
        ("nan_volume", "nan.nii.gz"),
        ("geometry_mismatch", "shifted.nii.gz"),
        ("non_binary_mask", "soft.nii.gz"),
        ("empty_mask", "empty.nii.gz"),
    }


def test_check_text_layouts_and_strict(tmp_path, capsys):
    root = make_qata(tmp_path / "qata", ["covid_1", "covid_2", "covid_3"])
    lines = (root / "captions.csv").read_text().splitlines()
    (root / "captions.csv").write_text("\n".join(lines[:-1]) + "\n")  # covid_3 loses its caption
    report = check_dataset(root)
    assert [(f.kind, Path(f.path).name) for f in report.findings] == [("missing_text", "covid_3.png")]
    assert report.pairs == 3 and report.with_text == 2 and not report.ok()

    ok = make_folder(tmp_path / "ok", n=3, empty=("1",))
    code, out = run_cli(capsys, "data", "check", ok)
    assert code == 0 and "empty_mask (1)" in out and "masks/1.png: mask has no foreground" in out
    code, out = run_cli(capsys, "data", "check", ok, "--strict")
    assert code == 1 and "--strict" in out


def test_check_splits_each_split_and_one_split(tmp_path, capsys):
    root = tmp_path / "ds"
    make_folder(root / "train", n=3)
    make_pairs(root / "unlabeled", ["u0", "u1"], mask_dir=None)
    save_png(root / "valid" / "images" / "v0.png", picture(32))
    save_png(root / "valid" / "masks" / "v0.png", blob(16) * 255)
    report = check_dataset(root)
    assert [p.split for p in report.parts] == ["train", "unlabeled", "valid"]
    assert [p.count("error") for p in report.parts] == [0, 0, 1] and report.parts[1].count("warning") == 1
    code, out = run_cli(capsys, "data", "check", root, "--split", "train")
    assert code == 0 and "3 cases" in out
    code, out = run_cli(capsys, "data", "check", root)
    assert code == 1 and "size_mismatch (1)" in out and "v0.png" in out


def test_check_cli_user_errors_are_one_line(tmp_path, capsys):
    code, out = run_cli(capsys, "data", "check", tmp_path / "nowhere")
    assert code == 2 and "dataset path not found" in out and "Traceback" not in out
    (tmp_path / "empty").mkdir()
    code, out = run_cli(capsys, "data", "check", tmp_path / "empty")
    assert code == 2 and "no known dataset layout" in out


def test_layouts_command_lists_every_layout(capsys):
    from covseg.data import layout_names

    code, out = run_cli(capsys, "data", "layouts")
    assert code == 0
    for name in layout_names():
        assert name in out


# --- real datasets -------------------------------------------------------------------------------------

# folder → (layout, cases, pairs, with text, {finding kind: count}); checked through the CLI, once each.
REAL = {
    "biomedparse_demo_textprompt": ("csv", 71, 71, 71, {}),
    "covid19_ct100_jcs": ("folder", 52, 52, 0, {"empty_mask": 1}),
    "covid_semiseg_infnet": ("folder", 1650, 50, 0, {"unlabelled": 1, "ignored": 1}),
    "ct3d_totalseg_example": ("nifti", 1, 1, 0, {"multiclass_mask": 1}),
    "monuseg_lvit_val": ("lvit", 6, 6, 6, {}),
    "qata_cov19_sgseg": ("qata", 2429, 2429, 2429, {"ignored": 1}),
}
SPLITS = {
    "covid_semiseg_infnet/train": ("folder", 50, 50, 0, {}),
    "covid_semiseg_infnet/unlabeled": ("folder", 1600, 0, 0, {"unlabelled": 1}),
    "qata_cov19_sgseg/train": ("qata", 1000, 1000, 1000, {}),
    "qata_cov19_sgseg/valid": ("qata", 1429, 1429, 1429, {}),
}


def check_real(real_data, capsys, tmp_path, folder, expected):
    layout, cases, pairs, with_text, kinds = expected
    start = time.perf_counter()
    code, out = run_cli(capsys, "data", "check", real_data / folder, "--json", tmp_path / "r.json")
    seconds = time.perf_counter() - start
    print(f"{folder}: {cases} cases in {seconds:.1f} s")
    report = json.loads((tmp_path / "r.json").read_text())
    assert code == 0 and report["ok"], out
    assert f"layout: {layout}" in out and "OK:" in out and "0 errors" in out
    assert (report["layout"], report["cases"], report["pairs"], report["with_text"]) == (layout, cases, pairs, with_text)
    assert report["kinds"] == kinds
    return report, seconds


@pytest.mark.parametrize("folder", list(REAL))
def test_check_passes_on_real_data(real_data, folder, capsys, tmp_path):
    report, seconds = check_real(real_data, capsys, tmp_path, folder, REAL[folder])
    findings = report["findings"] + [f for part in report["parts"] for f in part["findings"]]
    if folder == "covid19_ct100_jcs":  # the known caveat: slice 0048 has an empty mask
        assert [(f["severity"], Path(f["path"]).name) for f in findings] == [("warning", "0048.png")]
    if folder == "qata_cov19_sgseg":
        assert [(p["split"], p["cases"]) for p in report["parts"]] == [("train", 1000), ("valid", 1429)]
        assert seconds < 60  # 2,429 pairs; about 4 s on 2 shared cores


@pytest.mark.slow
@pytest.mark.parametrize("folder", list(SPLITS))
def test_check_passes_on_real_splits(real_data, folder, capsys, tmp_path):
    check_real(real_data, capsys, tmp_path, folder, SPLITS[folder])


def test_qata_annotation_json_lists_the_whole_original_set(real_data):
    """annotation.json names all 5,716 QaTa training images; 1,000 are here: matched by file, rest reported."""
    ann = real_data / "qata_cov19_sgseg" / "annotations" / "annotation.json"
    train = open_dataset(real_data / "qata_cov19_sgseg" / "train", text=ann)
    [unused] = train.findings
    assert unused.kind == "unused_text" and "4716 of 5716" in unused.message
    assert sum(r.text is not None for r in train) == 1000
    captions = open_dataset(real_data / "qata_cov19_sgseg" / "train")
    same = sum(a.text == b.text for a, b in zip(train, captions))
    print(f"annotation.json and captions.csv agree on {same} of 1000 captions")
    assert same == 1000
