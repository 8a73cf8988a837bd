"""Every text source reaches the model: data layer → ``trainer: text`` → text encoder → model inputs.

The readers themselves are tested with the data layer; here each source is written in its own
format, read through ``covseg.data`` by the text trainer, and the texts the model receives
are checked case by case (prompt choice and per-step prompt sampling for CRIS prompts,
missing captions, flips that swap left/right, text dropout).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from covseg.errors import DataError
from covseg.text.encoder import HashedWordEncoder, hashed_word_ids
from covseg.text.sides import swap_sides
from covseg.training.config import load_config
from covseg.training.trainer import Trainer as TextTrainer
from covseg.training.trainer import build_trainer

N = 6
SIZE = 32


def caption(i: int, variant: int = 0) -> str:
    side = "left" if i % 2 else "right"
    return f"case {i} prompt {variant}: one infected area, lower {side} lung."


def write_pair(image_path: Path, mask_path: Path, i: int) -> None:
    rng = np.random.default_rng(i)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rng.random((SIZE, SIZE)) * 255).astype(np.uint8)).save(image_path)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:20, 4 + i : 14 + i] = 255
    Image.fromarray(mask).save(mask_path)


def make_folder_json(root: Path) -> tuple[Path, dict, dict[str, str]]:
    texts = {}
    for i in range(N):
        write_pair(root / "images" / f"c{i}.png", root / "masks" / f"c{i}.png", i)
        texts[f"c{i}"] = caption(i)
    (root / "texts.json").write_text(json.dumps(texts))
    return root, {}, texts


def make_qata_csv(root: Path, skip: int | None = None) -> tuple[Path, dict, dict[str, str]]:
    expected = {}
    rows = [["name", "caption", "pulmonary_infection", "infected_area", "pseudo_label"]]
    for i in range(N):
        write_pair(root / "images" / f"covid_{i}.png", root / "masks" / f"covid_{i}.png", i)
        if i != skip:
            rows.append([f"covid_{i}", caption(i), "1", "1", "[0, 0, 1, 0, 0, 0]"])
            expected[f"covid_{i}"] = caption(i)
    with (root / "captions.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root, {}, expected


def make_qata_annotation(root: Path) -> tuple[Path, dict, dict[str, str]]:
    items, expected = [], {}
    for i in range(N):
        write_pair(root / "train" / "images" / f"sub-{i}.png", root / "train" / "masks" / f"sub-{i}.png", i)
        items.append({"image_path": f"mask_sub-{i}.png", "caption": caption(i), "pulmonary_infection": 1, "infected_area": 1, "pseudo_label": [0, 0, 0, 0, 0, 1]})
        expected[f"sub-{i}"] = caption(i)
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "annotation.json").write_text(json.dumps({"train": items, "valid": []}))
    return root / "train", {}, expected


def make_lvit_xlsx(root: Path) -> tuple[Path, dict, dict[str, str]]:
    import openpyxl

    folder = root / "Train_Folder"
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Image", "Description"])
    expected = {}
    for i in range(N):
        write_pair(folder / "img" / f"m{i}.png", folder / "labelcol" / f"m{i}.png", i)
        ws.append([f"m{i}.png", caption(i)])
        expected[f"m{i}"] = caption(i)
    wb.save(folder / "Train_text.xlsx")
    return root, {"split": "train"}, expected


def make_cris(root: Path) -> tuple[Path, dict, dict[str, str]]:
    items, expected = [], {}
    for i in range(N):
        write_pair(root / "images" / f"img{i}.png", root / "masks" / f"img{i}_lesion.png", i)
        items.append({"img_name": f"img{i}.png", "mask_name": f"img{i}_lesion.png", "prompts": {f"p{k}": caption(i, k) for k in range(3)}})
        expected[f"img{i}_lesion"] = caption(i, 1)
    (root / "anns").mkdir(parents=True)
    (root / "anns" / "train.json").write_text(json.dumps(items))
    return root, {"prompt": "P1"}, expected


def make_prompt_csv(root: Path) -> tuple[Path, dict, dict[str, str]]:
    rows = [["image", "mask", "prompt"]]
    expected = {}
    for i in range(N):
        write_pair(root / "img" / f"x{i}.png", root / "gt" / f"x{i}_target.png", i)
        rows.append([f"img/x{i}.png", f"gt/x{i}_target.png", caption(i)])
        expected[f"x{i}_target"] = caption(i)
    with (root / "pairs.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root, {}, expected


SOURCES = {
    "folder_texts_json": make_folder_json,
    "qata_captions_csv": make_qata_csv,
    "qata_annotation_json": make_qata_annotation,
    "lvit_xlsx": make_lvit_xlsx,
    "cris_prompts_json": make_cris,
    "prompt_csv": make_prompt_csv,
}


def text_config(root: Path, data: dict | None = None, text: dict | None = None, model: str = "lvit", **train) -> dict:
    params = {"encoder": "resnet", "encoder_kwargs": {"widths": [8, 8, 8, 16, 16]}, "decoder_widths": [8, 8, 8, 8]}
    params.update({"vit_dim": 8, "vit_heads": 2} if model == "lvit" else {"align_dim": 8, "heads": 2})
    return {
        "name": "t",
        "trainer": "text",
        "data": {"root": str(root), "folds": 3, "fold": 0, **(data or {})},
        "preprocess": {"size": [SIZE, SIZE]},
        "augment": {"hflip": 0.0},
        "model": {"name": model, "params": params},
        "train": {"epochs": 1, "batch_size": 4, "threads": 1, **train},
        "extra": {"text": {"encoder": "embedding", "embed_dim": 16, "vocab_buckets": 512, **(text or {})}},
    }


class Spy:
    """Records what the text encoder is asked to encode and what the model's forward_train receives."""

    def __init__(self, monkeypatch, trainer: TextTrainer) -> None:
        self.encoded: list[list] = []
        self.model_kwargs: list[dict] = []
        real_encode = HashedWordEncoder.encode
        spy = self

        def encode(enc, texts):
            spy.encoded.append(list(texts))
            return real_encode(enc, texts)

        monkeypatch.setattr(HashedWordEncoder, "encode", encode)
        real_forward = trainer.model.forward_train

        def forward_train(x, **kwargs):
            spy.model_kwargs.append(kwargs)
            return real_forward(x, **kwargs)

        monkeypatch.setattr(trainer.model, "forward_train", forward_train)


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_each_text_source_reaches_the_model(source, tmp_path, monkeypatch):
    root, data, expected = SOURCES[source](tmp_path / "data")
    trainer = build_trainer(load_config(raw=text_config(root, data)), tmp_path / "run", quiet=True)
    trainer.setup()
    got = dict(zip(trainer.train_data.ids + trainer.val_data.ids, trainer.train_data.texts + trainer.val_data.texts))
    assert got == expected
    # one training step: the batch's texts are its cases' texts, encoded and fed to the model
    spy = Spy(monkeypatch, trainer)
    idx = torch.tensor([0, 2, 1])
    batch = trainer.make_batch(trainer.train_data, idx, torch.Generator().manual_seed(0))
    assert batch["text"] == [expected[trainer.train_data.ids[i]] for i in idx.tolist()]
    trainer.model.train()
    out = trainer.forward_train(trainer.model, batch)
    assert out["logits"].shape == (3, 1, SIZE, SIZE)
    assert spy.encoded[-1] == batch["text"]
    kwargs = spy.model_kwargs[-1]
    assert set(kwargs) == {"text_tokens", "text_mask"}
    n_words = [len(hashed_word_ids(t, 512, 64)) for t in batch["text"]]
    assert kwargs["text_mask"].sum(1).tolist() == [float(n) for n in n_words]
    assert kwargs["text_tokens"].shape == (3, max(n_words), 16)
    # validation feeds each validation case its own text too
    extra = trainer.text_adapter.model_kwargs(trainer.val_contexts()[:2])
    assert spy.encoded[-1] == trainer.val_data.texts[:2]
    assert extra["text_mask"].shape[0] == 2


