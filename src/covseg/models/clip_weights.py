"""OpenAI-CLIP state dicts: read them safely, infer the architecture, map them to Hugging Face names.

The key names are those of ``openai/CLIP`` ``clip/model.py`` (``visual.conv1.weight``,
``visual.transformer.resblocks.N.*``, ``transformer.resblocks.N.*``, ``token_embedding.weight``,
``positional_embedding``, ``ln_final.*``, ``text_projection``, ``logit_scale``; for the ResNets
``visual.layer1..4.*`` and ``visual.attnpool.*``), which open_clip's OpenAI-compatible models
share. The architecture (ViT-B/32, ViT-B/16, ViT-L/14, RN50, RN101, ...) is inferred from the
shapes as their ``build_model`` does, so any width works (tests use tiny random ones).

OpenAI's released ``.pt`` files are TorchScript archives: loading one runs code, so it is refused
in one line that says how to save a plain state dict instead.
"""

from __future__ import annotations

import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from covseg.errors import CovsegError
from covseg.utils.state_dicts import read_state_dict

#: the names OpenAI gave its released architectures, by (kind, layers, width, patch or resolution)
KNOWN_NAMES = {
    ("vit", 12, 768, 32): "ViT-B/32",
    ("vit", 12, 768, 16): "ViT-B/16",
    ("vit", 24, 1024, 14): "ViT-L/14",
    ("resnet", (3, 4, 6, 3), 64, 224): "RN50",
    ("resnet", (3, 4, 23, 3), 64, 224): "RN101",
    ("resnet", (4, 6, 10, 6), 80, 288): "RN50x4",
}
TORCHSCRIPT_HELP = (
    "is a TorchScript archive (OpenAI's released .pt files are); covseg never runs code from a checkpoint: "
    "save its weights as a plain state dict first, e.g. with the openai/CLIP package: "
    "model, _ = clip.load(NAME, device='cpu', jit=False); torch.save(model.state_dict(), 'clip-NAME.pt')"
)


