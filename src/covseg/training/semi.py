"""Semi-supervised trainers: a pseudo-labelled second source, Semi-Inf-Net, and cross pseudo supervision.

* ``pseudo``: supervised training plus a pseudo-labelled folder (``covseg pseudo-label``) as
  a second source with its own loss weight and a confidence cut.
* ``semi_infnet``: Semi-Inf-Net's schedule (Fan et al., 2020): train on the labelled set;
  split the unlabelled images into groups of K; for each group, pseudo-label it with the
  current model, add it to the pool and fine-tune on labelled + pool; then pre-train a fresh
  model on the whole pseudo-labelled pool and fine-tune it on the labelled set.
* ``cps``: cross pseudo supervision (Chen et al., 2021): two networks of one architecture,
  initialised differently; each one's hard prediction on unlabelled images supervises the
  other, beside the supervised loss on labelled images. With uncertainty-based image
  filtering (UIF), only the most certain fraction of unlabelled images (by the two networks'
  disagreement, or the entropy of their mean prediction) is used, re-scored during training.
  With CutMix (the CPS paper's strongest setting), the unlabelled images get a box pasted from
  another image and the cross labels are mixed with the same box.

All three keep the base trainer's guarantees: every epoch is a function of (seed, epoch,
state at its start), the state needed to resume is in ``last.pt``, progress is shown.
The losses and scores only use the channel axis and flatten the rest, so the same code
serves 2D slices and 3D patches.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from covseg.errors import ConfigError
from covseg.training.trainer import Trainer, register_trainer


def hard_targets(logits):
    """Hard pseudo labels from logits: ``logit > 0`` (binary) or argmax (K classes)."""
    return (logits > 0).float() if logits.shape[1] == 1 else logits.argmax(dim=1)


def pseudo_supervision_loss(logits, target):
    """Cross-entropy against hard pseudo labels (BCE for one channel)."""
    import torch.nn.functional as F

    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.cross_entropy(logits, target)


def sigmoid_rampup(progress: float, length: float) -> float:
    """``exp(-5 (1 - t)^2)`` ramp from 0 to 1 over ``length`` epochs (Laine & Aila)."""
    if length <= 0:
        return 1.0
    t = min(max(progress / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


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


def edges_from_masks(masks, width: int = 1):
    """Edge maps of binary masks ``(B, 1, H, W)`` (dilation minus erosion), for pseudo labels."""
    import torch.nn.functional as F

    k = 2 * width + 1
    dil = F.max_pool2d(masks, k, stride=1, padding=width)
    ero = -F.max_pool2d(-masks, k, stride=1, padding=width)
    return (dil - ero).clamp(0, 1)


class _SemiBase(Trainer):
    """Loading unlabelled images (never the validation images) and mixing two sources per step."""

    def load_unlabeled(self) -> None:
        from covseg.training.data import build_image_tensors, open_records

        u = self.cfg.semi.unlabeled
        if u is None:
            raise ConfigError(f"trainer {self.cfg.trainer!r} needs semi.unlabeled.root")
        records = open_records(u.root, u.layout, u.split)
        val_images = {_file_key(r.image) for r in self.val_records}
        records = [r for r in records if _file_key(r.image) not in val_images]
        if u.include:
            from fnmatch import fnmatch

            records = [r for r in records if any(fnmatch(Path(r.image).name, pattern) for pattern in u.include)]
            if not records:
                raise ConfigError(f"semi.unlabeled.include {u.include} matches no image", u.root)
        if u.limit is not None and u.limit < len(records):
            keep = np.random.default_rng(12345).permutation(len(records))[: u.limit]
            records = [records[i] for i in sorted(keep)]
        self.unlabeled_records = records
        with self._progress() as prog:
            task = prog.add_task("reading unlabelled", total=len(records), info="")
            self.unlabeled = build_image_tensors(records, self.preprocessing, progress=lambda: prog.advance(task))
        self.split_info["unlabeled"] = {"root": u.root, "split": u.split, "include": u.include, "cases": len(records)}

    def two_source_step(self, model, primary: dict, secondary: dict | None, weight: float):
        """Loss of one step on a labelled batch and (optionally) a weighted second labelled batch."""
        import torch

        if secondary is None:
            out = self.forward_train(model, primary)
            loss, parts = self.criterion(out, primary)
            return loss, parts
        n = primary["image"].shape[0]
        joint = {"image": torch.cat([primary["image"], secondary["image"]])}
        out = self.forward_train(model, joint)
        out_p, out_s = _split_outputs(out, n)
        loss_p, parts = self.criterion(out_p, primary)
        loss_s, _ = self.criterion(out_s, secondary)
        parts = {**parts, "pseudo": float(loss_s.detach())}
        return loss_p + weight * loss_s, parts

    def step(self, loss, models) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for m in models:
            self.clip(m)
        self.optimizer.step()


def _file_key(path) -> str:
    """Content hash of a file: the same image copied or hard-linked elsewhere is still the same image."""
    import hashlib

    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()
    except OSError:
        return str(path)


def _split_outputs(out: dict[str, Any], n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    first: dict[str, Any] = {}
    second: dict[str, Any] = {}
    for key, value in out.items():
        if isinstance(value, (list, tuple)):
            first[key] = [v[:n] for v in value]
            second[key] = [v[n:] for v in value]
        elif hasattr(value, "shape"):
            first[key], second[key] = value[:n], value[n:]
        else:
            first[key] = second[key] = value
    return first, second


def _accumulate(sums: dict[str, float], loss, parts: dict[str, float]) -> None:
    for k, v in {"loss": float(loss.detach()), **parts}.items():
        if k != "total":  # the criterion's total is the loss itself
            sums[k] = sums.get(k, 0.0) + float(v)


@register_trainer("pseudo")
class PseudoLabelTrainer(_SemiBase):
    """Labelled data plus a pseudo-labelled folder weighted by ``semi.pseudo.weight``."""

    def setup_data(self) -> None:
        from covseg.training.data import build_tensors, open_records

        super().setup_data()
        src = self.cfg.semi.pseudo
        if src is None:
            raise ConfigError("trainer 'pseudo' needs semi.pseudo.root (a folder from covseg pseudo-label)")
        records = [r for r in open_records(src.root, src.layout, src.split) if r.mask is not None]
        confidence = read_confidence(src.root)
        if src.min_confidence > 0:
            records = [r for r in records if confidence.get(r.case_id, 1.0) >= src.min_confidence]
        val_images = {_file_key(r.image) for r in self.val_records}
        records = [r for r in records if _file_key(r.image) not in val_images]
        if not records:
            raise ConfigError("semi.pseudo: no pseudo-labelled cases left after filtering")
        self.pseudo_data = build_tensors(records, self.preprocessing, self.cfg.data)
        self.split_info["pseudo"] = {"root": src.root, "cases": len(records), "min_confidence": src.min_confidence}

    def train_epoch(self, epoch: int, on_step) -> dict[str, float]:
        import torch

        self.model.train()
        torch.manual_seed(self.cfg.train.seed * 7919 + epoch)
        gen_p = self.epoch_generator(epoch, stream=1)
        sums: dict[str, float] = {}
        n = 0
        for i, (idx, gen) in enumerate(self.batches(self.train_data, epoch)):
            self.set_lr(epoch * self.steps_per_epoch + i)
            batch = self.make_batch(self.train_data, idx, gen)
            pidx = torch.randint(len(self.pseudo_data), (len(idx),), generator=gen_p)
            pbatch = self.make_batch(self.pseudo_data, pidx, gen_p)
            loss, parts = self.two_source_step(self.model, batch, pbatch, self.cfg.semi.pseudo.weight)
            self.step(loss, [self.model])
            n += 1
            _accumulate(sums, loss, parts)
            on_step(f"loss {sums['loss'] / n:.4f}")
        return {k: v / max(n, 1) for k, v in sums.items()}


def read_confidence(root) -> dict[str, float]:
    """``confidence.csv`` of a pseudo-label folder as {case id: confidence} (empty if absent)."""
    import csv

    from covseg.utils.paths import expand

    path = expand(root) / "confidence.csv"
    if not path.exists():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        return {row["case_id"]: float(row["confidence"]) for row in csv.DictReader(f)}


@register_trainer("cps")
class CPSTrainer(_SemiBase):
    """Cross pseudo supervision with optional uncertainty-based image filtering (UIF)."""

    def setup_data(self) -> None:
        super().setup_data()
        self.load_unlabeled()
        self.kept = None
        self.uncertainty = None

    def setup_model(self) -> None:
        import torch

        from covseg.models.registry import build_model

        super().setup_model()
        params = dict(self.model.init_args)
        torch.manual_seed(self.cfg.train.seed + 7_777)  # a different initialisation for the second network
        self.model_b = self.place(build_model(self.cfg.model.name, **params))

    def setup_optimisation(self) -> None:
        super().setup_optimisation()
        self.optimizer = self.make_optimizer(list(self.model.parameters()) + list(self.model_b.parameters()))

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

    def score_unlabeled(self):
        """Uncertainty of every unlabelled image under the two networks (eval mode, no augmentation)."""
        import torch

        from covseg.inference.core import logits_to_probs

        self.model.eval()
        self.model_b.eval()
        scores = []
        with torch.inference_mode():
            for start in range(0, len(self.unlabeled), self.cfg.train.val_batch_size):
                x = self.unlabeled.images[start : start + self.cfg.train.val_batch_size]
                pa = logits_to_probs(self.model(self.as_input(x)), self.num_classes)
                pb = logits_to_probs(self.model_b(self.as_input(x)), self.num_classes)
                scores.append(image_uncertainty(pa, pb, self.cfg.semi.cps.uif.score))
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
        import csv
        import io

        from covseg.utils.atomic import write_text

        kept = set(self.kept.tolist())
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["case_id", "uncertainty", "kept", "epoch"])
        for i, case_id in enumerate(self.unlabeled.ids):
            w.writerow([case_id, f"{float(self.uncertainty[i]):.6f}", int(i in kept), epoch])
        write_text(self.run.path / "uif_scores.csv", buf.getvalue())

    def cutmix_unlabeled(self, xu, generator):
        """Paste a box of the next image of the batch into each image; the two networks' logits on
        the unmixed images, mixed with the same boxes, are the targets for the mixed images."""
        import torch

        with torch.no_grad():
            ta = self.forward_train(self.model, {"image": xu})["logits"]
            tb = self.forward_train(self.model_b, {"image": xu})["logits"]
        box = cutmix_boxes(xu.shape, self.cfg.semi.cps.cutmix_area, generator)
        other = torch.roll(torch.arange(xu.shape[0]), 1)

        def mix(t):
            return t * (1 - box) + t[other] * box

        return mix(xu), (mix(ta), mix(tb))

    def train_epoch(self, epoch: int, on_step) -> dict[str, float]:
        import torch

        from covseg.transforms.augment import augment_batch

        cps = self.cfg.semi.cps
        self.update_filter(epoch)
        self.model.train()
        self.model_b.train()
        torch.manual_seed(self.cfg.train.seed * 7919 + epoch)
        gen_u = self.epoch_generator(epoch, stream=1)
        ub = cps.unlabeled_batch_size or self.cfg.train.batch_size
        sums: dict[str, float] = {}
        n = 0
        for i, (idx, gen) in enumerate(self.batches(self.train_data, epoch)):
            self.set_lr(epoch * self.steps_per_epoch + i)
            batch = self.make_batch(self.train_data, idx, gen)
            uidx = self.kept[torch.randint(len(self.kept), (ub,), generator=gen_u)]
            xu, _ = augment_batch(self.unlabeled.images[uidx], {}, self.augment_cfg, gen_u)
            targets = None
            if cps.cutmix:
                xu, targets = self.cutmix_unlabeled(xu, gen_u)
            nl = batch["image"].shape[0]
            joint = {"image": torch.cat([batch["image"], xu])}
            out_a, ua = _split_outputs(self.forward_train(self.model, joint), nl)
            out_b, ubo = _split_outputs(self.forward_train(self.model_b, joint), nl)
            sup_a, parts = self.criterion(out_a, batch)
            sup_b, _ = self.criterion(out_b, batch)
            la, lb = ua["logits"], ubo["logits"]
            ta, tb = targets if targets is not None else (la.detach(), lb.detach())
            cross = pseudo_supervision_loss(la, hard_targets(tb)) + pseudo_supervision_loss(lb, hard_targets(ta))
            w = cps.weight * sigmoid_rampup(epoch + i / self.steps_per_epoch, cps.rampup_epochs)
            loss = sup_a + sup_b + w * cross
            self.step(loss, [self.model, self.model_b])
            n += 1
            _accumulate(sums, loss, {**parts, "sup_b": float(sup_b.detach()), "cps": float(cross.detach()), "cps_weight": w})
            on_step(f"loss {sums['loss'] / n:.4f} cps {sums['cps'] / n:.4f}")
        result = {k: v / max(n, 1) for k, v in sums.items()}
        result["unlabeled_used"] = float(len(self.kept))
        return result


@register_trainer("semi_infnet")
class SemiInfNetTrainer(_SemiBase):
    """Semi-Inf-Net: grouped pseudo-labelling of unlabelled slices, then pre-train and fine-tune."""

    def setup_data(self) -> None:
        import torch

        super().setup_data()
        self.load_unlabeled()
        s = self.cfg.semi.semi_infnet
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
        from covseg.training.checkpoint import load_checkpoint
        from covseg.utils.paths import expand

        s = self.cfg.semi.semi_infnet
        run_dir = expand(s.init_run.replace("{fold}", str(self.cfg.data.fold)))
        path = run_dir / "checkpoints" / f"{s.init_checkpoint}.pt"
        ckpt = load_checkpoint(path)
        spec = ckpt.get("model_spec", {})
        if spec.get("name") != self.cfg.model.name or spec.get("init_args") != self.model.init_args:
            raise ConfigError(
                f"semi.semi_infnet.init_run holds model {spec.get('name')!r} with other init args than this config's "
                f"{self.cfg.model.name!r}", path
            )
        if ckpt.get("preprocessing") != self.preprocessing.to_dict():
            raise ConfigError("semi.semi_infnet.init_run was trained with other preprocessing (size, normalisation)", path)
        leaked = self._init_run_trained_on_validation(run_dir)
        if leaked:
            raise ConfigError(
                f"semi.semi_infnet.init_run trained on {len(leaked)} of this run's validation cases "
                f"(e.g. {leaked[0]!r}); use the run of the same fold", run_dir
            )
        self.model.load_state_dict(ckpt["model_state"])
        self.split_info["semi_infnet_init"] = {"run": str(run_dir.resolve()), "checkpoint": s.init_checkpoint, "epoch": ckpt.get("epoch")}

    def _init_run_trained_on_validation(self, run_dir) -> list[str]:
        """Validation case ids of this run that the init run trained on (its splits.json)."""
        from covseg.training.run_folder import RunFolder

        return sorted(RunFolder(run_dir).training_case_ids() & {str(r.case_id) for r in self.val_records})

    def setup_optimisation(self) -> None:
        super().setup_optimisation()
        self.total_epochs = len(self.plan)
        self.total_steps = self.total_epochs * self.steps_per_epoch

    def state(self, epoch: int) -> dict[str, Any]:
        state = super().state(epoch)
        state["pool_index"] = self.pool_index.tolist()
        state["pool_masks"] = None if self.pool_masks is None else self.pool_masks.to(dtype=self.pool_masks.dtype).clone()
        return state

    def load_state(self, ckpt: dict[str, Any]) -> None:
        import torch

        super().load_state(ckpt)
        self.pool_index = torch.tensor(ckpt["pool_index"], dtype=torch.long)
        self.pool_masks = ckpt["pool_masks"]

    def pseudo_label(self, indices):
        """Hard pseudo labels of unlabelled images ``indices`` at the network size."""
        import torch

        self.model.eval()
        with torch.inference_mode():
            logits = torch.cat(
                [self.model(self.as_input(self.unlabeled.images[indices[s : s + 8]])) for s in range(0, len(indices), 8)]
            )
        labels = hard_targets(logits)
        return labels.to(torch.uint8)

    def _pool_data(self):
        from covseg.training.data import CaseTensors

        masks = self.pool_masks.float() if self.num_classes == 1 else self.pool_masks.long()
        edges = edges_from_masks(masks) if self.cfg.data.edges and self.num_classes == 1 else None
        return CaseTensors(
            ids=[self.unlabeled.ids[i] for i in self.pool_index.tolist()],
            images=self.unlabeled.images[self.pool_index],
            masks=masks,
            edges=edges,
            texts=[None] * len(self.pool_index),
        )

    def train_epoch(self, epoch: int, on_step) -> dict[str, float]:
        import torch

        from covseg.models.registry import build_model

        phase, group, e_in, length = self.plan[epoch]
        s = self.cfg.semi.semi_infnet
        if phase == "group" and e_in == 0:
            idx = self.groups[group]
            labels = self.pseudo_label(idx)
            self.pool_index = torch.cat([self.pool_index, idx])
            self.pool_masks = labels if self.pool_masks is None else torch.cat([self.pool_masks, labels])
        if phase == "pretrain" and e_in == 0:
            torch.manual_seed(self.cfg.train.seed + 2_024)
            self.model = self.place(build_model(self.cfg.model.name, **self.model.init_args))
            self.optimizer = self.make_optimizer(self.model.parameters())
        if phase == "finetune" and e_in == 0:
            self.optimizer = self.make_optimizer(self.model.parameters())
            for g in self.optimizer.param_groups:
                g["lr_scale"] = s.finetune_lr_scale
        pool = self._pool_data() if self.pool_masks is not None and phase in ("group", "pretrain") else None
        primary = pool if phase == "pretrain" else self.train_data
        secondary = pool if phase == "group" else None

        self.model.train()
        torch.manual_seed(self.cfg.train.seed * 7919 + epoch)
        gen_p = self.epoch_generator(epoch, stream=1)
        steps = max(1, math.ceil(len(primary) / self.cfg.train.batch_size))
        sums: dict[str, float] = {}
        n = 0
        for i, (idx, gen) in enumerate(self.batches(primary, epoch)):
            self.set_lr(e_in * steps + i, length * steps)
            batch = self.make_batch(primary, idx, gen)
            sbatch = None
            if secondary is not None:
                sidx = torch.randint(len(secondary), (len(idx),), generator=gen_p)
                sbatch = self.make_batch(secondary, sidx, gen_p)
            loss, parts = self.two_source_step(self.model, batch, sbatch, s.pseudo_weight)
            self.step(loss, [self.model])
            n += 1
            _accumulate(sums, loss, parts)
            on_step(f"{phase} loss {sums['loss'] / n:.4f}")
        result = {k: v / max(n, 1) for k, v in sums.items()}
        result["pool"] = float(len(self.pool_index))
        return result
