"""``trainer: semi_infnet``: Semi-Inf-Net's schedule (Fan et al., 2020).

Train on the labelled set; split the unlabelled images into groups of K; for each group,
pseudo-label it with the current model, add it to the pool and fine-tune on labelled + pool; then
pre-train a fresh model on the whole pseudo-labelled pool and fine-tune it on the labelled set.
The run may start from a trained run's weights (``init_run``), as the published recipe starts
from a converged labelled model. Pseudo labels are hard by default; ``soft_labels`` keeps the
model's probabilities as targets instead (binary models; the published ``PseudoGenerator.py``
saves min-max normalised probability maps, so its labels are soft). A group's epochs train on
the labelled batch plus a pool batch (``round_data: two_source``) or, as published, on labelled
and pool slices as one set (``hybrid``); ``fresh_optimizer_per_group``, ``group_lr_scale`` and
``group_batch_size`` give the published rounds' fresh Adam, 3e-4 and batch 16
(``configs/semi_infnet_paper.yaml``).
"""

from __future__ import annotations

import math
from typing import Any

from covseg.errors import ConfigError
from covseg.registry import TRAINERS
from covseg.training.semi.common import edges_from_masks, hard_targets, load_unlabeled, two_source_loss
from covseg.training.trainer import Trainer


@TRAINERS.register("semi_infnet")
class SemiInfNetTrainer(Trainer):
    """Semi-Inf-Net: grouped pseudo-labelling of unlabelled slices, then pre-train and fine-tune."""

    def setup_data(self) -> None:
        import torch

        super().setup_data()
        s = self.cfg.semi.semi_infnet
        if s.soft_labels and self.num_classes != 1:
            raise ConfigError("semi.semi_infnet.soft_labels needs a one-channel (binary) model; multi-class pseudo labels are hard")
        load_unlabeled(self)
        n_groups = math.ceil(len(self.unlabeled) / s.group_size)
        if s.max_groups is not None:
            n_groups = min(n_groups, s.max_groups)
        order = torch.randperm(len(self.unlabeled), generator=torch.Generator().manual_seed(self.cfg.train.seed + 31))
        self.groups = [order[g * s.group_size : (g + 1) * s.group_size] for g in range(n_groups)]
        self.plan: list[tuple[str, int, int, int]] = []
        for e in range(s.initial_epochs):
            self.plan.append(("initial", -1, e, s.initial_epochs))
        for g in range(n_groups):
            for e in range(s.epochs_per_group):
                self.plan.append(("group", g, e, s.epochs_per_group))
        for e in range(s.pretrain_epochs):
            self.plan.append(("pretrain", -1, e, s.pretrain_epochs))
        for e in range(s.finetune_epochs):
            self.plan.append(("finetune", -1, e, s.finetune_epochs))
        self.pool_index = torch.zeros(0, dtype=torch.long)
        self.pool_masks = None
        self.split_info["semi_infnet_groups"] = [g.tolist() for g in self.groups]

    def setup_model(self) -> None:
        super().setup_model()
        if self.cfg.semi.semi_infnet.init_run:
            self.load_initial_weights()

    def load_initial_weights(self) -> None:
        """Start from a trained run's weights, as Semi-Inf-Net starts from a converged labelled model."""
        from covseg.runs.checkpoint import load_checkpoint
        from covseg.runs.folder import RunFolder
        from covseg.utils.paths import expand

        s = self.cfg.semi.semi_infnet
        run_dir = expand(s.init_run.replace("{fold}", str(self.cfg.data.fold)))
        path = RunFolder(run_dir).checkpoint(s.init_checkpoint)
        ckpt = load_checkpoint(path)
        spec = ckpt.get("model_spec", {})
        if spec.get("name") != self.cfg.model.name or spec.get("init_args") != self.model.init_args:
            raise ConfigError(
                f"semi.semi_infnet.init_run holds model {spec.get('name')!r} with other init args than this config's "
                f"{self.cfg.model.name!r}", path
            )
        if ckpt.get("preprocessing") != self.preprocessing.to_dict():
            raise ConfigError("semi.semi_infnet.init_run was trained with other preprocessing (size, normalisation)", path)
        leaked = sorted(RunFolder(run_dir).training_case_ids() & {str(r.case_id) for r in self.val_records})
        if leaked:
            raise ConfigError(
                f"semi.semi_infnet.init_run trained on {len(leaked)} of this run's validation cases "
                f"(e.g. {leaked[0]!r}); use the run of the same fold", run_dir
            )
        self.model.load_state_dict(ckpt["model_state"])
        self.split_info["semi_infnet_init"] = {"run": str(run_dir.resolve()), "checkpoint": s.init_checkpoint, "epoch": ckpt.get("epoch")}

    def setup_optimisation(self) -> None:
        super().setup_optimisation()
        self.total_epochs = len(self.plan)
        self.total_steps = self.total_epochs * self.steps_per_epoch

    def state(self, epoch: int) -> dict[str, Any]:
        state = super().state(epoch)
        state["pool_index"] = self.pool_index.tolist()
        state["pool_masks"] = None if self.pool_masks is None else self.pool_masks.clone()
        return state

    def load_state(self, ckpt: dict[str, Any]) -> None:
        import torch

        super().load_state(ckpt)
        self.pool_index = torch.tensor(ckpt["pool_index"], dtype=torch.long)
        self.pool_masks = ckpt["pool_masks"]

    def pseudo_label(self, indices):
        """Pseudo labels of unlabelled images ``indices`` at the network size: hard (0/1, class
        indices) or, with ``soft_labels``, the model's foreground probabilities (half precision)."""
        import torch

        self.model.eval()
        with torch.inference_mode():
            logits = torch.cat(
                [
                    self.model(self.as_input(self.runtime.to_device(self.unlabeled.images[indices[s : s + 8]])))
                    for s in range(0, len(indices), 8)
                ]
            )
        if self.cfg.semi.semi_infnet.soft_labels:
            return torch.sigmoid(logits).to(torch.float16).cpu()
        return hard_targets(logits).to(torch.uint8).cpu()

    def _pool_data(self):
        from covseg.training.data import CaseTensors

        masks = self.pool_masks.float() if self.num_classes == 1 else self.pool_masks.long()
        edges = edges_from_masks((masks >= 0.5).float()) if self.cfg.data.edges and self.num_classes == 1 else None
        return CaseTensors(
            ids=[self.unlabeled.ids[i] for i in self.pool_index.tolist()],
            images=self.unlabeled.images[self.pool_index],
            masks=masks,
            edges=edges,
            texts=[None] * len(self.pool_index),
        )

    def _hybrid_data(self, pool):
        """The labelled training slices and the pseudo-labelled pool as one set (published Semi-Inf-Net)."""
        import torch

        from covseg.training.data import CaseTensors

        lab = self.train_data
        if pool is None:
            return lab
        if self.joint is not None:
            raise ConfigError("semi.semi_infnet: hybrid training sets have no image-level classes for a classification head")
        labels = None  # image-level classes (unused without a head): foreground or not
        if lab.labels is not None:
            found = (pool.masks >= 0.5) if pool.masks.is_floating_point() else (pool.masks > 0)
            labels = torch.cat([lab.labels, found.flatten(1).any(1).long()])
        edges = torch.cat([lab.edges, pool.edges]) if lab.edges is not None and pool.edges is not None else None
        has_mask = None if lab.has_mask is None else torch.cat([lab.has_mask, torch.ones(len(pool), dtype=torch.bool)])
        return CaseTensors(
            ids=[*lab.ids, *pool.ids],
            images=torch.cat([lab.images, pool.images]),
            masks=torch.cat([lab.masks.to(pool.masks.dtype), pool.masks]),
            edges=edges,
            texts=[*(lab.texts or [None] * len(lab)), *pool.texts],
            labels=labels,
            has_mask=has_mask,
        )

    # epoch hooks ----------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        """Pseudo-label the next group, or start the fresh model / the fine-tuning, as the plan says."""
        import torch

        from covseg.training.sampling import ImageSampler

        phase, group, e_in, _ = self.plan[epoch]
        s = self.cfg.semi.semi_infnet
        if phase == "group" and e_in == 0:
            idx = self.groups[group]
            labels = self.pseudo_label(idx)
            self.pool_index = torch.cat([self.pool_index, idx])
            self.pool_masks = labels if self.pool_masks is None else torch.cat([self.pool_masks, labels])
            if s.fresh_optimizer_per_group:
                self.optimizer = self.make_optimizer(self.model.parameters())
        if phase == "group" and s.group_lr_scale != 1.0:  # every group epoch: a resumed optimiser has it too
            for g in self.optimizer.param_groups:
                g["lr_scale"] = s.group_lr_scale
        if phase == "pretrain" and e_in == 0:
            torch.manual_seed(self.cfg.train.seed + 2_024)
            self.model = self.new_model()
            self.optimizer = self.make_optimizer(self.model.parameters())
        if phase == "finetune" and e_in == 0:
            self.optimizer = self.make_optimizer(self.model.parameters())
            for g in self.optimizer.param_groups:
                g["lr_scale"] = s.finetune_lr_scale
        pool = self._pool_data() if self.pool_masks is not None and phase in ("group", "pretrain") else None
        hybrid = (phase == "group" and s.round_data == "hybrid") or (phase == "pretrain" and s.pretrain_data == "hybrid")
        if hybrid:
            primary = self._hybrid_data(pool)
        else:
            primary = pool if phase == "pretrain" else self.train_data
        self._phase = phase
        variants = (self.train_variants or None) if primary is self.train_data else None
        bs = self.global_batch_size
        if phase == "group" and s.group_batch_size is not None:
            bs = s.group_batch_size * self.runtime.world_size
        self._primary = ImageSampler(primary, bs, self.augment_cfg, variants, self.min_batch)
        two_source = phase == "group" and pool is not None and not hybrid
        self._secondary = ImageSampler(pool, bs, self.augment_cfg) if two_source else None

    def train_modules(self):
        return [self.model, *self.adapters]

    def epoch_sampler(self, epoch: int):
        return self._primary

    def lr_position(self, epoch: int, step: int):
        _, _, e_in, length = self.plan[epoch]
        steps = self._primary.steps_per_epoch()
        return e_in * steps + step, length * steps

    def training_step(self, batch, epoch, step, aux_generator):
        secondary = None
        if self._secondary is not None:
            secondary = self.secondary_batch(self._secondary, aux_generator)
        return two_source_loss(self, self.model, batch, secondary, self.cfg.semi.semi_infnet.pseudo_weight)

    def step_info(self, sums, n):
        return f"{self._phase} loss {sums['loss'] / n:.4f}"

    def epoch_extras(self):
        return {"pool": float(len(self.pool_index))}
