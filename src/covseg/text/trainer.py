"""``trainer: text``: supervised training of text-guided models (``lvit``, ``c2fvl``, ``clipseg``).

Settings live in the config's ``extra.text`` (validated by :class:`TextSettings`)::

    trainer: text
    data: {root: ..., prompt: P0}          # CRIS prompt key, where the source has several
    model: {name: lvit, params: {...}}
    extra:
      text:
        encoder: minilm                    # auto | minilm | embedding | /local/hf/folder
        mode: frozen                       # frozen (cached per unique text) | finetune
        max_length: 64
        prompt_sampling: false             # true: a random prompt variant (P0..Pn) per case per step
        text_dropout: 0.0                  # train some cases image-only (null text)
        missing: error                     # error | image-only: cases without text
        flip_swap: 0.0                     # horizontal flip that also swaps "left"/"right" in the text
        align_weight: 0.1                  # weight of c2fvl's global image-text alignment loss

Each case's text comes from the data layer (``CaseTensors.texts``, one text per case; with
``prompt_sampling`` every variant of the record's ``texts``). Features of a frozen encoder are
computed once per unique text and kept in ``RUN/text_cache.pt``. ``model.json`` gets a
``"text"`` entry (the resolved encoder spec and the settings), from which ``covseg predict``
rebuilds the encoder; a trainable encoder's weights go into the checkpoints.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from covseg.errors import ConfigError, DataError
from covseg.training.trainer import Trainer, register_trainer

CACHE_FILE = "text_cache.pt"


class TextSettings(BaseModel):
    """``extra.text`` of a ``trainer: text`` config."""

    model_config = ConfigDict(extra="forbid")

    encoder: str = "auto"
    mode: Literal["frozen", "finetune"] = "frozen"
    max_length: int = Field(64, ge=2, le=512)
    encoder_lr_scale: float = Field(0.1, gt=0)
    vocab_buckets: int = Field(8192, ge=16)
    embed_dim: int = Field(128, ge=8)
    prompt_sampling: bool = False
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


def parse_text_settings(extra: dict[str, Any]) -> TextSettings:
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


_SIDE = re.compile(r"\b(left|right|Left|Right|LEFT|RIGHT)\b")
_SWAP = {"left": "right", "right": "left", "Left": "Right", "Right": "Left", "LEFT": "RIGHT", "RIGHT": "LEFT"}


def swap_sides(text: str | None) -> str | None:
    """``left`` ↔ ``right`` (image sides), for a horizontally flipped image."""
    if text is None:
        return None
    return _SIDE.sub(lambda m: _SWAP[m.group(0)], text)


def mentions_sides(texts: Sequence[str | None]) -> bool:
    return any(t is not None and _SIDE.search(t) for t in texts)


class TextCriterion:
    """The configured criterion plus ``align_weight`` × the model's ``align_loss`` (c2fvl)."""

    def __init__(self, base, align_weight: float) -> None:
        self.base = base
        self.align_weight = float(align_weight)

    def __call__(self, outputs, batch):
        total, parts = self.base(outputs, batch)
        align = outputs.get("align_loss")
        if align is not None and self.align_weight > 0:
            parts["align"] = float(align.detach())
            total = total + self.align_weight * align
            parts["total"] = float(total.detach())
        return total, parts


def text_inputs(model, encoder, texts: Sequence[str | None]) -> dict[str, Any]:
    """The keyword inputs a text model takes for ``texts`` (features, or its own token ids)."""
    if getattr(model, "text_input", "features") == "ids":
        ids, mask = model.tokenize(list(texts))
        return {"input_ids": ids, "attention_mask": mask}
    feats = encoder.encode(list(texts))
    return {"text_tokens": feats.tokens, "text_mask": feats.mask}


