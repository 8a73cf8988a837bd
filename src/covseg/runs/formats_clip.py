"""The ``clip`` checkpoint format: OpenAI-CLIP state dicts in, a Hugging Face style CLIP folder out.

``covseg weights import --format clip --output DIR FILE [--tokenizer BPE]`` reads an OpenAI-CLIP or
open_clip (OpenAI-compatible) state dict, infers the architecture from its shapes and writes DIR:

- a ViT (ViT-B/32, ViT-B/16, ViT-L/14): a Hugging Face ``CLIPModel`` folder (``config.json``,
  ``model.safetensors``), which covseg's ``clip-vision`` encoder (``encoder_kwargs.pretrained_dir``)
  and text encoders (``extra.text.encoder: DIR``) read;
- a ResNet (RN50, RN101, ...): the text tower as a Hugging Face ``CLIPTextModel`` folder, and the
  image tower's tensors under their own names in ``visual.safetensors``, which the ``clip-resnet``
  encoder reads (``encoder_kwargs.weights: DIR``);
- with ``--tokenizer``: the tokenizer files (``vocab.json``, ``merges.txt``, ``tokenizer_config.json``),
  made from OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` (in their ``clip`` package) or copied from a
  Hugging Face CLIP tokenizer folder. The text tower cannot be used without them.
- ``clip_import.json``: the source file's name and SHA-256, the inferred architecture, and whether
  a tokenizer is there.

It is not a run folder: CLIP is an encoder, not a segmentation model; ``cris`` trains on it.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from covseg.errors import CovsegError
from covseg.models.clip_weights import (
    ClipArchitecture,
    infer_architecture,
    openai_to_hf,
    read_clip_state_dict,
    text_config,
    vision_config,
)
from covseg.registry import CHECKPOINT_FORMATS
from covseg.utils.state_dicts import state_dict_problem

CLIP_FILES = (
    "config.json",
    "model.safetensors",
    "visual.safetensors",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "clip_import.json",
)
START, END = "<|startoftext|>", "<|endoftext|>"
#: merges OpenAI's tokenizer keeps (``simple_tokenizer.py``: 49152 − 256 byte tokens − 2 specials)
MAX_MERGES = 49152 - 256 - 2


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in the order OpenAI's CLIP vocabulary lists them."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def vocabulary_from_bpe(path: Path) -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary (token → id) and merges from OpenAI's ``bpe_simple_vocab_16e6.txt(.gz)``, as their tokenizer builds them."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        lines = raw.decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise CovsegError(f"unreadable BPE merges file ({type(exc).__name__})", path) from None
    merges = [m for m in lines[1 : MAX_MERGES + 1] if m.strip()]
    if not merges or any(len(m.split()) != 2 for m in merges):
        raise CovsegError("not a CLIP BPE merges file (a version line, then one 'a b' merge per line)", path)
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [START, END]
    return {t: i for i, t in enumerate(tokens)}, merges


def read_tokenizer(source: Path, arch: ClipArchitecture) -> tuple[dict[str, int], str]:
    """The vocabulary and ``merges.txt`` text of a BPE file or a tokenizer folder, checked against the text tower."""
    if source.is_dir():
        if not ((source / "vocab.json").is_file() and (source / "merges.txt").is_file()):
            raise CovsegError(
                "tokenizer folder has no vocab.json and merges.txt (a Hugging Face CLIP tokenizer's files)",
                source,
            )
        try:
            vocab = json.loads((source / "vocab.json").read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise CovsegError("unreadable vocab.json", source / "vocab.json") from None
        merges_text = (source / "merges.txt").read_text(encoding="utf-8")
    elif source.is_file():
        vocab, merges = vocabulary_from_bpe(source)
        merges_text = "#version: 0.2\n" + "\n".join(merges) + "\n"
    else:
        raise CovsegError(
            "tokenizer not found (give OpenAI's bpe_simple_vocab_16e6.txt.gz or a CLIP tokenizer folder)",
            source,
        )
    if len(vocab) != arch.vocab_size or vocab.get(END) != arch.vocab_size - 1:
        raise CovsegError(
            f"tokenizer has {len(vocab)} tokens (end of text {vocab.get(END)}), the checkpoint's text tower {arch.vocab_size}: not its tokenizer",
            source,
        )
    return vocab, merges_text


def write_tokenizer(vocab: dict[str, int], merges_text: str, output: Path, arch: ClipArchitecture) -> None:
    """``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` of a CLIP tokenizer."""
    (output / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (output / "merges.txt").write_text(merges_text, encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": arch.context_length,
        "bos_token": START,
        "eos_token": END,
        "unk_token": END,
        "pad_token": END,
    }
    (output / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def hf_model(arch: ClipArchitecture, state: dict[str, Any], source: Path) -> Any:
    """The Hugging Face model holding the converted tensors (every name and shape checked)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModelWithProjection

    try:
        if arch.vision == "vit":
            config = CLIPConfig(
                text_config=text_config(arch),
                vision_config=vision_config(arch),
                projection_dim=arch.embed_dim,
            )
            model, towers = CLIPModel(config), ("vision", "text")
        else:
            model, towers = CLIPTextModelWithProjection(CLIPTextConfig(**text_config(arch))), ("text",)
    except (ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CovsegError(
            f"no CLIP has the sizes these tensors imply ({arch.name}: {first})", source
        ) from None
    mapped = openai_to_hf(state, towers, source)
    expected = model.state_dict()
    problem = state_dict_problem(expected, mapped, optional=lambda key: key.endswith("position_ids"))
    if problem:
        raise CovsegError(f"not a complete OpenAI-CLIP state dict for {arch.name}: {problem}", source)
    model.load_state_dict(mapped, strict=False)
    return model.eval()


def usage(path: Path) -> list[str]:
    """How to use an imported folder (printed by the CLI)."""
    info = json.loads((path / "clip_import.json").read_text(encoding="utf-8"))
    arch = info["architecture"]
    encoder = (
        f"model.params: {{encoder: clip-vision, encoder_kwargs: {{pretrained_dir: {path}}}}}"
        if arch["vision"] == "vit"
        else f"model.params: {{encoder: clip-resnet, encoder_kwargs: {{weights: {path}}}}}"
    )
    text = (
        f"extra.text.encoder: {path}"
        if info["tokenizer"]
        else "no tokenizer: add --tokenizer clip/bpe_simple_vocab_16e6.txt.gz to use the text tower"
    )
    return [f"{arch['name']}: {encoder}", text]


def import_clip(file: str | Path, output: str | Path, tokenizer: str | Path | None = None) -> Path:
    """Convert an OpenAI-CLIP state dict ``file`` into the folder ``output`` (see the module docstring); returns it."""
    from safetensors.torch import save_file

    from covseg import __version__
    from covseg.runs.importers import sha256
    from covseg.utils.atomic import write_json
    from covseg.utils.outputs import OutputFolder

    file = Path(file)
    state = read_clip_state_dict(file)
    arch = infer_architecture(state, file)
    folder = OutputFolder(
        output, "weights import", [file, *([tokenizer] if tokenizer else [])], owned=CLIP_FILES
    )
    folder.validate()
    model = hf_model(arch, state, file)
    words = read_tokenizer(Path(tokenizer).expanduser(), arch) if tokenizer else None
    out = folder.prepare()
    with folder.lock():
        model.save_pretrained(str(out), safe_serialization=True)
        if arch.vision == "resnet":
            visual = {
                k.removeprefix("visual."): v.contiguous() for k, v in state.items() if k.startswith("visual.")
            }
            save_file(visual, str(out / "visual.safetensors"))
        if words is not None:
            write_tokenizer(*words, out, arch)
        else:
            for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
                # a stale tokenizer of an earlier import is not this one's
                (out / name).unlink(missing_ok=True)
        write_json(
            out / "clip_import.json",
            {
                "source_file": file.name,
                "sha256": sha256(file),
                "format": "clip",
                "architecture": arch.to_dict(),
                "tensors": len(state),
                "tokenizer": bool(tokenizer),
                "covseg_version": __version__,
            },
        )
    return out


class ClipFormat:
    """The ``clip`` entry of ``CHECKPOINT_FORMATS``: writes a model folder, not a run folder."""

    name = "clip"
    source = "openai/CLIP clip/model.py (CLIP: ViT or ModifiedResNet image tower, text transformer)"

    def import_folder(
        self, file: str | Path, output: str | Path, tokenizer: str | Path | None = None
    ) -> Path:
        return import_clip(file, output, tokenizer)

    def usage(self, path: Path) -> list[str]:
        return usage(path)


def _clip_format() -> ClipFormat:
    """OpenAI-CLIP / open_clip state dicts (ViT-B/32, ViT-B/16, ViT-L/14, RN50, RN101): a CLIP folder for cris (--tokenizer BPE)"""
    return ClipFormat()


CHECKPOINT_FORMATS.register("clip", _clip_format)
