"""``trainer: cps``: cross pseudo supervision (Chen et al., 2021) with uncertainty filtering and CutMix.

Two networks of one architecture, initialised differently; each one's hard prediction on
unlabelled images supervises the other, beside the supervised loss on labelled images. With
uncertainty-based image filtering (UIF), only the most certain fraction of unlabelled images (by
the two networks' disagreement, or the entropy of their mean prediction) is used, re-scored
during training. With CutMix (the CPS paper's strongest setting), the unlabelled images get a
box pasted from another image and the cross labels are mixed with the same box.
"""

from __future__ import annotations

import math
from typing import Any

from covseg.errors import ConfigError
from covseg.registry import TRAINERS
from covseg.training.semi.common import (
    draw_unlabelled_batch,
    hard_targets,
    load_unlabeled,
    pseudo_supervision_loss,
    sigmoid_rampup,
    split_outputs,
)
from covseg.training.trainer import Trainer


def cutmix_boxes(shape, area: tuple[float, float], generator):
    """One random box per sample, as a ``(B, 1, *spatial)`` 0/1 mask covering a fraction of the
    image drawn uniformly from ``area`` (the same fraction along every axis: 2D and 3D alike)."""
    import torch

    batch, spatial = shape[0], tuple(shape[2:])
    masks = torch.zeros((batch, 1, *spatial))
    for b in range(batch):
        fraction = area[0] + (area[1] - area[0]) * float(torch.rand((), generator=generator))
        side = fraction ** (1.0 / len(spatial))
        box = []
        for size in spatial:
            length = max(1, round(side * size))
            start = int(torch.randint(size - length + 1, (), generator=generator))
            box.append(slice(start, start + length))
        masks[(b, 0, *box)] = 1.0
    return masks


def image_uncertainty(probs_a, probs_b, score: str = "disagreement"):
    """Per-image uncertainty of two networks' probabilities ``(B, C, *spatial)``; lower is more certain.

    ``disagreement``: 1 − Dice between their hard masks (foreground classes; 0 when both are
    empty). ``entropy``: mean entropy of their averaged prediction, divided by its maximum.
    """
    import torch

    b = probs_a.shape[0]
    if score == "entropy":
        p = 0.5 * (probs_a + probs_b)
        if p.shape[1] == 1:
            p = torch.cat([1 - p, p], dim=1)
        ent = -(p.clamp_min(1e-8) * p.clamp_min(1e-8).log()).sum(dim=1)
        return ent.reshape(b, -1).mean(dim=1) / math.log(p.shape[1])
    if score != "disagreement":
        raise ConfigError(f"semi.cps.uif.score: unknown {score!r}")
    if probs_a.shape[1] == 1:
        ha, hb = probs_a >= 0.5, probs_b >= 0.5
    else:
        ka, kb = probs_a.argmax(dim=1, keepdim=True), probs_b.argmax(dim=1, keepdim=True)
        ha, hb = ka > 0, kb > 0
    ha, hb = ha.reshape(b, -1).float(), hb.reshape(b, -1).float()
    inter = (ha * hb).sum(dim=1)
    total = ha.sum(dim=1) + hb.sum(dim=1)
    dice = torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))
    return 1.0 - dice


