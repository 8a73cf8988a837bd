"""Checkpoint format ``lvit``: the authors' LViT checkpoints (``best_model-LViT.pth.tar``).

HUANGLIZI/LViT's ``train_model.py`` saves ``{"epoch", "best_model", "model", "state_dict",
"val_loss", "optimizer"}`` with ``torch.save``; the state dict (``module.``-prefixed when trained
on several GPUs) loads key for key into ``lvit_published``. The network reads 10 token features
of BERT-base (768-d), so the run's text encoder is a local Hugging Face BERT-base folder given at
import (``--text-encoder DIR``): without one the run names no usable encoder and predicting
refuses in one line rather than feed it other features. Max length 25 is the authors' loader's
(``bert-embedding``'s default ``max_seq_length``).
"""

from __future__ import annotations

from covseg.runs.importers import CheckpointFormat, register_format

#: the top-level modules of the authors' ``LViT`` (nets/LViT.py)
LVIT_MODULES = frozenset(
    ["inc", "outc"]
    + [
        f"{name}{i}"
        for name in ("down", "up", "reconstruct", "pix_module", "text_module")
        for i in range(1, 5)
    ]
    + [f"{name}{i or ''}" for name in ("downVit", "upVit") for i in range(4)]
)
#: the text encoder an imported run names until one is given: not a folder, so predicting asks for one
TEXT_ENCODER_NEEDED = (
    "bert-base-uncased (needs a local folder: covseg weights import --format lvit --text-encoder DIR)"
)
LVIT_TEXT = {
    "input": "features",
    "encoder": {"name": TEXT_ENCODER_NEEDED, "mode": "frozen", "max_length": 25, "dim": 768},
    "max_length": 25,
    "missing": "error",
}


def lvit_key(key: str) -> str:
    """An authors' ``LViT`` key is ``lvit_published``'s own; one of another model raises ``KeyError``."""
    if key.split(".", 1)[0] not in LVIT_MODULES:
        raise KeyError(key)
    return key


register_format(
    CheckpointFormat(
        name="lvit",
        model="lvit_published",
        init_args={"in_channels": 3, "out_channels": 1, "text_dim": 768, "skip_tokens": 1, "bgr": True},
        rename=lvit_key,
        preprocessing={
            "channels": 3,
            "size": [224, 224],
            "scale": 255.0,
            "mean": [0.0, 0.0, 0.0],
            "std": [1.0, 1.0, 1.0],
        },
        class_names=["infection"],
        source="HUANGLIZI/LViT nets/LViT.py (LViT(config, n_channels=3, n_classes=1), base_channel 64, 224², 10 BERT tokens)",
        extra={"text": LVIT_TEXT},
    ),
    "LViT (QaTa-COV19, MoNuSeg) checkpoints, e.g. best_model-LViT.pth.tar; --text-encoder names a local BERT-base folder",
)
