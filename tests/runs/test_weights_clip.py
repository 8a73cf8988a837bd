"""OpenAI-CLIP state dicts: architecture inference, the Hugging Face key map, ``clip-resnet``, the ``clip`` import.

The authors' key names and shapes come from their own ``clip/model.py`` (``tests/assets/weights/clip_*_keys.json``,
written by ``bench/bench_weights_equivalence_clip.py --write-keys`` for small models whose vocabulary is
that of a 20-merge BPE file); the values are random. Agreement of outputs with their code is measured
by that script (``bench/results/weights/clip.json``), not here: no author code is in the suite.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from covseg.errors import CovsegError
from covseg.models import build_model
from covseg.models.clip_weights import (
    infer_architecture,
    openai_to_hf,
    read_clip_state_dict,
    text_config,
    vision_config,
)
from covseg.runs.formats_clip import byte_symbols, import_clip, vocabulary_from_bpe
from covseg.runs.importers import import_weights

from tests.helpers import run_cli

DATA = Path(__file__).parents[1] / "assets" / "weights"
MERGES = ["l u", "n g</w>", "lu ng</w>", "i n", "f e", "c t", "in fe", "infe ct", "i o", "infect io", "infectio n</w>",
          "l e", "f t</w>", "le ft</w>", "r i", "g h", "gh t</w>", "ri ght</w>", "a n", "e r"]  # fmt: skip


def author_keys(kind: str) -> dict[str, list[int]]:
    return json.loads((DATA / f"clip_{kind}_tiny_keys.json").read_text())["keys"]


def author_state(kind: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the authors' names and shapes (variances positive, scale moderate)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in author_keys(kind).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(3)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(
            ("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")
        ) or key.endswith("bn3.weight"):
            state[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            state[key] = torch.randn(shape, generator=g) * 0.05
    return state


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bpe") / "bpe_tiny.txt"
    path.write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clip")
    out = {}
    for kind in ("vit", "rn"):
        out[kind] = root / f"{kind}.pt"
        torch.save(author_state(kind), out[kind])
    return out


@pytest.fixture(scope="module")
def folders(files, bpe, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("imported")
    return {kind: import_weights("clip", file, root / kind, tokenizer=bpe) for kind, file in files.items()}


def test_architecture_is_inferred_from_the_shapes_as_their_build_model_does():
    vit = infer_architecture(author_state("vit"))
    assert (vit.vision, vit.vision_width, vit.vision_layers, vit.vision_patch_size, vit.image_resolution) == (
        "vit",
        64,
        2,
        16,
        32,
    )
    assert (vit.embed_dim, vit.context_length, vit.vocab_size, vit.text_width, vit.text_layers) == (
        32,
        16,
        534,
        64,
        2,
    )
    rn = infer_architecture(author_state("rn"))
    assert (rn.vision, rn.vision_width, rn.vision_layers, rn.image_resolution, rn.vision_heads) == (
        "resnet",
        16,
        (1, 2, 1, 1),
        64,
        8,
    )

    def shapes(**sizes: list[int]) -> dict[str, torch.Tensor]:
        return {k.replace("__", "."): torch.empty(v, device="meta") for k, v in sizes.items()}

    text = shapes(
        text_projection=[512, 512],
        positional_embedding=[77, 512],
        token_embedding__weight=[49408, 512],
        ln_final__weight=[512],
    )
    b16 = shapes(
        visual__proj=[768, 512],
        visual__conv1__weight=[768, 3, 16, 16],
        visual__positional_embedding=[197, 768],
    )
    b16.update(
        {
            f"visual.transformer.resblocks.{i}.attn.in_proj_weight": torch.empty(2304, 768, device="meta")
            for i in range(12)
        }
    )
    assert infer_architecture({**text, **b16}).name == "ViT-B/16"
    rn101 = {
        f"visual.layer{b}.{i}.conv1.weight": torch.empty(64, 64, 1, 1, device="meta")
        for b, n in zip((1, 2, 3, 4), (3, 4, 23, 3))
        for i in range(n)
    }
    rn101["visual.attnpool.positional_embedding"] = torch.empty(50, 2048, device="meta")
    assert infer_architecture({**text, **rn101}).name == "RN101"
    with pytest.raises(CovsegError, match="not an OpenAI-CLIP state dict: no text_projection"):
        infer_architecture({k: v for k, v in author_state("vit").items() if k != "text_projection"})


def test_vit_keys_map_one_to_one_onto_hugging_face_clip():
    from transformers import CLIPConfig, CLIPModel

    state = author_state("vit")
    arch = infer_architecture(state)
    mapped = openai_to_hf(state)
    expected = CLIPModel(
        CLIPConfig(text_config=text_config(arch), vision_config=vision_config(arch), projection_dim=32)
    ).state_dict()
    expected = {k: v for k, v in expected.items() if not k.endswith("position_ids")}
    assert set(mapped) == set(expected)
    assert all(mapped[k].shape == expected[k].shape for k in expected)
    assert len(mapped) == len(state) + 4 * 2 * 2  # 4 blocks: in_proj weight and bias each split in three
    block = "vision_model.encoder.layers.1.self_attn"
    qkv = torch.cat([mapped[f"{block}.{p}_proj.weight"] for p in "qkv"])
    assert torch.equal(qkv, state["visual.transformer.resblocks.1.attn.in_proj_weight"])
    assert torch.equal(mapped["text_projection.weight"], state["text_projection"].t())
    assert torch.equal(mapped["vision_model.pre_layrnorm.bias"], state["visual.ln_pre.bias"])
    causal = torch.full((16, 16), float("-inf")).triu(1)  # a buffer older open_clip files carry
    assert (
        openai_to_hf({**state, "attn_mask": causal, "input_resolution": torch.tensor(32)}).keys()
        == mapped.keys()
    )
    with pytest.raises(CovsegError, match=r"1 tensor\(s\) with no Hugging Face name, e\.g\. visual\.extra"):
        openai_to_hf({**state, "visual.extra": torch.zeros(1)})


def test_clip_resnet_loads_the_authors_visual_tensors_and_returns_five_levels(files):
    state = author_state("rn")
    encoder = build_model(
        "cris",
        in_channels=1,
        text_dim=64,
        encoder="clip-resnet",
        encoder_kwargs={"weights": str(files["rn"])},
    ).encoder
    assert (encoder.layers, encoder.width) == ((1, 2, 1, 1), 16)
    own = encoder.state_dict()
    visual = {
        k.removeprefix("visual."): v
        for k, v in state.items()
        if k.startswith("visual.") and ".attnpool." not in k
    }
    assert set(own) == set(visual)  # every tensor but the attention pool, under the authors' names
    assert all(torch.equal(own[k], visual[k]) for k in visual)
    with torch.no_grad():
        features = encoder.eval()(torch.randn(2, 1, 64, 64))
    assert [tuple(f.shape[1:]) for f in features] == [
        (16, 32, 32),
        (64, 16, 16),
        (128, 8, 8),
        (256, 4, 4),
        (512, 2, 2),
    ]
    assert not any(p.requires_grad for p in encoder.parameters())  # frozen by default
    with pytest.raises(CovsegError, match="not a CLIP ResNet image tower: a ViT"):
        build_model("cris", text_dim=64, encoder="clip-resnet", encoder_kwargs={"weights": str(files["vit"])})


def test_torchscript_and_unsafe_files_are_refused_in_one_line(tmp_path, capsys):
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    archive = tmp_path / "ViT-B-16.pt"
    scripted.save(str(archive))
    with pytest.raises(CovsegError, match=r"TorchScript archive .* torch\.save\(model\.state_dict\(\)"):
        read_clip_state_dict(archive)
    assert run_cli(["weights", "import", "--format", "clip", "--output", tmp_path / "out", archive]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "TorchScript" in err and "ViT-B-16.pt" in err
    assert not (tmp_path / "out").exists()
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CovsegError, match="unreadable checkpoint"):
        read_clip_state_dict(junk)
    unsafe = _saved(tmp_path / "unsafe.pt", {"visual.proj": torch.zeros(1), "hook": Unsafe()})
    with pytest.raises(CovsegError, match="needs full unpickling"):
        read_clip_state_dict(unsafe)
    with pytest.raises(CovsegError, match="not an OpenAI-CLIP state dict"):
        import_clip(_saved(tmp_path / "other.pt", {"conv.weight": torch.zeros(1)}), tmp_path / "o")


class Unsafe:
    """A pickled object ``weights_only`` refuses (it could be code)."""


def _saved(path: Path, state: dict) -> Path:
    torch.save(state, path)
    return path


def test_safetensors_and_wrapped_state_dicts_read_the_same(files, tmp_path):
    from safetensors.torch import save_file

    state = author_state("vit")
    save_file(state, str(tmp_path / "open_clip_model.safetensors"))
    wrapped = _saved(
        tmp_path / "epoch_1.pt",
        {"epoch": 1, "state_dict": {f"module.{k}": v.half() for k, v in state.items()}},
    )
    for path in (tmp_path / "open_clip_model.safetensors", wrapped):
        got = read_clip_state_dict(path)
        assert set(got) == set(state) and all(got[k].dtype == torch.float32 for k in got)
    assert torch.equal(
        read_clip_state_dict(tmp_path / "open_clip_model.safetensors")["visual.proj"], state["visual.proj"]
    )


def test_tokenizer_from_the_bpe_file_has_the_authors_ids(bpe, folders):
    from transformers import AutoTokenizer

    vocab, _ = vocabulary_from_bpe(bpe)
    assert len(vocab) == 512 + 20 + 2 and vocab["<|startoftext|>"] == 532 and vocab["<|endoftext|>"] == 533
    assert vocab[byte_symbols()[0]] == 0 and vocab["!</w>"] == 256 and vocab["lung</w>"] == 514
    tokenizer = AutoTokenizer.from_pretrained(str(folders["vit"]))
    ids = tokenizer(["Left lung infection"])["input_ids"][0]
    assert ids == [532, vocab["left</w>"], vocab["lung</w>"], vocab["infection</w>"], 533]
    info = json.loads((folders["vit"] / "clip_import.json").read_text())
    assert info["tokenizer"] is True and info["architecture"]["vision"] == "vit" and info["format"] == "clip"
    with pytest.raises(CovsegError, match="not its tokenizer"):  # checked before anything is written
        import_clip(_saved(folders["vit"].parent / "big.pt", {**author_state("vit"), "token_embedding.weight": torch.zeros(600, 64)}),
                    folders["vit"].parent / "big", tokenizer=bpe)  # fmt: skip
    assert not (folders["vit"].parent / "big").exists()
    flat = {**author_state("vit"), "visual.conv1.weight": torch.tensor(0.0)}  # a scalar under a 4-d name
    with pytest.raises(CovsegError, match="too few dimensions"):
        infer_architecture(flat)


@pytest.mark.parametrize("kind", ["vit", "rn"])
def test_cris_on_imported_clip_weights_runs_and_trains(kind, folders):
    from covseg.text.encoder import build_text_encoder

    folder = folders[kind]
    text = build_text_encoder({"name": str(folder), "max_length": 16})
    assert text.dim == 64
    features = text.encode(["left lung infection", "right lung", None])
    encoder = {
        "vit": ("clip-vision", {"pretrained_dir": str(folder), "widths": [8, 8, 16, 16, 24]}),
        "rn": ("clip-resnet", {"weights": str(folder)}),
    }
    name, kwargs = encoder[kind]
    torch.manual_seed(0)
    model = build_model(
        "cris",
        in_channels=1,
        text_dim=64,
        encoder=name,
        encoder_kwargs=kwargs,
        dim=16,
        heads=2,
        layers=1,
        proj_dim=8,
    ).train()
    # CLIP's own tensors (clip-vision's 1×1 projections "proj." train)
    frozen = {k: v.clone() for k, v in model.encoder.state_dict().items() if not k.startswith("proj.")}
    x = torch.randn(3, 1, 64, 64)
    target = torch.zeros(3, 1, 64, 64)
    target[..., :32] = 1.0  # the left half
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(4):
        out = model.forward_train(x, features.tokens, features.mask)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out["logits"], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert out["logits"].shape == (3, 1, 64, 64) and out["t2p"].shape == (3, 1, 16, 16)
    assert losses[-1] < losses[0]
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in frozen.items())


def test_shipped_cris_clip_config_trains_on_an_imported_folder_and_the_run_rebuilds(
    folders, tmp_path, monkeypatch
):
    """``cris_clip_qata`` (clip-resnet + CLIP's text tower from ``$CLIP_WEIGHTS``) trains an epoch on a tiny task."""
    from covseg.api import fit
    from covseg.data.synthetic_text import write_side_task
    from covseg.runs.checkpoint import load_checkpoint, model_from_checkpoint
    from covseg.runs.folder import RunFolder
    from covseg.training.config import load_config

    monkeypatch.setenv("CLIP_WEIGHTS", str(folders["rn"]))
    root = write_side_task(tmp_path / "data", n=12, size=64, seed=0)
    small = [
        "model.params.dim=16",
        "model.params.heads=2",
        "model.params.layers=1",
        "model.params.proj_dim=8",
    ]
    run = [
        "train.epochs=1",
        "train.batch_size=4",
        "train.threads=1",
        "train.val_every=1",
        "train.val_batch_size=4",
    ]
    data = [
        f"data.root={root}",
        "data.val_root=null",
        "data.folds=3",
        "data.fold=0",
        "preprocess.size=[64,64]",
    ]
    fit(load_config("cris_clip_qata", overrides=data + small + run), tmp_path / "run", quiet=True)
    history = RunFolder(tmp_path / "run").read_history()
    assert len(history) == 1 and 0 < float(history[0]["train_loss"]) < 10
    description = RunFolder(tmp_path / "run").description()
    assert description.init_args["encoder"] == "clip-resnet" and description.init_args["text_dim"] == 64
    model = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt"))
    # the frozen CLIP tower is the imported one, through training and the rebuild
    assert torch.equal(
        model.encoder.state_dict()["layer2.1.conv2.weight"],
        author_state("rn")["visual.layer2.1.conv2.weight"],
    )


def test_clipseg_on_an_imported_clip_vit_folder_trains_its_decoder(folders):
    """``clipseg`` with a plain CLIP folder: CLIP is the imported one (frozen), the decoder starts at random."""
    state = author_state("vit")
    torch.manual_seed(0)
    model = build_model("clipseg", pretrained_dir=str(folders["vit"]), in_channels=1).train()
    vision = model.net.clip.vision_model
    assert torch.equal(vision.embeddings.class_embedding, state["visual.class_embedding"])
    assert torch.equal(model.net.clip.text_projection.weight, state["text_projection"].t())
    assert model.net.config.extract_layers == [0, 1, 1]  # a quarter, half, three quarters of 2 layers
    ids, mask = model.tokenize(["left lung", "right lung infection"])
    assert ids[0, 0] == 532 and ids[0, 3] == 533  # start, left, lung, end (the imported tokenizer)
    out = model.forward_train(torch.randn(2, 1, 48, 48), ids, mask)
    assert out["logits"].shape == (2, 1, 48, 48)
    out["logits"].mean().backward()
    assert all(p.grad is None for p in model.net.clip.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.net.decoder.parameters())
    assert all(k.startswith("net.decoder.") for k in model.state_dict())  # checkpoints hold the decoder only