@register_trainer("text")
class TextTrainer(Trainer):
    """Supervised training with the case's text fed to the model (see the module docstring)."""

    def __init__(self, cfg, run_dir, resume: bool = False, quiet: bool = False) -> None:
        super().__init__(cfg, run_dir, resume=resume, quiet=quiet)
        self.text = parse_text_settings(cfg.extra)
        self.text_encoder = None
        self.train_variants: list[list[str]] = []

    # ----------------------------------------------------------------- setup
    def setup_data(self) -> None:
        super().setup_data()
        for records, data in ((self.train_records, self.train_data), (self.val_records, self.val_data)):
            if not data.texts:
                data.texts = [None] * len(data)
            missing = [r for r, t in zip(records, data.texts) if t is None or not str(t).strip()]
            if missing and self.text.missing == "error":
                raise DataError(
                    f"no text for this image ({len(missing)} of {len(records)} cases have none; give captions "
                    "or set extra.text.missing: image-only)",
                    missing[0].image,
                )
        self.train_variants = [
            list(dict.fromkeys(v for v in (r.texts or {}).values() if v)) for r in self.train_records
        ]
        if self.text.prompt_sampling and not any(len(v) > 1 for v in self.train_variants):
            self.log("[yellow]extra.text.prompt_sampling: no case has more than one prompt; using the one text[/]")
        if self.augment_cfg.hflip > 0 and mentions_sides(self.train_data.texts):
            self.log(
                "[yellow]augment.hflip > 0 flips images but not the words left/right in their texts; "
                "use augment.hflip: 0 and extra.text.flip_swap instead[/]"
            )

    def setup_model(self) -> None:
        import covseg.models  # noqa: F401  (registers the models)
        from covseg.losses import build_criterion
        from covseg.models.registry import MODELS, build_model
        from covseg.text.layers import TextSegmentationModel

        name = self.cfg.model.name
        factory = MODELS.get(name) if name in MODELS else None
        if factory is None:
            raise ConfigError(f"model.name: unknown model {name!r}; known: {', '.join(MODELS.names())}")
        if not (isinstance(factory, type) and issubclass(factory, TextSegmentationModel)):
            raise ConfigError(f"trainer: text needs a text-guided model (lvit, c2fvl, clipseg), not {name!r}; use trainer: supervised")
        params = dict(self.cfg.model.params)
        params.setdefault("in_channels", self.cfg.preprocess.channels)
        params.setdefault("out_channels", self.num_classes)
        if factory.text_input == "features":
            from covseg.text.encoder import build_text_encoder

            self.text_encoder = build_text_encoder(self.text.encoder_spec())
            if self.resume:
                self.text_encoder.load_cache(self.run.path / CACHE_FILE)
            if "text_dim" in params and int(params["text_dim"]) != self.text_encoder.dim:
                raise ConfigError(
                    f"model.params.text_dim={params['text_dim']} but the text encoder gives {self.text_encoder.dim}-d features"
                )
            params["text_dim"] = self.text_encoder.dim
        self.model = build_model(name, **params)
        self.criterion = TextCriterion(build_criterion(self.cfg.loss.model_dump()), self.text.align_weight)

    def setup_optimisation(self) -> None:
        super().setup_optimisation()  # steps and schedule as the base trainer sets them
        groups: list[dict[str, Any]] = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        enc = self.text_encoder
        if enc is not None and enc.trainable:
            from covseg.text.encoder import EMBEDDING

            scale = 1.0 if enc.spec.name == EMBEDDING else self.text.encoder_lr_scale
            groups.append({"params": [p for p in enc.parameters() if p.requires_grad], "lr_scale": scale})
        self.optimizer = self.make_optimizer(groups)

    def write_run_description(self) -> None:
        super().write_run_description()
        self.precompute_text()

    def precompute_text(self) -> None:
        """Encode every unique text once (frozen encoders) and keep the features in the run folder."""
        enc = self.text_encoder
        if enc is None or not enc.cached:
            return
        texts = [t for t in (*self.train_data.texts, *self.val_data.texts) if t]
        if self.text.prompt_sampling:
            texts += [v for variants in self.train_variants for v in variants]
        if self.text.flip_swap > 0:
            texts += [swap_sides(t) for t in texts]
        unique = list(dict.fromkeys(texts))
        for start in range(0, len(unique), 256):
            enc.encode(unique[start : start + 256])
        if self.text.cache:
            enc.save_cache(self.run.path / CACHE_FILE)

    def model_description(self) -> dict[str, Any]:
        desc = super().model_description()
        enc = self.text_encoder
        desc["text"] = {
            "input": getattr(self.model, "text_input", "features"),
            "encoder": enc.spec.to_dict() if enc is not None else None,
            "max_length": enc.spec.max_length if enc is not None else getattr(self.model, "max_length", None),
            "prompt": self.cfg.data.prompt,
            "prompt_sampling": self.text.prompt_sampling,
            "text_dropout": self.text.text_dropout,
            "missing": self.text.missing,
            "flip_swap": self.text.flip_swap,
            "cache_file": CACHE_FILE if enc is not None and enc.cached and self.text.cache else None,
        }
        return desc

    # ----------------------------------------------------------------- state
    def state(self, epoch: int) -> dict[str, Any]:
        state = super().state(epoch)
        enc = self.text_encoder
        state["text"] = {"encoder": enc.spec.to_dict() if enc is not None else None}
        if enc is not None and enc.trainable:
            state["text_encoder_state"] = enc.state_dict()
        return state

    def load_state(self, ckpt: dict[str, Any]) -> None:
        super().load_state(ckpt)
        if self.text_encoder is not None and "text_encoder_state" in ckpt:
            self.text_encoder.load_state_dict(ckpt["text_encoder_state"])

    # ----------------------------------------------------------------- training
    def make_batch(self, data, idx, gen) -> dict[str, Any]:
        import torch

        batch = super().make_batch(data, idx, gen)
        n = len(idx)
        texts = list(batch.get("text") or [None] * n)
        if self.text.prompt_sampling and data is self.train_data:
            for k, i in enumerate(idx.tolist()):
                variants = self.train_variants[i]
                if len(variants) > 1:
                    texts[k] = variants[int(torch.randint(len(variants), (1,), generator=gen))]
        if self.text.flip_swap > 0:
            flip = torch.rand(n, generator=gen) < self.text.flip_swap
            if bool(flip.any()):
                for key in ("image", "mask", "edge"):
                    if key in batch and batch[key] is not None:
                        t = batch[key]
                        batch[key] = torch.where(flip.view(-1, *([1] * (t.ndim - 1))), t.flip(-1), t)
                texts = [swap_sides(t) if f else t for t, f in zip(texts, flip.tolist())]
        if self.text.text_dropout > 0:
            drop = (torch.rand(n, generator=gen) < self.text.text_dropout).tolist()
            texts = [None if d else t for t, d in zip(texts, drop)]
        batch["text"] = texts
        return batch

    def forward_train(self, model, batch: dict[str, Any]) -> dict[str, Any]:
        texts = batch.get("text") or [None] * batch["image"].shape[0]
        return model.forward_train(batch["image"], **text_inputs(model, self.text_encoder, texts))

    def train_epoch(self, epoch: int, on_step) -> dict[str, float]:
        if self.text_encoder is not None:
            self.text_encoder.train()
        return super().train_epoch(epoch, on_step)

    def validate(self, model=None) -> dict[str, float]:
        if self.text_encoder is not None:
            self.text_encoder.eval()
        return super().validate(model)

    def eval_forward(self, model, data):
        return lambda x, **extra: model(x, **extra)

    def eval_extra_inputs(self, data):
        texts = list(data.texts or [None] * len(data))
        model = self.model
        return lambda sl: text_inputs(model, self.text_encoder, texts[sl])
