"""Equivalence of ``covseg weights import --format clip`` with OpenAI's own CLIP code.

Extracts ``clip/model.py``, ``clip/simple_tokenizer.py`` and ``clip/bpe_simple_vocab_16e6.txt.gz``
from a fetched snapshot of ``openai/CLIP`` (a git directory, ``git show HEAD:path``; nothing is
downloaded) into a temporary folder outside the repository, builds their ``CLIP`` with random
weights for ViT-B/16 and RN50 (their initialisation, then layer-norm and batch-norm affine
parameters randomised and batch-norm statistics calibrated on random inputs, so no layer is an
identity), saves ``state_dict()`` with ``torch.save``, imports it with the CLI (``--tokenizer``
their BPE file) and compares, for the same input:

- ViT-B/16: the final patch tokens of their ``visual.transformer`` with those covseg's
  ``clip-vision`` encoder reads, and their ``encode_image`` with ``CLIPModel.get_image_features``;
- RN50: their stem (before its pool) and ``layer1..4`` outputs with covseg's ``clip-resnet`` features;
- text (both): their token ids (``simple_tokenizer``) with the imported tokenizer's, their
  ``ln_final`` token features with covseg's text encoder (``extra.text.encoder: DIR``) tokens, and
  their ``encode_text`` with the Hugging Face text embedding.

Pass: max |diff| ≤ 1e-4. Controls, which must fail: the ViT and text towers with GELU instead of
CLIP's QuickGELU, the ResNet with batch statistics instead of CLIP's running statistics.

    python bench/bench_weights_equivalence_clip.py --clip-repo /work/.mirror/openai+CLIP/repo
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4
FILES = ("clip/model.py", "clip/simple_tokenizer.py", "clip/bpe_simple_vocab_16e6.txt.gz")
TEXTS = [
    "bilateral pulmonary infection, two infected areas, upper left lung and lower right lung.",
    "a chest x-ray",
    "no lesion",
]
#: CLIP(embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size, context, vocab, text width, heads, layers)
PRESETS = {
    "full": {
        "ViT-B/16": (512, 224, 12, 768, 16, 77, 49408, 512, 8, 12),
        "RN50": (1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12),
    },
    "tiny": {
        "ViT-B/16": (32, 64, 2, 64, 16, 77, 49408, 64, 1, 2),
        "RN50": (32, 64, (1, 1, 1, 1), 16, None, 77, 49408, 64, 1, 2),
    },
}


#: the tiny models whose key and shape lists the tests read (``--write-keys``): vocabulary of a 20-merge BPE file
KEY_MODELS = {
    "clip_vit_tiny_keys.json": (32, 32, 2, 64, 16, 16, 534, 64, 1, 2),
    "clip_rn_tiny_keys.json": (32, 64, (1, 2, 1, 1), 16, None, 16, 534, 64, 1, 2),
}


def write_keys(model_mod, commit: str) -> None:
    """The authors' key names and shapes of small CLIPs, for tests/assets/weights/."""
    for file, dims in KEY_MODELS.items():
        state = model_mod.CLIP(*dims).state_dict()
        lines = ",\n".join(f"  {json.dumps(k)}: {json.dumps(list(v.shape))}" for k, v in state.items())
        source = f"openai/CLIP@{commit} clip/model.py CLIP{dims}"
        (ROOT / "tests/assets/weights" / file).write_text(
            f'{{"source": {json.dumps(source)},\n "keys": {{\n{lines}\n}}}}\n'
        )


