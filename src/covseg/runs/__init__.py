"""Run folders: the self-describing output of ``covseg train`` (nnU-Net's idea), below training and inference.

- :class:`RunFolder`: paths, JSON/CSV readers and writers of one run folder.
- :class:`RunDescription`: the typed ``model.json``; the one reader of it.
- :mod:`covseg.runs.checkpoint`: atomic saves, ``weights_only`` loads, rebuilding a model.
"""

from covseg.runs.description import (
    ClassificationSpec,
    InfererSpec,
    PreprocessingSpec,
    PriorSpec,
    RunDescription,
    TextSpec,
)
from covseg.runs.folder import RunFolder

__all__ = ["ClassificationSpec", "InfererSpec", "PreprocessingSpec", "PriorSpec", "RunDescription", "RunFolder", "TextSpec"]