@dataclass(frozen=True)
class ClipArchitecture:
    """The sizes of a CLIP model, as ``clip/model.py``'s ``build_model`` infers them."""

    vision: str  # "vit" or "resnet"
    vision_width: int
    vision_layers: int | tuple[int, ...]
    vision_patch_size: int | None
    image_resolution: int
    embed_dim: int
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int

    @property
    def vision_heads(self) -> int:
        return self.vision_width * 32 // 64 if self.vision == "resnet" else self.vision_width // 64

    @property
    def text_heads(self) -> int:
        return self.text_width // 64

    @property
    def name(self) -> str:
        """OpenAI's name of the architecture (``ViT-B/16``, ``RN50``), or a description of an unnamed one."""
        size = self.vision_patch_size if self.vision == "vit" else self.image_resolution
        known = KNOWN_NAMES.get((self.vision, self.vision_layers, self.vision_width, size))
        if known:
            return known
        if self.vision == "vit":
            return f"ViT (width {self.vision_width}, {self.vision_layers} layers, patch {self.vision_patch_size})"
        return f"ModifiedResNet (width {self.vision_width}, blocks {list(self.vision_layers)})"  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["name"] = self.name
        return d


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def read_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a CLIP checkpoint (``.pt``/``.pth``/``.bin`` state dict or ``.safetensors``), as float32.

    Read with ``torch.load(weights_only=True)`` or safetensors; a TorchScript archive, a file that
    needs unpickling or anything that is not a name → tensor mapping is refused in one line.
    """
    path = Path(path)
    if path.is_file() and path.suffix != ".safetensors" and _is_torchscript(path):
        raise CovsegError(TORCHSCRIPT_HELP, path)
    state = read_state_dict(path, "CLIP checkpoint")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def infer_architecture(state: dict[str, torch.Tensor], source: str | Path | None = None) -> ClipArchitecture:
    """The architecture of an OpenAI-CLIP state dict, from its shapes (as their ``build_model``)."""
    needed = ("text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight")
    missing = [k for k in needed if k not in state]
    if missing or not any(k.startswith("visual.") for k in state):
        hint = (
            " (open_clip models with a separate text tower, keys 'text.*', are not OpenAI-compatible)"
            if any(k.startswith("text.") for k in state)
            else ""
        )
        raise CovsegError(
            f"not an OpenAI-CLIP state dict: no {missing[0] if missing else 'visual.*'} tensor{hint}", source
        )
    try:
        if "visual.proj" in state:
            width = state["visual.conv1.weight"].shape[0]
            layers: int | tuple[int, ...] = len(
                [k for k in state if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")]
            )
            patch = state["visual.conv1.weight"].shape[-1]
            grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            vision, resolution = "vit", patch * grid
        else:
            layers = tuple(
                len({k.split(".")[2] for k in state if k.startswith(f"visual.layer{b}.")})
                for b in (1, 2, 3, 4)
            )
            width = state["visual.layer1.0.conv1.weight"].shape[0]
            tokens = state["visual.attnpool.positional_embedding"].shape[0]
            grid = round((tokens - 1) ** 0.5)
            if grid**2 + 1 != tokens or 0 in layers:
                raise KeyError("visual.attnpool.positional_embedding")
            vision, patch, resolution = "resnet", None, grid * 32
    except KeyError as exc:
        raise CovsegError(f"not an OpenAI-CLIP state dict: no {exc.args[0]} tensor", source) from None
    except IndexError:
        raise CovsegError(
            "not an OpenAI-CLIP state dict: a tensor has too few dimensions for its name", source
        ) from None
    try:
        text = (
            state["text_projection"].shape[1],
            state["positional_embedding"].shape[0],
            state["token_embedding.weight"].shape[0],
        )
        text_width = state["ln_final.weight"].shape[0]
    except IndexError:
        raise CovsegError(
            "not an OpenAI-CLIP state dict: a text tensor has too few dimensions for its name", source
        ) from None
    return ClipArchitecture(
        vision=vision,
        vision_width=int(width),
        vision_layers=layers,
        vision_patch_size=None if patch is None else int(patch),
        image_resolution=int(resolution),
        embed_dim=int(text[0]),
        context_length=int(text[1]),
        vocab_size=int(text[2]),
        text_width=int(text_width),
        text_layers=len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")}),
    )


# -- OpenAI names → Hugging Face CLIP names ------------------------------------------------------

_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}
_FIXED = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",  # sic: Hugging Face's spelling
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
#: buffers that are not weights: ``build_model`` deletes the first three; older open_clip saved the causal mask
_NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def _block_key(rest: str, prefix: str) -> dict[str, str] | None:
    """``N.attn.in_proj_weight`` → the q/k/v names it splits into; ``N.ln_1.weight`` → its one name."""
    layer, _, name = rest.partition(".")
    base = f"{prefix}.encoder.layers.{layer}."
    if name in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = name.rsplit("_", 1)[1]
        return {p: f"{base}self_attn.{p}_proj.{kind}" for p in ("q", "k", "v")}
    module, _, param = name.rpartition(".")
    if module in _BLOCK and param in ("weight", "bias"):
        return {"": f"{base}{_BLOCK[module]}.{param}"}
    return None


def openai_to_hf(
    state: dict[str, torch.Tensor],
    towers: tuple[str, ...] = ("vision", "text"),
    source: str | Path | None = None,
) -> dict[str, torch.Tensor]:
    """An OpenAI-CLIP state dict renamed into Hugging Face ``CLIPModel`` names (q/k/v split, projections transposed).

    ``towers`` picks the towers to keep (the ResNet visual tower has no Hugging Face model: it is
    left out with ``towers=("text",)``). Any key that maps nowhere is an error naming it.
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if key in _NOT_WEIGHTS:
            continue
        visual = key.startswith("visual.")
        if (visual and "vision" not in towers) or (
            not visual and key != "logit_scale" and "text" not in towers
        ):
            continue
        if key == "logit_scale" and towers != ("vision", "text"):
            continue
        if key in _FIXED:
            out[_FIXED[key]] = value
        elif key == "visual.proj":
            out["visual_projection.weight"] = value.t().contiguous()
        elif key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
        else:
            prefix, mapped = None, None
            for head, tower in (
                ("visual.transformer.resblocks.", "vision_model"),
                ("transformer.resblocks.", "text_model"),
            ):
                if key.startswith(head):
                    prefix, mapped = tower, _block_key(key[len(head) :], tower)
                    break
            if prefix is None or mapped is None:
                unknown.append(key)
                continue
            if len(mapped) == 3:
                for part, name in zip(value.chunk(3, dim=0), mapped.values(), strict=True):
                    out[name] = part.contiguous()
            else:
                out[mapped[""]] = value
    if unknown:
        raise CovsegError(
            f"not an OpenAI-CLIP ViT state dict: {len(unknown)} tensor(s) with no Hugging Face name, e.g. {', '.join(unknown[:3])}",
            source,
        )
    return out


def text_config(arch: ClipArchitecture) -> dict[str, Any]:
    """Hugging Face ``CLIPTextConfig`` arguments of the text tower (the last two ids are start and end of text)."""
    return {
        "vocab_size": arch.vocab_size,
        "hidden_size": arch.text_width,
        "intermediate_size": 4 * arch.text_width,
        "num_hidden_layers": arch.text_layers,
        "num_attention_heads": max(1, arch.text_heads),
        "max_position_embeddings": arch.context_length,
        "projection_dim": arch.embed_dim,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": arch.vocab_size - 2,
        "eos_token_id": arch.vocab_size - 1,
        "pad_token_id": arch.vocab_size - 1,
    }


def vision_config(arch: ClipArchitecture) -> dict[str, Any]:
    """Hugging Face ``CLIPVisionConfig`` arguments of a ViT vision tower."""
    if arch.vision != "vit":
        raise CovsegError(
            f"{arch.name} has a ResNet image tower; Hugging Face CLIP has only ViTs (use the clip-resnet encoder)"
        )
    return {
        "hidden_size": arch.vision_width,
        "intermediate_size": 4 * arch.vision_width,
        "num_hidden_layers": arch.vision_layers,
        "num_attention_heads": max(1, arch.vision_heads),
        "image_size": arch.image_resolution,
        "patch_size": arch.vision_patch_size,
        "projection_dim": arch.embed_dim,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }


def visual_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``visual.*`` tensors with the prefix dropped (what the ``clip-resnet`` encoder loads)."""
    return {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
