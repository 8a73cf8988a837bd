"""``trainer: pseudo``: labelled data plus a pseudo-labelled folder weighted by ``semi.pseudo.weight``."""

from __future__ import annotations

import csv

from covseg.errors import ConfigError
from covseg.registry import TRAINERS
from covseg.training.semi.common import two_source_loss, without_validation_images
from covseg.training.trainer import Trainer
from covseg.utils.outputs import from_spreadsheet_safe
from covseg.utils.paths import expand


def read_confidence(root) -> dict[str, float]:
    """``confidence.csv`` of a pseudo-label folder as {case id: confidence} (empty if absent)."""
    path = expand(root) / "confidence.csv"
    if not path.exists():
        return {}
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        return {from_spreadsheet_safe(row["case_id"]): float(row["confidence"]) for row in csv.DictReader(f)}


@TRAINERS.register("pseudo")
class PseudoLabelTrainer(Trainer):
    """Each step adds a batch of pseudo-labelled cases, drawn with replacement, to the labelled batch."""

    def setup_data(self) -> None:
        from covseg.training.data import build_tensors, open_records
        from covseg.training.sampling import ImageSampler

        super().setup_data()
        src = self.cfg.semi.pseudo
        if src is None:
            raise ConfigError("trainer 'pseudo' needs semi.pseudo.root (a folder from covseg pseudo-label)")
        records = [r for r in open_records(src.root, src.layout, src.split) if r.mask is not None]
        confidence = read_confidence(src.root)
        if src.min_confidence > 0:
            records = [r for r in records if confidence.get(r.case_id, 1.0) >= src.min_confidence]
        records = without_validation_images(records, self.val_records)
        if not records:
            raise ConfigError("semi.pseudo: no pseudo-labelled cases left after filtering")
        self.pseudo_data = build_tensors(records, self.preprocessing, self.cfg.data)
        self.pseudo_sampler = ImageSampler(self.pseudo_data, self.cfg.train.batch_size, self.augment_cfg)
        self.split_info["pseudo"] = {"root": src.root, "cases": len(records), "min_confidence": src.min_confidence}

    def training_step(self, batch, epoch, step, aux_generator):
        pseudo = self.secondary_batch(self.pseudo_sampler, aux_generator)
        return two_source_loss(self, self.model, batch, pseudo, self.cfg.semi.pseudo.weight)
