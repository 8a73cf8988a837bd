"""Input adapters: model inputs beside the image, used alike by the trainer and the predictor.

An adapter may add input channels (the cascade's ``prior``: a binary run's infection map) and
keyword inputs of the model (``text``: a caption's token features, or the model's own token
ids), say how a flipped input's context changes (captions name image sides), change a training
batch (prompt sampling, side-swapping flips, text dropout) and describe itself for
``model.json``. Each adapter is a registry entry (:data:`covseg.registry.INPUT_ADAPTERS`) with a
``from_description`` constructor, so the predictor rebuilds whatever a run folder names without
knowing the kinds; the image-only model simply has none.

A *context* is the per-sample dict the adapters read (``{"text": "..."}``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from covseg.errors import ConfigError, CovsegError
from covseg.registry import INPUT_ADAPTERS
from covseg.text.sides import swap_sides

CACHE_FILE = "text_cache.pt"


class InputAdapter:
    """Base adapter: no channels, no keyword inputs, context unchanged by flips."""

    name = "base"
    #: input channels this adapter appends after the image channels
    extra_channels = 0

    def channels(self, image: np.ndarray, context: dict[str, Any]) -> np.ndarray | None:
        """Extra input channels ``(c, *spatial)`` at the image's size, or None."""
        return None

    def model_kwargs(self, contexts: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Keyword inputs of the model for a batch of contexts."""
        return {}

    def flip_context(self, context: dict[str, Any]) -> dict[str, Any]:
        """The context of the horizontally flipped input (flip test-time augmentation)."""
        return context

    def draw_training(self, meta: dict[str, Any], generator: torch.Generator) -> dict[str, Any] | None:
        """The random numbers of this adapter's training-time changes to a batch (one row per sample).

        ``meta`` holds ``n`` (samples) and, where the data has them, ``text`` and ``text_variants``.
        Drawn in the main process in a fixed order, so the run does not depend on data workers.
        """
        return None

    def apply_training(self, batch: dict[str, Any], draws: dict[str, Any] | None) -> dict[str, Any]:
        """Apply drawn training-time changes to an augmented batch."""
        return batch

    def training_batch(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        """Training-time changes to an augmented batch, drawn from ``generator``."""
        meta = {"n": batch["image"].shape[0], "text": batch.get("text"), "text_variants": batch.get("text_variants")}
        return self.apply_training(batch, self.draw_training(meta, generator))

    def describe(self) -> dict[str, Any]:
        """This adapter's entry in ``model.json`` (its ``name`` is the key)."""
        return {}

    def parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters (a fine-tuned text encoder), for the optimiser."""
        return []

    def train(self, mode: bool = True) -> InputAdapter:
        return self

    def state_dict(self) -> dict[str, Any] | None:
        """Weights the checkpoint must keep (None: nothing)."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    @classmethod
    def from_description(cls, description: Any, **kwargs: Any) -> InputAdapter | None:
        """The adapter a run description asks for, or None when it names none of this kind."""
        return None


# --------------------------------------------------------------------------------------------- prior


@INPUT_ADAPTERS.register("prior")
class PriorAdapter(InputAdapter):
    """The cascade input: a binary run's infection probability as one extra channel.

    ``source`` is anything with ``probabilities(images) -> [map]`` (a ``Segmenter`` of the prior
    run). Training gives each training case the map of the run that held it out (out-of-fold
    priors) through :meth:`channels_from`; validation and prediction use ``source``.
    """

    name = "prior"
    extra_channels = 1

    def __init__(self, source: Any, run: str | Path | None = None, checkpoint: str = "last") -> None:
        self.source = source
        self.run = None if run is None else str(run)
        self.checkpoint = checkpoint

    def channels_from(self, source: Any, image: np.ndarray) -> np.ndarray:
        probs = source.infer([image]).probs[0]
        if probs.ndim != 2:  # a K-class run gives (K, H, W)
            raise CovsegError("the prior run must be binary (one infection map per image)", self.run)
        return probs.astype(np.float32)[None]

    def channels(self, image, context):
        return self.channels_from(self.source, image)

    def describe(self) -> dict[str, Any]:
        return {"run": self.run, "checkpoint": self.checkpoint}

    @classmethod
    def from_description(cls, description, load_run: Callable[..., Any] | None = None, run_dir: Path | None = None, **_: Any):
        prior = description.prior
        if prior is None:
            return None
        if load_run is None:
            raise CovsegError("a cascade run needs its prior run loaded", run_dir)
        prior_dir = Path(prior.run)
        if run_dir is not None and not prior_dir.is_absolute():
            prior_dir = Path(run_dir) / prior_dir  # a relative prior run lies beside this run folder, wherever it was copied
        if run_dir is not None and prior_dir.resolve() == Path(run_dir).resolve():
            raise CovsegError("model.json prior.run points at this run folder itself", Path(run_dir) / "model.json")
        return cls(load_run(prior_dir, prior.checkpoint), prior.run, prior.checkpoint)


# ---------------------------------------------------------------------------------------------- text


class TextSettings(BaseModel):
    """``extra.text`` of a config with a text-guided model: encoder and training-time text handling.

    ::

        extra:
          text:
            encoder: minilm          # auto | minilm | embedding | /local/hf/folder
            mode: frozen             # frozen (cached per unique text) | finetune
            max_length: 64
            prompt_sampling: false   # true: a random prompt type (P0..Pn), then a random phrasing of it, per case per step
            prompt_types: null       # the types prompt_sampling draws from (e.g. [P0, P1]); null = all
            text_dropout: 0.0        # train some cases image-only (null text)
            missing: error           # error | image-only: cases without text
            flip_swap: 0.0           # horizontal flip that also swaps "left"/"right" in the text
            align_weight: 0.1        # weight of c2fvl's image-text alignment loss (legacy loss format)
    """

    model_config = ConfigDict(extra="forbid")

    encoder: str = "auto"
    mode: Literal["frozen", "finetune"] = "frozen"
    max_length: int = Field(64, ge=2, le=512)
    encoder_lr_scale: float = Field(0.1, gt=0)
    vocab_buckets: int = Field(8192, ge=16)
    embed_dim: int = Field(128, ge=8)
    prompt_sampling: bool = False
    prompt_types: list[str] | None = None
    text_dropout: float = Field(0.0, ge=0.0, le=1.0)
    missing: Literal["error", "image-only"] = "error"
    flip_swap: float = Field(0.0, ge=0.0, le=1.0)
    align_weight: float = Field(0.1, ge=0.0)
    cache: bool = True

    def encoder_spec(self) -> dict[str, Any]:
        return {
            "name": self.encoder,
            "mode": self.mode,
            "max_length": self.max_length,
            "vocab_buckets": self.vocab_buckets,
            "embed_dim": self.embed_dim,
        }


def parse_text_settings(extra: dict[str, Any] | None) -> TextSettings:
    """``extra.text`` validated; a bad value is a one-line ``ConfigError``."""
    raw = extra.get("text", {}) if isinstance(extra, dict) else {}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("extra.text must be a mapping of text settings")
    try:
        return TextSettings.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"extra.text.{loc}: {err['msg']}") from None