@TRAINERS.register("cps")
class CPSTrainer(Trainer):
    """Cross pseudo supervision with optional uncertainty-based image filtering (UIF)."""

    supports_multiscale = False  # unlabelled batches are drawn at the network size

    def setup_data(self) -> None:
        super().setup_data()
        load_unlabeled(self)
        self.kept = None
        self.uncertainty = None

    def setup_model(self) -> None:
        import torch

        super().setup_model()
        torch.manual_seed(self.cfg.train.seed + 7_777)  # a different initialisation for the second network
        self.model_b = self.new_model()

    def setup_optimisation(self) -> None:
        super().setup_optimisation()
        params = list(self.model.parameters()) + list(self.model_b.parameters())
        if self.text_adapter is not None:
            params += self.text_adapter.parameters()
        self.optimizer = self.make_optimizer(params)

    def state(self, epoch: int) -> dict[str, Any]:
        state = super().state(epoch)
        state["model_b_state"] = self.model_b.state_dict()
        state["uif_kept"] = None if self.kept is None else self.kept.tolist()
        state["uif_uncertainty"] = None if self.uncertainty is None else self.uncertainty.tolist()
        return state

    def load_state(self, ckpt: dict[str, Any]) -> None:
        import torch

        super().load_state(ckpt)
        self.model_b.load_state_dict(ckpt["model_b_state"])
        if ckpt.get("uif_kept") is not None:
            self.kept = torch.tensor(ckpt["uif_kept"], dtype=torch.long)
            scores = ckpt.get("uif_uncertainty")
            self.uncertainty = None if scores is None else torch.tensor(scores)

    def unlabeled_forward(self, model, x):
        """Logits of unlabelled images (text models read their null text)."""
        return self.forward_train(model, {"image": x}, sync=False)["logits"]

    def score_unlabeled(self):
        """Uncertainty of every unlabelled image under the two networks (eval mode, no augmentation)."""
        import torch

        from covseg.engine.segmenter import logits_to_probs

        self.model.eval()
        self.model_b.eval()
        if self.volume_plan is not None:  # whole unlabelled volumes, each through both networks' inferer
            return self._score_volumes()
        scores = []
        with torch.inference_mode():
            for start in range(0, len(self.unlabeled), self.cfg.train.val_batch_size):
                x = self.runtime.to_device(self.unlabeled.images[start : start + self.cfg.train.val_batch_size])
                pa = logits_to_probs(self.unlabeled_forward(self.model, x), self.num_classes)
                pb = logits_to_probs(self.unlabeled_forward(self.model_b, x), self.num_classes)
                scores.append(image_uncertainty(pa, pb, self.cfg.semi.cps.uif.score).float().cpu())
        return torch.cat(scores)

    def _score_volumes(self):
        import torch

        seg_a, seg_b = self.segmenter(self.model), self.segmenter(self.model_b)
        batch = self.cfg.train.val_batch_size
        scores = []
        for i in range(len(self.unlabeled)):
            x = self.unlabeled.volume(i)
            pa, pb = (torch.from_numpy(s.infer([x], batch_size=batch).probs[0]) for s in (seg_a, seg_b))
            if self.num_classes == 1:
                pa, pb = pa[None], pb[None]
            scores.append(image_uncertainty(pa[None], pb[None], self.cfg.semi.cps.uif.score).float())
        return torch.cat(scores)

    def update_filter(self, epoch: int) -> None:
        import torch

        uif = self.cfg.semi.cps.uif
        if not uif.enabled:
            self.kept = torch.arange(len(self.unlabeled))
            return
        if self.kept is not None and epoch % uif.rescore_every != 0:
            return
        self.uncertainty = self.score_unlabeled()
        n_keep = max(1, math.ceil(uif.keep_fraction * len(self.unlabeled)))
        order = torch.argsort(self.uncertainty, stable=True)
        self.kept = torch.sort(order[:n_keep]).values
        self._write_scores(epoch)

    def _write_scores(self, epoch: int) -> None:
        from covseg.utils.outputs import write_csv

        if not self.runtime.is_main:
            return
        kept = set(self.kept.tolist())
        rows = [[case_id, float(self.uncertainty[i]), int(i in kept), epoch] for i, case_id in enumerate(self.unlabeled.ids)]
        write_csv(self.run.path / "uif_scores.csv", rows, ["case_id", "uncertainty", "kept", "epoch"], float_format=".6f")

    def cutmix_unlabeled(self, xu, generator, global_size: int | None = None):
        """Paste a box of the next image of the batch into each image; the two networks' logits on
        the unmixed images, mixed with the same boxes, are the targets for the mixed images.

        Boxes are drawn for the global batch (``global_size``) and each process takes its share;
        under torchrun an image is mixed with the next one of its own process's share."""
        import torch

        with torch.no_grad():
            ta = self.forward_train(self.model, {"image": xu}, sync=False)["logits"]
            tb = self.forward_train(self.model_b, {"image": xu}, sync=False)["logits"]
        shape = (global_size or xu.shape[0], *xu.shape[1:])
        box = self.shard_rows(cutmix_boxes(shape, self.cfg.semi.cps.cutmix_area, generator)).to(xu.device)
        other = torch.roll(torch.arange(xu.shape[0]), 1)

        def mix(t):
            return t * (1 - box) + t[other] * box

        return mix(xu), (mix(ta), mix(tb))

    # epoch hooks ----------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        self.update_filter(epoch)

    def train_modules(self):
        return [self.model, self.model_b, *self.adapters]

    def clip_groups(self):
        return [self.model.parameters(), self.model_b.parameters()]

    def training_step(self, batch, epoch, step, aux_generator):
        import torch

        cps = self.cfg.semi.cps
        ub = (cps.unlabeled_batch_size or self.cfg.train.batch_size) * self.runtime.world_size
        xu = draw_unlabelled_batch(self, self.kept, ub, aux_generator)  # volumes: patches of the kept volumes
        targets = None
        if cps.cutmix:
            xu, targets = self.cutmix_unlabeled(xu, aux_generator, ub)
        nl = batch["image"].shape[0]
        joint = {"image": torch.cat([self.runtime.to_device(batch["image"]), xu])}
        if batch.get("text") is not None:
            joint["text"] = list(batch["text"]) + [None] * xu.shape[0]
        out_a, ua = split_outputs(self.forward_train(self.model, joint), nl)
        out_b, ubo = split_outputs(self.forward_train(self.model_b, joint), nl)
        sup_a, parts = self.criterion(out_a, batch)
        sup_b, _ = self.criterion(out_b, batch)
        la, lb = ua["logits"], ubo["logits"]
        ta, tb = targets if targets is not None else (la.detach(), lb.detach())
        cross = pseudo_supervision_loss(la, hard_targets(tb)) + pseudo_supervision_loss(lb, hard_targets(ta))
        w = cps.weight * sigmoid_rampup(epoch + step / self.steps_per_epoch, cps.rampup_epochs)
        loss = sup_a + sup_b + w * cross
        return loss, {**parts, "sup_b": float(sup_b.detach()), "cps": float(cross.detach()), "cps_weight": w}

    def step_info(self, sums, n):
        return f"loss {sums['loss'] / n:.4f} cps {sums['cps'] / n:.4f}"

    def epoch_extras(self):
        return {"unlabeled_used": float(len(self.kept))}
