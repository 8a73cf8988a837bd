"""Joint classification + segmentation in the trainer: checks, the run's record, validation labels.

A model with a classification head (``model.params.heads``, on by default for ``jcs``) trains
its ``class_logits`` against the image-level ``label`` of each case through a ``cls`` loss
term; label-only cases reach the segmentation terms with ``has_mask = False``. This module
refuses the configurations that would silently train something else (a head without a ``cls``
term, labels without a head, class counts that disagree) and says what the run folder records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from covseg.errors import ConfigError
from covseg.training.labels import class_names, labels_summary


@dataclass
class JointSettings:
    """What a joint run classifies: class names (negative first), the label rule, counts per class."""

    class_names: list[str]
    rule: str
    dataset: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        """The ``classification`` entry of ``model.json``."""
        return {"output": "class_logits", "class_names": self.class_names, "labels": self.rule, "negative_class": 0}


def joint_settings(trainer: Any) -> JointSettings | None:
    """Check a trainer's model, data and loss for joint training; None for a segmentation-only run."""
    cfg = trainer.cfg
    model = trainer.model
    classifies = "class_logits" in getattr(model, "head_outputs", ())
    train, val = trainer.train_data, trainer.val_data
    label_only = int((~train.has_mask).sum()) + int((~val.has_mask).sum()) if train.has_mask is not None else 0
    if not classifies:
        if cfg.data.labels is not None or label_only:
            raise ConfigError(
                "data.labels (or label-only cases) need a model with a classification head, e.g. "
                "model.name: jcs or model.params.heads: {classification: {classes: 2}}"
            )
        return None
    if train.labels is None or val.labels is None:
        raise ConfigError(f"trainer {cfg.trainer!r} does not give image-level labels; a classification head needs them")
    if cfg.sampler.name != "images":
        raise ConfigError("a classification head trains on whole images: use sampler.name: images")
    terms = getattr(trainer.criterion, "terms", [])
    if not any(t.output == "class_logits" and t.weight for t in terms):
        raise ConfigError(
            "the model has a classification head but no loss term reads class_logits: add "
            "loss.terms.cls: {loss: class_ce, weight: 0.5} (with seg: ... for the masks)"
        )
    labels = [*train.labels.tolist(), *val.labels.tolist()]
    names = class_names(cfg.data, labels)
    classes = next(int(h.classes) for h in model.heads.values() if getattr(h, "output", "") == "class_logits")
    if classes != len(names):
        raise ConfigError(
            f"the classification head has {classes} classes but the labels have {len(names)} ({', '.join(names)}); "
            "set model.params.heads.classification.classes or data.label_names"
        )
    dataset = labels_summary(train.labels.tolist(), train.label_sources, train.has_mask.tolist(), cfg.data)
    dataset["validation"] = labels_summary(val.labels.tolist(), val.label_sources, val.has_mask.tolist(), cfg.data)["per_class"]
    return JointSettings(names, cfg.data.labels or "masks", dataset)
