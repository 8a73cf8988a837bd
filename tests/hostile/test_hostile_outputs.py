"""Hostile input, round 2 (issue 25): outputs never written through links or over other people's files,
two runs into one folder lose no row, every CSV is neutralised by one writer, YAML cannot bomb.

Each test builds its inputs in a fresh folder and checks the exit code, the one line naming the
file at fault, and that every input (and the file that must survive) is byte-identical afterwards.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from covseg.cli.main import main
from covseg.errors import ConfigError, OutputError

from tests.helpers import phantom_dataset, tiny_config

SIZE = 32
SRC = Path(__file__).resolve().parents[2] / "src" / "covseg"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    """A phantom dataset and a one-epoch run on it, shared read-only by the tests."""
    from covseg.api import fit
    from covseg.training.config import load_config

    root = tmp_path_factory.mktemp("outputs_base")
    data = phantom_dataset(root / "data", n=8, size=SIZE)
    cfg = tiny_config(data, size=SIZE, epochs=1)
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    fit(load_config(raw=cfg), root / "run", quiet=True)
    return {"data": data, "cfg": root / "cfg.yaml", "run": root / "run"}


def run_cli(*args, capsys=None) -> tuple[int, str]:
    """Exit code and stderr+stdout of ``covseg ARGS`` run in-process."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    text = ""
    if capsys is not None:
        captured = capsys.readouterr()
        text = captured.err + captured.out
        assert "Traceback" not in text
    return code, text