def test_model_json_and_training_run_with_captions(tmp_path):
    root, _, _ = make_qata_csv(tmp_path / "data")
    trainer = build_trainer(load_config(raw=text_config(root, text={"encoder": "embedding"})), tmp_path / "run", quiet=True)
    summary = trainer.fit()
    assert summary["epochs"] == 1
    desc = json.loads((tmp_path / "run" / "model.json").read_text())
    assert desc["text"]["input"] == "features"
    assert desc["text"]["encoder"]["name"] == "embedding" and desc["text"]["encoder"]["dim"] == 16
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert "text_encoder_state" in ckpt  # the trainable fallback embedding is saved with the model
    assert ckpt["model_spec"]["init_args"]["text_dim"] == 16


def test_cris_prompt_sampling_draws_every_variant(tmp_path):
    root, data, _ = make_cris(tmp_path / "data")
    trainer = build_trainer(
        load_config(raw=text_config(root, data, text={"prompt_sampling": True})), tmp_path / "run", quiet=True
    )
    trainer.setup()
    assert all(len(v) == 3 for v in trainer.train_variants)
    seen: dict[str, set] = {}
    for epoch in range(6):
        for idx, gen in trainer.batches(trainer.train_data, epoch):
            batch = trainer.make_batch(trainer.train_data, idx, gen)
            for i, t in zip(idx.tolist(), batch["text"]):
                case = trainer.train_data.ids[i]
                k = int(case[3:].split("_")[0])
                assert t in {caption(k, v) for v in range(3)}  # always one of this case's own prompts
                seen.setdefault(case, set()).add(t)
    assert sum(len(s) > 1 for s in seen.values()) >= len(seen) - 1  # variants really vary
    # validation keeps the chosen prompt (P1)
    assert all(" prompt 1:" in t for t in trainer.val_data.texts)