def caption_attribute_inputs(texts: Sequence[str | None]) -> dict[str, Any]:
    """``{"attributes": (B, 8)}``: the published C2FVL's numbers read from QaTa-style captions
    (laterality, infected zones, six zones; :func:`covseg.data.caption_fields.caption_attributes`)."""
    from covseg.data.caption_fields import caption_attributes

    rows = []
    for text in texts:
        values = caption_attributes(text)
        if values is None:
            what = "an image came without text" if not text else f"cannot read the caption {text[:60]!r}"
            raise CovsegError(
                f"C2FVL reads QaTa-style captions ('bilateral pulmonary infection, two infected areas, "
                f"lower left lung and lower right lung.'): {what}"
            )
        rows.append(values)
    return {"attributes": torch.tensor(rows, dtype=torch.float32).reshape(len(rows), -1)}


def text_inputs(model, encoder, texts: Sequence[str | None]) -> dict[str, Any]:
    """The keyword inputs a text model takes for ``texts`` (features, its own token ids, or caption attributes)."""
    kind = getattr(model, "text_input", "features")
    if kind == "ids":
        ids, mask = model.tokenize(list(texts))
        return {"input_ids": ids, "attention_mask": mask}
    if kind == "attributes":
        return caption_attribute_inputs(texts)
    feats = encoder.encode(list(texts))
    return {"text_tokens": feats.tokens, "text_mask": feats.mask}


