"""Text-guided training: when text is on, the checks on the cases' texts, and the text adapter.

Text is on for a text-guided model (``lvit``, ``c2fvl``, ``cris``, ``clipseg``) when the config names
``trainer: text`` or gives ``extra.text``; any trainer then feeds the text (CPS on a text model
needs no class of its own). Settings: :class:`covseg.engine.adapters.TextSettings`. Features
of a frozen encoder are computed once per unique text and kept in ``RUN/text_cache.pt``; a
trainable encoder's weights go into the checkpoints.
"""

from __future__ import annotations

from typing import Any

from covseg.engine.adapters import CACHE_FILE, TextAdapter, TextSettings, parse_text_settings
from covseg.errors import ConfigError, DataError
from covseg.models import MODELS, is_text_model
from covseg.text.sides import mentions_sides


def text_settings(cfg: Any) -> TextSettings | None:
    """The text settings when this run feeds text to its model, else None."""
    wants_text = cfg.trainer == "text" or "text" in (cfg.extra or {})
    if cfg.trainer == "text" and not is_text_model(cfg.model.name):
        if cfg.model.name not in MODELS:
            MODELS.get(cfg.model.name)  # unknown model: the registry's one-line error
        raise ConfigError(
            f"trainer: text needs a text-guided model (lvit, c2fvl, cris, clipseg), not {cfg.model.name!r}; use trainer: supervised"
        )
    if not wants_text or not is_text_model(cfg.model.name):
        return None
    return parse_text_settings(cfg.extra)


def check_texts(records: list, texts: list[str | None], settings: TextSettings) -> list[str | None]:
    """Every case's text, or a one-line error naming an image without one (unless ``missing: image-only``)."""
    texts = list(texts) if texts else [None] * len(records)
    missing = [r for r, t in zip(records, texts) if t is None or not str(t).strip()]
    if missing and settings.missing == "error":
        raise DataError(
            f"no text for this image ({len(missing)} of {len(records)} cases have none; give captions "
            "or set extra.text.missing: image-only)",
            missing[0].image,
        )
    return texts


def prompt_variants(records: list, types: list[str] | None = None) -> list[list[list[str]]]:
    """Every case's prompt types (CRIS-style ``P0..Pn``), each a list of its phrasings, for prompt sampling.

    The phrasings of a type come from ``meta["prompt_choices"]`` (a CRIS prompt given as a list),
    else the type's one text. ``types`` keeps only those types (case-insensitive).
    """
    wanted = None if types is None else {t.lower() for t in types}
    out = []
    for r in records:
        choices = (r.meta or {}).get("prompt_choices") or {}
        groups = []
        for key, text in (r.texts or {}).items():
            if wanted is not None and key.lower() not in wanted:
                continue
            phrasings = list(dict.fromkeys(t for t in (choices.get(key) or [text]) if t))
            if phrasings and phrasings not in groups:
                groups.append(phrasings)
        out.append(groups)
    return out


def variant_texts(variants: list[list[list[str]]]) -> list[str]:
    """Every phrasing of every case's prompt types, flat (for encoding them once)."""
    return [t for groups in variants for group in groups for t in group]


def warnings_for(settings: TextSettings, variants: list[list[str]], hflip: float, texts: list[str | None]) -> list[str]:
    out = []
    if settings.prompt_sampling and not any(len(v) > 1 or any(len(g) > 1 for g in v) for v in variants):
        out.append("[yellow]extra.text.prompt_sampling: no case has more than one prompt; using the one text[/]")
    if hflip > 0 and mentions_sides(texts):
        out.append(
            "[yellow]augment.hflip > 0 flips images but not the words left/right in their texts; "
            "use augment.hflip: 0 and extra.text.flip_swap instead[/]"
        )
    return out


def build_text_encoder_for(settings: TextSettings, params: dict[str, Any], model_name: str, run_path, resume: bool):
    """The text encoder for a features model (None for a model with its own tokenizer); sets ``text_dim``."""
    factory = MODELS.get(model_name)
    if getattr(factory, "text_input", "features") != "features":
        return None
    from covseg.text.encoder import build_text_encoder

    encoder = build_text_encoder(settings.encoder_spec())
    if resume:
        encoder.load_cache(run_path / CACHE_FILE)
    if "text_dim" in params and int(params["text_dim"]) != encoder.dim:
        raise ConfigError(f"model.params.text_dim={params['text_dim']} but the text encoder gives {encoder.dim}-d features")
    params["text_dim"] = encoder.dim
    return encoder


def optimizer_groups(model, adapter: TextAdapter) -> list[dict[str, Any]]:
    """The model's parameters, and a trainable encoder's with its learning-rate scale."""
    from covseg.text.encoder import EMBEDDING

    groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    params = adapter.parameters()
    if params:
        scale = 1.0 if adapter.encoder.spec.name == EMBEDDING else adapter.settings.encoder_lr_scale
        groups.append({"params": params, "lr_scale": scale})
    return groups