def test_missing_caption_is_a_one_line_error_naming_the_image(tmp_path):
    root, _, _ = make_qata_csv(tmp_path / "data", skip=3)
    trainer = build_trainer(load_config(raw=text_config(root)), tmp_path / "run", quiet=True)
    with pytest.raises(DataError) as err:
        trainer.setup()
    assert "covid_3.png" in str(err.value) and "no text for this image" in str(err.value)
    assert "\n" not in str(err.value)
    # image-only for cases without text: trains, the case gets the null text
    trainer = build_trainer(load_config(raw=text_config(root, text={"missing": "image-only"})), tmp_path / "run2", quiet=True)
    trainer.fit()
    texts = dict(zip(trainer.train_data.ids + trainer.val_data.ids, trainer.train_data.texts + trainer.val_data.texts))
    assert texts["covid_3"] is None and texts["covid_2"] == caption(2)


def test_flip_swap_flips_images_and_swaps_sides_consistently(tmp_path):
    root, _, expected = make_folder_json(tmp_path / "data")
    raw = text_config(root, text={"flip_swap": 1.0})
    raw["augment"] = {"hflip": 0.0, "p_spatial": 0.0, "brightness": 0.0, "contrast": 0.0}  # only the text-aware flip
    trainer = build_trainer(load_config(raw=raw), tmp_path / "run", quiet=True)
    trainer.setup()
    idx = torch.arange(len(trainer.train_data))
    batch = trainer.make_batch(trainer.train_data, idx, torch.Generator().manual_seed(0))
    for k, i in enumerate(idx.tolist()):
        original = expected[trainer.train_data.ids[i]]
        assert batch["text"][k] == swap_sides(original) != original
        torch.testing.assert_close(batch["mask"][k], trainer.train_data.masks[i].flip(-1))
    assert swap_sides("Left upper and RIGHT lower; lefty") == "Right upper and LEFT lower; lefty"


def test_text_dropout_trains_some_cases_image_only(tmp_path):
    root, _, _ = make_folder_json(tmp_path / "data")
    trainer = build_trainer(load_config(raw=text_config(root, text={"text_dropout": 0.5})), tmp_path / "run", quiet=True)
    trainer.setup()
    texts = []
    for epoch in range(10):
        for idx, gen in trainer.batches(trainer.train_data, epoch):
            texts += trainer.make_batch(trainer.train_data, idx, gen)["text"]
    dropped = sum(t is None for t in texts) / len(texts)
    assert 0.3 < dropped < 0.7


def test_trainer_refuses_image_only_models_and_bad_settings(tmp_path):
    from covseg.errors import ConfigError

    root, _, _ = make_folder_json(tmp_path / "data")
    raw = text_config(root)
    raw["model"] = {"name": "unet", "params": {"base_width": 4, "depth": 2}}
    with pytest.raises(ConfigError, match="text-guided model"):
        build_trainer(load_config(raw=raw), tmp_path / "run", quiet=True).setup()
    with pytest.raises(ConfigError, match=r"extra\.text\.text_dropout"):
        build_trainer(load_config(raw=text_config(root, text={"text_dropout": 2})), tmp_path / "r2", quiet=True)
    with pytest.raises(ConfigError, match=r"extra\.text\.unknown"):
        build_trainer(load_config(raw=text_config(root, text={"unknown": 1})), tmp_path / "r3", quiet=True)


def test_c2fvl_trains_with_its_alignment_loss(tmp_path):
    root, _, _ = make_folder_json(tmp_path / "data")
    raw = text_config(root, model="c2fvl", text={"align_weight": 0.5})
    raw["loss"] = {"main": "dice_bce", "aux_weight": [0.4, 0.4]}
    trainer = build_trainer(load_config(raw=raw), tmp_path / "run", quiet=True)
    trainer.fit()
    row = trainer.history[-1]
    assert "train_align" in row and np.isfinite(row["train_align"])
    assert "train_aux0" in row and "train_aux1" in row