@INPUT_ADAPTERS.register("text")
class TextAdapter(InputAdapter):
    """A caption or prompt per image, encoded for the model (frozen + cached, or trained with it)."""

    name = "text"

    def __init__(self, model, encoder=None, settings: TextSettings | None = None, prompt: str | None = None) -> None:
        self.model = model
        self.encoder = encoder
        self.settings = settings or TextSettings()
        self.prompt = prompt
        if getattr(model, "text_input", "features") == "features" and encoder is None:
            raise CovsegError("text-guided model without a text encoder")

    @property
    def input_kind(self) -> str:
        return getattr(self.model, "text_input", "features")

    # -- model inputs ---------------------------------------------------------------------------
    def model_kwargs(self, contexts):
        return text_inputs(self.model, self.encoder, [c.get("text") for c in contexts])

    def flip_context(self, context):
        return {**context, "text": swap_sides(context.get("text"))}

    # -- training -----------------------------------------------------------------------------------
    def draw_training(self, meta, generator):
        """Prompt sampling, side-swapping flips and text dropout, drawn in that order."""
        s, n = self.settings, meta["n"]
        texts = list(meta.get("text") or [None] * n)
        variants = meta.get("text_variants")
        if s.prompt_sampling and variants is not None:
            for k in range(n):  # one prompt type, then one of its phrasings (a plain string is one type, one phrasing)
                if variants[k]:
                    group = variants[k][int(torch.randint(len(variants[k]), (1,), generator=generator))]
                    group = [group] if isinstance(group, str) else group
                    texts[k] = group[int(torch.randint(len(group), (1,), generator=generator))]
        draws: dict[str, Any] = {"text": texts}
        if s.flip_swap > 0:
            draws["flip"] = torch.rand(n, generator=generator) < s.flip_swap
        if s.text_dropout > 0:
            draws["drop"] = torch.rand(n, generator=generator) < s.text_dropout
        return draws

    def apply_training(self, batch, draws):
        texts = list(draws["text"])
        flip = draws.get("flip")
        if flip is not None and bool(flip.any()):
            for key in ("image", "mask", "edge"):
                if key in batch and batch[key] is not None:
                    t = batch[key]
                    f = flip.to(t.device)
                    batch[key] = torch.where(f.view(-1, *([1] * (t.ndim - 1))), t.flip(-1), t)
            texts = [swap_sides(t) if f else t for t, f in zip(texts, flip.tolist())]
        drop = draws.get("drop")
        if drop is not None:
            texts = [None if d else t for t, d in zip(texts, drop.tolist())]
        batch["text"] = texts
        return batch

    def precompute(self, texts: Sequence[str | None], cache_path: Path | None = None) -> None:
        """Encode every unique text once (frozen encoders) and keep the features at ``cache_path``."""
        enc = self.encoder
        if enc is None or not enc.cached:
            return
        unique = list(dict.fromkeys(t for t in texts if t))
        if self.settings.flip_swap > 0:
            unique = list(dict.fromkeys([*unique, *(swap_sides(t) for t in unique)]))
        for start in range(0, len(unique), 256):
            enc.encode(unique[start : start + 256])
        if cache_path is not None and self.settings.cache:
            enc.save_cache(cache_path)

    # -- state --------------------------------------------------------------------------------------
    def parameters(self):
        enc = self.encoder
        if enc is None or not enc.trainable:
            return []
        return [p for p in enc.parameters() if p.requires_grad]

    def train(self, mode: bool = True):
        if self.encoder is not None:
            self.encoder.train(mode)
        return self

    def state_dict(self):
        enc = self.encoder
        return enc.state_dict() if enc is not None and enc.trainable else None

    def load_state_dict(self, state):
        if self.encoder is not None:
            self.encoder.load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        enc, s = self.encoder, self.settings
        return {
            "input": self.input_kind,
            "encoder": enc.spec.to_dict() if enc is not None else None,
            "max_length": enc.spec.max_length if enc is not None else getattr(self.model, "max_length", None),
            "prompt": self.prompt,
            "prompt_sampling": s.prompt_sampling,
            "text_dropout": s.text_dropout,
            "missing": s.missing,
            "flip_swap": s.flip_swap,
            "cache_file": CACHE_FILE if enc is not None and enc.cached and s.cache else None,
        }

    @classmethod
    def from_description(cls, description, model=None, checkpoint: dict | None = None, run_dir: Path | None = None, **_: Any):
        info = description.text
        if info is None:
            return None
        encoder = None
        if info.input == "features":
            from covseg.text.encoder import build_text_encoder

            if not info.encoder:
                raise CovsegError("model.json 'text' entry names no encoder", None if run_dir is None else Path(run_dir) / "model.json")
            encoder = build_text_encoder(info.encoder)
            if checkpoint is not None and "text_encoder_state" in checkpoint:
                encoder.load_state_dict(checkpoint["text_encoder_state"])
            encoder.eval()
            if info.cache_file and run_dir is not None:
                encoder.load_cache(Path(run_dir) / info.cache_file)
        settings = TextSettings(missing=info.missing, flip_swap=info.flip_swap, cache=bool(info.cache_file))
        return cls(model, encoder, settings, info.prompt)