def extract(git_dir: Path, dest: Path) -> str:
    for name in FILES:
        data = subprocess.run(
            ["git", "--git-dir", str(git_dir), "show", f"HEAD:{name}"], check=True, capture_output=True
        ).stdout
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(data)
    return subprocess.run(
        ["git", "--git-dir", str(git_dir), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


def authors_modules(dest: Path):
    """Their model and tokenizer modules (ftfy, which their tokenizer imports, stubbed: the texts are plain ASCII)."""
    import importlib.util

    sys.modules.setdefault("ftfy", types.SimpleNamespace(fix_text=lambda text: text))  # type: ignore[arg-type]
    mods = []
    for name in ("model", "simple_tokenizer"):
        spec = importlib.util.spec_from_file_location(f"authors_clip_{name}", dest / "clip" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        mods.append(module)
    return mods


def randomise(model: torch.nn.Module, size: int, seed: int) -> None:
    """Layer-norm and batch-norm affine parameters random, batch-norm statistics calibrated on random images."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        if any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
            model.train()
            for _ in range(2):
                model.encode_image(torch.randn(2, 3, size, size))
    model.eval()


def their_vit_tokens(visual, x: torch.Tensor) -> torch.Tensor:
    """The output of their ViT's transformer, (B, 1 + grid², width): their forward up to ``ln_post``."""
    t = visual.conv1(x).flatten(2).permute(0, 2, 1)
    cls = visual.class_embedding + torch.zeros(t.shape[0], 1, t.shape[-1])
    t = visual.ln_pre(torch.cat([cls, t], dim=1) + visual.positional_embedding)
    return visual.transformer(t.permute(1, 0, 2)).permute(1, 0, 2)


def their_resnet_stages(visual, x: torch.Tensor) -> list[torch.Tensor]:
    s = visual.relu1(visual.bn1(visual.conv1(x)))
    s = visual.relu2(visual.bn2(visual.conv2(s)))
    s = visual.relu3(visual.bn3(visual.conv3(s)))
    out = [s]
    h = visual.avgpool(s)
    for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        h = layer(h)
        out.append(h)
    return out


def their_text(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``ln_final`` token features and ``encode_text`` (their EOT feature @ text_projection)."""
    x = model.token_embedding(ids) + model.positional_embedding
    x = model.ln_final(model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2))
    return x, model.encode_text(ids)


def use_gelu(model: torch.nn.Module) -> None:
    """The control: every MLP of a Hugging Face CLIP tower with GELU instead of CLIP's QuickGELU."""
    from transformers.activations import ACT2FN

    for module in model.modules():
        if hasattr(module, "activation_fn") and hasattr(module, "fc1"):
            module.activation_fn = ACT2FN["gelu"]


SCALE: dict[str, float] = {}


def maxdiff(a: torch.Tensor, b: torch.Tensor, name: str = "") -> float:
    """max |a − b|; ``name`` also records max |a| (their output's scale) in ``SCALE``."""
    if name:
        SCALE[name] = float(a.abs().max())
    return float((a - b).abs().max())


def bench_text(folder: Path, theirs, tokenizer, hf_text, check: dict, control: dict) -> None:
    from covseg.text.encoder import build_text_encoder

    their_ids = tokenizer_ids(tokenizer, TEXTS, theirs.context_length)
    encoder = build_text_encoder({"name": str(folder), "max_length": 77})
    batch = encoder.tokenizer(
        TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    )
    check["token ids differ (count)"] = int((batch["input_ids"] != their_ids).sum())
    with torch.no_grad():
        tokens, embedding = their_text(theirs, their_ids)
        ours = encoder.encode(TEXTS)
        lengths = ours.mask.sum(1).long().tolist()
        check["text tokens (ln_final vs covseg text encoder)"] = max(
            maxdiff(tokens[i, :n], ours.tokens[i, :n], "text tokens") for i, n in enumerate(lengths)
        )
        check["text embedding (encode_text)"] = maxdiff(
            embedding, hf_text(batch["input_ids"], batch["attention_mask"]), "text embedding"
        )
        use_gelu(encoder.model)
        encoder.clear_cache()
        wrong = encoder.encode(TEXTS)
        control["text tokens with GELU for QuickGELU"] = max(
            maxdiff(tokens[i, :n], wrong.tokens[i, :n]) for i, n in enumerate(lengths)
        )


def tokenizer_ids(tokenizer, texts: list[str], context: int) -> torch.Tensor:
    """Their ``clip.tokenize``: start, BPE ids, end, zero padding; padded here with the end id as Hugging Face pads."""
    sot, eot = tokenizer.encoder["<|startoftext|>"], tokenizer.encoder["<|endoftext|>"]
    ids = torch.full((len(texts), context), eot, dtype=torch.long)
    for i, text in enumerate(texts):
        row = [sot, *tokenizer.encode(text), eot]
        ids[i, : len(row)] = torch.tensor(row)
    return ids


def bench_one(name: str, args, dims, model_mod, tok_mod, work: Path) -> dict:
    torch.manual_seed(0)
    theirs = model_mod.CLIP(*dims).float()
    size = dims[1]
    randomise(theirs, size, seed=0)
    state = theirs.state_dict()
    file = work / f"clip-{name.replace('/', '')}-random.pt"
    torch.save(state, file)
    folder = work / f"clip-{name.replace('/', '')}"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "covseg", "weights", "import", "--format", "clip", "--output", str(folder),
         "--tokenizer", str(work / "clip/bpe_simple_vocab_16e6.txt.gz"), str(file)], check=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    from covseg.models.encoders import build_encoder

    torch.manual_seed(1)
    x = torch.randn(2, 3, size, size)
    check: dict[str, float] = {}
    control: dict[str, float] = {}
    tokenizer = tok_mod.SimpleTokenizer(str(work / "clip/bpe_simple_vocab_16e6.txt.gz"))
    with torch.no_grad():
        if name.startswith("ViT"):
            from transformers import CLIPModel

            encoder = build_encoder("clip-vision", 3, pretrained_dir=str(folder)).eval()
            their_tokens = their_vit_tokens(theirs.visual, x)
            ours = encoder.vit(pixel_values=x).last_hidden_state
            check["image tokens (transformer output)"] = maxdiff(their_tokens, ours, "image tokens")
            clip = CLIPModel.from_pretrained(str(folder)).eval()
            check["image embedding (encode_image)"] = maxdiff(
                theirs.encode_image(x), _tensor(clip.get_image_features(pixel_values=x)), "image embedding"
            )
            use_gelu(encoder.vit)
            control["image tokens with GELU for QuickGELU"] = maxdiff(
                their_tokens, encoder.vit(pixel_values=x).last_hidden_state
            )

            def hf_text(ids, mask):
                return _tensor(clip.get_text_features(input_ids=ids, attention_mask=mask))
        else:
            from transformers import CLIPTextModelWithProjection

            encoder = build_encoder("clip-resnet", 3, weights=str(folder)).eval()
            stages = their_resnet_stages(theirs.visual, x)
            for level, (a, b) in enumerate(zip(stages, encoder(x), strict=True)):
                check[f"stage {level} (stride {2 ** (level + 1)})"] = maxdiff(a, b, f"stage {level}")
            encoder.freeze = False
            encoder.train()
            control["stage 4 with batch statistics"] = maxdiff(stages[4], encoder(x)[4])
            text = CLIPTextModelWithProjection.from_pretrained(str(folder)).eval()

            def hf_text(ids, mask):
                return text(input_ids=ids, attention_mask=mask).text_embeds

    bench_text(folder, theirs, tokenizer, hf_text, check, control)
    ids_ok = check.pop("token ids differ (count)") == 0
    scale = dict(SCALE)
    SCALE.clear()
    return {
        "architecture": name,
        "inferred_by_covseg": json.loads((folder / "clip_import.json").read_text())["architecture"]["name"],
        "authors_model": f"clip/model.py CLIP{tuple(dims)}",
        "tensors": len(state),
        "input": [2, 3, size, size],
        "texts": TEXTS,
        "token_ids_identical": ids_ok,
        "max_abs_diff": check,
        "max_abs_output_theirs": scale,
        "controls_max_abs_diff": control,
        "import_seconds": round(seconds, 2),
        "pass": ids_ok
        and all(v <= TOLERANCE for v in check.values())
        and all(v > TOLERANCE for v in control.values()),
    }


def _tensor(out) -> torch.Tensor:
    """``get_*_features`` return a tensor or, in newer transformers, an output whose pooled field is it."""
    return out if torch.is_tensor(out) else out.pooler_output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip-repo", type=Path, required=True, help="git dir of an openai/CLIP snapshot")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="full",
        help="full: ViT-B/16 and RN50 sizes; tiny: a quick check",
    )
    parser.add_argument(
        "--write-keys", action="store_true", help="only write the small models' key lists the tests read"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/weights/clip.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="covseg_clip_bench_") as tmp:
        work = Path(tmp)
        commit = extract(args.clip_repo, work)
        model_mod, tok_mod = authors_modules(work)
        if args.write_keys:
            write_keys(model_mod, commit)
            return 0
        results = [
            bench_one(name, args, dims, model_mod, tok_mod, work)
            for name, dims in PRESETS[args.preset].items()
        ]
    record = {
        "authors": f"openai/CLIP@{commit}",
        "preset": args.preset,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
        "tolerance": TOLERANCE,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    for r in results:
        print(f"{r['architecture']}: {'PASS' if r['pass'] else 'FAIL'} max |diff| {max(r['max_abs_diff'].values()):.3g}; "
              f"controls min {min(r['controls_max_abs_diff'].values()):.3g}; token ids identical {r['token_ids_identical']}")  # fmt: skip
    return 0 if all(r["pass"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
