"""Checkpoint format ``c2fvl``: the authors' C2FVL checkpoints (``best_model-C2FVL.pth.tar``).

HUANGLIZI/C2FVL's ``train_model.py`` saves, as LViT's does, ``{"epoch", "best_model", "model",
"state_dict", "val_loss", "optimizer"}``; the state dict (``module.``-prefixed when trained on
several GPUs) loads key for key into ``c2fvl_published``. The network reads no text features but 8
numbers per image (their ``read_attr``: bilateral, number, six lung zones), which the run reads
from the image's QaTa-style caption (``--text-file captions.csv``): the text entry of the run's
``model.json`` says ``input: attributes`` and names no encoder.
"""

from __future__ import annotations

from covseg.runs.formats_lvit import LVIT_MODULES
from covseg.runs.importers import CheckpointFormat, register_format

#: the top-level modules of the authors' ``C2FVL`` (nets/C2FVL.py)
C2FVL_MODULES = (LVIT_MODULES - {f"pix_module{i}" for i in range(1, 5)}) | frozenset(
    [f"{name}{i}" for name in ("vlab", "reconstruct_text", "process_text") for i in range(1, 5)]
    + [f"outc{i}" for i in (2, 3, 4)]
)
C2FVL_TEXT = {"input": "attributes", "encoder": None, "max_length": None, "missing": "error"}
C2FVL_SOURCE = "HUANGLIZI/C2FVL nets/C2FVL.py (C2FVL(config, n_channels=3, n_classes=1), base_channel 64, 224², 8 attributes)"


def c2fvl_key(key: str) -> str:
    """An authors' ``C2FVL`` key is ``c2fvl_published``'s own; one of another model raises ``KeyError``."""
    if key.split(".", 1)[0] not in C2FVL_MODULES:
        raise KeyError(key)
    return key


C2FVL_FORMAT = register_format(
    CheckpointFormat(
        name="c2fvl",
        model="c2fvl_published",
        init_args={"in_channels": 3, "out_channels": 1, "bgr": True},
        rename=c2fvl_key,
        preprocessing={
            "channels": 3,
            "size": [224, 224],
            "scale": 255.0,
            "mean": [0.0, 0.0, 0.0],
            "std": [1.0, 1.0, 1.0],
        },
        class_names=["infection"],
        source=C2FVL_SOURCE,
        extra={"text": C2FVL_TEXT},
    ),
    "C2FVL (QaTa-COV19) checkpoints, e.g. best_model-C2FVL.pth.tar; reads 8 attributes from QaTa-style captions",
)