def digest(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        out.update({str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
    return out


def one_error(text: str, pattern: str, names: str) -> str:
    """The only ``error:`` line of ``text``; it must match ``pattern`` and name ``names``."""
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    assert re.search(pattern, errors[0]), errors[0]
    assert names in errors[0], errors[0]
    return errors[0]


def images(base: dict[str, Path], folder: Path, ks: list[int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in ks:
        shutil.copyfile(base["data"] / "images" / f"phantom_{k:04d}.png", folder / f"img{k}.png")
    return folder


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------- 1. no writes through links
def test_predict_never_writes_through_a_masks_link_to_ground_truth(base, tmp_path, capsys):
    """An earlier output folder whose masks/ became a link to a dataset's ground truth is refused, marker or not."""
    inputs = images(base, tmp_path / "in", [0, 1])
    out = tmp_path / "out"
    assert run_cli("predict", "-m", base["run"], "-i", inputs, "-o", out, "-q", capsys=capsys)[0] == 0
    truth = tmp_path / "truth"
    shutil.copytree(base["data"] / "masks", truth)
    for k in (0, 1):  # ground truth named like the outputs, so a write through the link would replace it
        shutil.copyfile(truth / f"phantom_{k:04d}.png", truth / f"img{k}.png")
    before = digest(truth)
    shutil.rmtree(out / "masks")
    (out / "masks").symlink_to(truth, target_is_directory=True)
    code, text = run_cli("predict", "-m", base["run"], "-i", inputs, "-o", out, "-q", capsys=capsys)
    assert code == 2
    one_error(text, r"symbolic link leading out of the output folder", "masks")
    assert digest(truth) == before


def test_output_folder_checks_every_entry_not_only_the_marker(tmp_path):
    """A link inside any written path that leaves the folder is refused; a link staying inside is fine."""
    from covseg.utils.outputs import OutputFolder

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    out = tmp_path / "out"
    folder = OutputFolder(out, "predict", owned=("masks",))
    folder.prepare()
    (out / "masks").mkdir()
    (out / "masks" / "deep").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OutputError, match="symbolic link leading out") as err:
        folder.check(out / "masks" / "deep" / "a.png")
    assert err.value.path == str(out / "masks" / "deep")
    (out / "inner").mkdir()
    (out / "masks" / "near").symlink_to(out / "inner", target_is_directory=True)
    assert folder.check(out / "masks" / "near" / "a.png") == out / "masks" / "near" / "a.png"


def test_lock_file_that_is_a_link_is_never_followed(tmp_path):
    """``.lock`` pointing at someone's file: refused, and the file keeps its bytes."""
    from covseg.utils.outputs import folder_lock

    victim = tmp_path / "notes.txt"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").symlink_to(victim)
    with pytest.raises(OutputError, match="symbolic link"), folder_lock(out, "busy {holder}"):
        pass
    assert victim.read_text() == "precious\n"


# ------------------------------------------------------------------ 2. every writing command is guarded
def test_make_captions_out_onto_its_own_input_mask(base, tmp_path, capsys):
    masks = tmp_path / "masks"
    shutil.copytree(base["data"] / "masks", masks)
    before = digest(masks)
    code, text = run_cli("text", "make-captions", "--masks", masks, "--out", masks / "phantom_0000.png", "-q", capsys=capsys)
    assert code == 2
    one_error(text, r"report would be written into the input of covseg text make-captions", "phantom_0000.png")
    assert digest(masks) == before


def test_evaluate_prompts_out_onto_the_dataset_folder(tmp_path, capsys):
    """The dataset's own summary.json is not replaced (nor a zero-shot run made inside the dataset)."""
    import torch

    from covseg.data.synthetic_text import write_side_task

    from tests.clipseg_fixture import save_tiny_clipseg

    torch.set_num_threads(1)
    weights = save_tiny_clipseg(tmp_path / "clipseg")
    data = write_side_task(tmp_path / "data", n=2, size=32, seed=1)
    (data / "summary.json").write_text('{"mine": true}\n')
    prompts = side_prompts(data, tmp_path / "prompts.json", {"P0": ["opacity"]})
    before = digest(data)
    code, text = run_cli(
        "evaluate-prompts", "-m", f"zs={weights}", "--data", data, "--texts", prompts, "--prompt-types", "P0", "--out", data, "-q",
        capsys=capsys,
    )  # fmt: skip
    assert code == 2
    one_error(text, r"output folder is an input folder of covseg evaluate-prompts", "data")
    assert digest(data) == before
    assert sorted(p.name for p in data.iterdir()) == ["images", "masks", "summary.json", "texts.json"]


def side_prompts(root: Path, path: Path, prompts: dict[str, list[str]]) -> Path:
    """A CRIS-style prompt file giving every case of ``root`` the same ``prompts``."""
    stems = sorted(p.stem for p in (root / "images").iterdir())
    path.write_text(json.dumps([{"img_name": f"{s}.png", "mask_name": f"{s}.png", "prompts": prompts} for s in stems]))
    return path


def test_export_keeps_a_users_model_card_and_model(base, tmp_path, capsys):
    out = tmp_path / "deploy"
    out.mkdir()
    (out / "model_card.json").write_text('{"author": "me"}\n')
    (out / "model.onnx").write_bytes(b"my own model")
    before = digest(out)
    code, text = run_cli("export", "-m", base["run"], "-o", out, capsys=capsys)
    assert code == 2
    one_error(text, r"already holds model\.onnx, model_card\.json, not written by covseg export", "deploy")
    assert digest(out) == before
    fresh = tmp_path / "fresh"
    assert run_cli("export", "-m", base["run"], "-o", fresh, capsys=capsys)[0] == 0
    assert run_cli("export", "-m", base["run"], "-o", fresh, capsys=capsys)[0] == 0  # its own folder again: fine
    assert json.loads((fresh / "model_card.json").read_text())["format"].startswith("covseg-export")


def test_lungmask_keeps_a_users_lungs_csv(tmp_path, capsys):
    from covseg.data.synthetic3d import write_phantom_volumes

    volumes = write_phantom_volumes(tmp_path / "ct", 1, (32, 32, 12), (8.0, 8.0, 10.0), seed=0, labels=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "lungs.csv").write_text("patient,lung_ml\nA,4200\n")
    before = digest(out, volumes)
    code, text = run_cli("lungmask", "-i", volumes / "images", "-o", out, "-q", capsys=capsys)
    assert code == 2
    one_error(text, r"already holds lungs\.csv, not written by covseg lungmask", "out")
    assert digest(out, volumes) == before


def test_phantoms_into_a_dataset_folder(base, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(base["data"], data)
    before = digest(data)
    code, text = run_cli("data", "phantoms", data, "-n", "2", "--size", "32", capsys=capsys)
    assert code == 2
    one_error(text, r"already holds images/, masks/.*not written by covseg data phantoms", "data")
    assert digest(data) == before


def test_explain_keeps_a_users_summary(base, tmp_path):
    """The guard comes before any image is explained (a stand-in explainer: nothing of it is called)."""
    from covseg.inference.explain import explain_files

    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text('{"mine": true}\n')
    before = digest(out)
    stand_in = SimpleNamespace(predictor=SimpleNamespace(run_dir=base["run"]), layer="x", target_class=None, class_names=["a"])
    with pytest.raises(OutputError, match=r"already holds summary\.json, not written by covseg explain"):
        explain_files(stand_in, [base["data"] / "images" / "phantom_0000.png"], out)
    assert digest(out) == before


def test_demo_keeps_a_users_run_folder(base, tmp_path):
    from covseg.demo import run_demo

    out = tmp_path / "out"
    shutil.copytree(base["run"], out / "run")
    before = digest(out)
    with pytest.raises(OutputError, match=r"already holds run/, not written by covseg demo"):
        run_demo(out, data=base["data"], epochs=1, size=SIZE, quiet=True)
    assert digest(out) == before


def test_every_cli_command_that_writes_is_guarded():
    """A new writing command must use the output guard: every CLI module with an output option names one."""
    guards = ("OutputFolder", "report_file", "run_train", "run_explain", "export_run", "convert_dataset", "run_demo",
              "run_pretrained_demo", "predict_files", "pseudo_label_files", "run_predict", "import_weights", "run_prompts",
              "run_pseudo_label", "lung_masks", "write_captions")  # fmt: skip  # the last three: covseg.api calls that guard
    cli = SRC / "cli"
    for module in sorted(cli.glob("*_cmd.py")):
        text = module.read_text()
        if re.search(r'"--out(put)?"', text) or "typer.Argument(..., help=\"Destination" in text:
            assert any(g in text for g in guards), f"{module.name} writes files without the output guard"


# ------------------------------------------------------------- 3. two runs into one folder keep every row
def test_second_predict_run_keeps_the_first_runs_rows(base, tmp_path, capsys):
    out = tmp_path / "out"
    first = images(base, tmp_path / "a", [0, 1])
    second = images(base, tmp_path / "b", [1, 2])
    assert run_cli("predict", "-m", base["run"], "-i", first, "-o", out, "-q", capsys=capsys)[0] == 0
    assert run_cli("predict", "-m", base["run"], "-i", second, "-o", out, "-q", capsys=capsys)[0] == 0
    rows = csv_rows(out / "predictions.csv")
    assert sorted(Path(r["mask"]).name for r in rows) == ["img0.png", "img1.png", "img2.png"]
    by_mask = {Path(r["mask"]).name: r for r in rows}
    assert Path(by_mask["img0.png"]["input"]).parent == first  # kept from the first run
    assert Path(by_mask["img1.png"]["input"]).parent == second  # the later run replaces the same case
    assert float(by_mask["img0.png"]["foreground_fraction"]) >= 0.0  # numbers stay numbers when rewritten


def test_second_run_keeps_earlier_failures_it_did_not_retry(base, tmp_path, capsys):
    out = tmp_path / "out"
    first = images(base, tmp_path / "a", [0])
    (first / "broken.png").write_bytes(b"not a png")
    assert run_cli("predict", "-m", base["run"], "-i", first, "-o", out, "-q", capsys=capsys)[0] == 1
    second = images(base, tmp_path / "b", [3])
    assert run_cli("predict", "-m", base["run"], "-i", second, "-o", out, "-q", capsys=capsys)[0] == 0
    failed = (out / "failed.txt").read_text()
    assert "broken.png" in failed
    assert len(csv_rows(out / "predictions.csv")) == 2


def test_predict_into_a_folder_another_run_is_writing(base, tmp_path, capsys):
    import fcntl

    inputs = images(base, tmp_path / "in", [0])
    out = tmp_path / "out"
    out.mkdir()
    with (out / ".lock").open("w") as held:  # what a predict running at the same time holds
        held.write("pid 4242\n")
        held.flush()
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, text = run_cli("predict", "-m", base["run"], "-i", inputs, "-o", out, "-q", capsys=capsys)
    assert code == 2
    one_error(text, r"another covseg predict is writing this folder \(pid 4242\)", "out")
    assert not (out / "masks").exists()
    assert run_cli("predict", "-m", base["run"], "-i", inputs, "-o", out, "-q", capsys=capsys)[0] == 0  # released


def test_second_pseudo_label_run_keeps_confidence_rows(base, tmp_path, capsys):
    out = tmp_path / "pseudo"
    assert run_cli("pseudo-label", "-m", base["run"], "-i", images(base, tmp_path / "a", [0]), "-o", out, "-q", capsys=capsys)[0] == 0
    assert run_cli("pseudo-label", "-m", base["run"], "-i", images(base, tmp_path / "b", [1]), "-o", out, "-q", capsys=capsys)[0] == 0
    rows = csv_rows(out / "confidence.csv")
    assert [r["case_id"] for r in rows] == ["img0", "img1"]
    assert all(re.fullmatch(r"\d\.\d{6}", r["confidence"]) for r in rows)


# ------------------------------------------------------------------ 4. one neutralising CSV writer
def test_csv_writer_neutralises_text_and_keeps_numbers():
    import numpy as np

    from covseg.utils.outputs import csv_text

    rows = [
        {"case": "=HYPERLINK(\"http://x\")", "s": -0.13, "n": np.int64(-3), "f": np.float32(0.5), "t": "-0.13", "p": "\tx"},
        {"case": "@SUM(A1)", "s": float("nan"), "n": 2, "f": None, "t": "+1", "p": "\rcr"},
    ]
    text = csv_text(rows, float_format=".4f")
    cells = list(csv.reader(io.StringIO(text, newline="")))
    assert cells[1] == ["'=HYPERLINK(\"http://x\")", "-0.1300", "-3", "0.5000", "'-0.13", "'\tx"]
    assert cells[2] == ["'@SUM(A1)", "nan", "2", "", "'+1", "'\rcr"]


def test_csv_reads_back_what_it_wrote(tmp_path):
    from covseg.utils.outputs import read_csv, write_csv

    write_csv(tmp_path / "t.csv", [{"name": "=1+1", "value": -2.5}])
    assert read_csv(tmp_path / "t.csv") == [{"name": "=1+1", "value": "-2.5"}]


def test_evaluation_per_case_keeps_negative_numbers_numbers():
    from covseg.metrics.evaluation import csv_text

    text = csv_text([{"case_id": "=cmd|' /C calc'!A0", "s_measure": -0.13, "spacing": (1.0, 0.5)}])
    assert text.splitlines()[1] == "'=cmd|' /C calc'!A0,-0.13,1x0.5"


def test_evaluate_prompts_per_case_csv_is_neutralised(tmp_path, capsys):
    """File names and prompt texts starting with = or + land neutralised; Dice stays a number."""
    import torch

    from covseg.data.synthetic_text import write_side_task

    from tests.clipseg_fixture import save_tiny_clipseg

    torch.set_num_threads(1)
    weights = save_tiny_clipseg(tmp_path / "clipseg")
    root = write_side_task(tmp_path / "data", n=2, size=32, seed=1)
    for kind in ("images", "masks"):
        first = sorted((root / kind).iterdir())[0]
        first.rename(first.with_name("=1+1" + first.suffix))
    prompts = side_prompts(root, tmp_path / "prompts.json", {"P0": ['=HYPERLINK("http://evil","x")'], "P1": ["+left"]})
    out = tmp_path / "eval"
    code, text = run_cli(
        "evaluate-prompts", "-m", f"zs={weights}", "--data", root, "--texts", prompts, "--prompt-types", "P0,P1", "--out", out, "-q",
        capsys=capsys,
    )  # fmt: skip
    assert code == 0, text
    rows = list(csv.reader((out / "per_case.csv").open(newline="")))
    assert rows[0] == ["case", "prompt_type", "model", "dice", "iou", "prompt"]
    body = rows[1:]
    assert {r[0] for r in body} >= {"'=1+1"}
    assert {r[5] for r in body} == {"'=HYPERLINK(\"http://evil\",\"x\")", "'+left"}
    assert all(re.fullmatch(r"\d\.\d{5}", r[3]) for r in body)
    for row in csv.reader((out / "prompt_table.csv").open(newline="")):
        assert not any(cell.startswith(("=", "+", "@", "\t", "\r")) for cell in row), row


def test_captions_of_a_formula_like_file_name_read_back(base, tmp_path, capsys):
    """make-captions neutralises the case name ``=1``; the text sources read it back as ``=1``."""
    from covseg.data.text_sources import load_texts

    masks = tmp_path / "masks"
    masks.mkdir()
    shutil.copyfile(base["data"] / "masks" / "phantom_0001.png", masks / "=1.png")
    out = tmp_path / "captions.csv"
    assert run_cli("text", "make-captions", "--masks", masks, "--out", out, "-q", capsys=capsys)[0] == 0
    assert "\n'=1," in out.read_text()
    entry = load_texts(out).lookup(masks / "=1.png")
    assert entry is not None and entry.text


def test_every_csv_goes_through_the_one_writer():
    """No module of covseg but utils/outputs.py makes CSV text itself."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "utils" / "outputs.py":
            continue
        text = path.read_text()
        if re.search(r"csv\.(writer|DictWriter)\(|\.to_csv\(", text):
            offenders.append(path.relative_to(SRC).as_posix())
    assert offenders == []


# ------------------------------------------------------------------------------------- 5. YAML bombs
def billion_laughs(levels: int, width: int = 10) -> str:
    lines = ["extra:", "  l0: &l0 [lol]"]
    for k in range(1, levels):
        lines.append(f"  l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_in_a_config_is_refused(base, tmp_path):
    from covseg.training.config import load_config

    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(base["cfg"].read_text() + billion_laughs(6))  # 10^5 entries: old covseg loaded it
    with pytest.raises(ConfigError, match=r"aliases expand to [\d,]+ more entries.*alias bomb") as err:
        load_config(cfg)
    assert err.value.path == str(cfg)


def test_billion_laughs_does_not_hang_train(base, tmp_path, capsys):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(base["cfg"].read_text() + billion_laughs(10))
    t0 = time.perf_counter()
    code, text = run_cli("train", "-c", cfg, "-o", tmp_path / "run", "-q", capsys=capsys)
    assert code == 2
    one_error(text, r"alias bomb", "bomb.yaml")
    assert time.perf_counter() - t0 < 10
    assert not (tmp_path / "run").exists()


def test_alias_bomb_in_an_override_is_refused():
    from covseg.training.config import parse_override

    value = "[" + ", ".join(["&a [x, x, x, x, x, x, x, x, x, x]"] + ["*a"] * 2000) + "]"
    with pytest.raises(ConfigError, match="alias bomb"):
        parse_override(f"extra.x={value}")


def test_recursive_alias_is_refused(base, tmp_path):
    from covseg.training.config import load_config

    cfg = tmp_path / "loop.yaml"
    cfg.write_text(base["cfg"].read_text() + "extra:\n  a: &a [1, *a]\n")
    with pytest.raises(ConfigError, match="recursive alias"):
        load_config(cfg)


def test_key_given_twice_is_refused(base, tmp_path, capsys):
    raw = yaml.safe_load(base["cfg"].read_text())
    text = yaml.safe_dump(raw, sort_keys=False) + "train:\n  epochs: 50\n"
    cfg = tmp_path / "twice.yaml"
    cfg.write_text(text)
    code, out = run_cli("train", "-c", cfg, "-o", tmp_path / "run", "-q", capsys=capsys)
    assert code == 2
    one_error(out, r"key 'train' is given twice \(lines \d+ and \d+\)", "twice.yaml")
    assert not (tmp_path / "run").exists()


def test_small_anchors_and_merge_keys_still_load(base, tmp_path):
    from covseg.training.config import load_config

    raw = base["cfg"].read_text()
    cfg = tmp_path / "anchors.yaml"
    cfg.write_text(raw + "extra:\n  base: &b {size: 3, seed: 1}\n  copy:\n    <<: *b\n    seed: 2\n  again: *b\n")
    loaded = load_config(cfg)
    assert loaded.extra["copy"] == {"size": 3, "seed": 2}
    assert loaded.extra["again"] == {"size": 3, "seed": 1}


def test_every_yaml_read_goes_through_the_safe_loader():
    offenders = [
        path.relative_to(SRC).as_posix()
        for path in sorted(SRC.rglob("*.py"))
        if path != SRC / "utils" / "safe_yaml.py" and re.search(r"yaml\.(safe_load|load|full_load|unsafe_load)\(", path.read_text())
    ]
    assert offenders == []
