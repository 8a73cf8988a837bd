"""Text-guided runs outside Python's text encoder: their prompts' text inputs computed once at export.

``covseg export`` of a text-guided run (``lvit``, ``c2fvl``, ``cris``, ``clipseg``) writes an ONNX
model with three inputs (``image`` and the two text inputs the model takes: ``text_tokens`` +
``text_mask`` features of its sentence encoder, or ``input_ids`` + ``attention_mask`` of its own
tokenizer) and ``text_inputs.npz`` beside it: each prompt's text inputs (batch 1, unpadded), in the
order of the card's ``text.prompts``. The encoder itself (MiniLM, or a trained one) stays behind, so a
deployment needs only onnxruntime and the prompts it was exported for; ``--engine onnx`` looks each
image's text up in that table and pads a batch exactly as the encoder does (zero features, mask 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covseg.engine.adapters import InputAdapter, text_inputs
from covseg.errors import CovsegError
from covseg.text.sides import swap_sides

TEXT_FILE = "text_inputs.npz"


def _clean(text: str | None) -> str | None:
    """The encoder's reading of a text: stripped, blank = no text."""
    return text.strip() if isinstance(text, str) and text.strip() else None


def export_prompts(run_prompt: str | None, prompts: Sequence[str]) -> list[str]:
    """The prompts an export covers: the run's own prompt, the user's, and each one's side-swapped form
    (flip test-time augmentation asks for "right" where the caption says "left")."""
    base = [p for p in (_clean(run_prompt), *(_clean(p) for p in prompts)) if p is not None]
    return list(dict.fromkeys([*base, *(swap_sides(p) for p in base)]))


def precompute_text_inputs(model: torch.nn.Module, encoder: Any, prompts: Sequence[str]) -> dict[str, np.ndarray]:
    """Each prompt's text inputs for ``model`` (batch 1, as :func:`text_inputs` gives them), as npz arrays
    named ``{input}__{i}``."""
    arrays: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            for name, value in text_inputs(model, encoder, [prompt]).items():
                arrays[f"{name}__{i}"] = value[0].detach().cpu().numpy()
    return arrays


def text_example(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The first prompt's text inputs as a batch of one (the example input of the export)."""
    return {key.split("__")[0]: torch.from_numpy(value)[None] for key, value in arrays.items() if key.endswith("__0")}


class ExportedTextAdapter(InputAdapter):
    """The text input of an exported text-guided network: each context's text looked up among the exported
    prompts' text inputs (``text_inputs.npz``), padded to the batch's longest like the encoder pads."""

    name = "text"
    encoder = None  # no encoder travels with an export

    def __init__(self, prompts: Sequence[str], names: Sequence[str], arrays: dict[str, np.ndarray], folder: Path) -> None:
        self.prompts = {p: i for i, p in enumerate(prompts)}
        self.names = tuple(names)
        self.arrays = arrays
        self.folder = folder

    @classmethod
    def load(cls, folder: Path, card: dict[str, Any]) -> ExportedTextAdapter:
        """The adapter of an export folder whose card has a ``text`` entry."""
        info = card.get("text")
        if not isinstance(info, dict) or not isinstance(info.get("prompts"), list) or not isinstance(info.get("inputs"), list):
            raise CovsegError("model card's text entry lists no prompts and inputs", folder / "model_card.json")
        path = folder / TEXT_FILE
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise CovsegError(f"unreadable text inputs of the exported prompts ({type(exc).__name__})", path) from None
        for i in range(len(info["prompts"])):
            for name in info["inputs"]:
                if f"{name}__{i}" not in arrays:
                    raise CovsegError(f"{TEXT_FILE} lacks {name} of prompt {i}", path)
        return cls([str(p) for p in info["prompts"]], [str(n) for n in info["inputs"]], arrays, folder)

    def model_kwargs(self, contexts: Sequence[dict[str, Any]]) -> dict[str, Any]:
        texts = [_clean(c.get("text")) for c in contexts]
        rows = []
        for text in texts:
            if text is None:
                rows.append(None)
            elif text in self.prompts:
                rows.append(self.prompts[text])
            else:
                raise CovsegError(
                    f"text {text!r} is not among the {len(self.prompts)} prompts this model was exported with "
                    "(covseg export --prompt TEXT adds one)",
                    self.folder,
                )
        out: dict[str, torch.Tensor] = {}
        for name in self.names:
            parts = [None if r is None else self.arrays[f"{name}__{r}"] for r in rows]
            ref = next((p for p in parts if p is not None), self.arrays[f"{name}__0"])
            length = max([1] + [p.shape[0] for p in parts if p is not None])  # no text at all: one null position
            batch = np.zeros((len(parts), length, *ref.shape[1:]), dtype=ref.dtype)
            for k, part in enumerate(parts):
                if part is not None:
                    batch[k, : part.shape[0]] = part
            out[name] = torch.from_numpy(batch)
        return out

    def flip_context(self, context: dict[str, Any]) -> dict[str, Any]:
        return {**context, "text": swap_sides(context.get("text"))}
