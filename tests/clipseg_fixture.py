"""A tiny randomly initialised CLIPSeg saved with ``save_pretrained`` (a test fixture).

:func:`save_tiny_clipseg` writes a ``CLIPSegForImageSegmentation`` with a character-level CLIP
tokenizer into a folder, so the ``clipseg`` model loads exactly as a user's real weights folder
does (no download).
"""

from __future__ import annotations

from pathlib import Path


def _byte_chars() -> list[str]:
    """GPT-2/CLIP byte-to-unicode table: the 256 symbols a byte-level BPE vocabulary starts from."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def save_tiny_clipseg(path: str | Path, image_size: int = 64, patch_size: int = 16, seed: int = 0) -> Path:
    """Save a tiny random CLIPSeg (config, weights, character-level CLIP tokenizer) to ``path``."""
    import torch
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPTokenizer

    from covseg.utils.hf import _quiet_transformers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    bos, eos = len(vocab), len(vocab) + 1
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = bos, eos
    restore = _quiet_transformers()
    try:
        CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(str(path))
        config = CLIPSegConfig(
            text_config=dict(
                vocab_size=len(vocab), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
            ),
            vision_config=dict(
                hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                image_size=image_size, patch_size=patch_size,
            ),
            projection_dim=32,
            reduce_dim=16,
            extract_layers=[0, 1, 2],
            decoder_num_attention_heads=4,
            decoder_intermediate_size=32,
        )
        torch.manual_seed(seed)
        CLIPSegForImageSegmentation(config).save_pretrained(str(path))
    finally:
        restore()
    return path
