"""The trainer: one epoch loop and one optimiser step for every training method.

One epoch is a function of (config, seed, epoch, weights at its start): the batch order,
augmentation and dropout are drawn from generators seeded by (seed, epoch). A run killed
mid-epoch and resumed from ``last.pt`` therefore continues exactly as if uninterrupted, and a
fixed seed gives the same weights on a re-run on CPU.

Methods (``trainer:`` in the config, :data:`covseg.registry.TRAINERS`) subclass :class:`Trainer`
once and override hooks: ``training_step`` (the loss of one step), ``on_epoch_start``,
``epoch_sampler`` and ``lr_position`` (epoch plans), ``state``/``load_state``. Extra model inputs
(text, the cascade's prior channel) are input adapters, so every method takes them.

This module is the epoch loop and its hooks. What a run trains on comes from a source
(:mod:`covseg.training.sources`, a typed ``TrainingData``); the once-only setup (model, optimiser,
run files, checkpoint state) is :class:`covseg.training.setup.TrainerSetup`, validation is
:class:`covseg.training.validation.TrainerValidation`, and the model is called through
:func:`covseg.engine.model_call.call_model`, as the ``Segmenter`` calls it.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from covseg.errors import ConfigError
from covseg.registry import TRAINERS
from covseg.runs.folder import RunFolder
from covseg.training.config import TrainConfig
from covseg.training.setup import TrainerSetup
from covseg.training.validation import TrainerValidation
from covseg.transforms.preprocess import Preprocessing

Callback = Callable[["Trainer", str], None]


def build_trainer(
    cfg: TrainConfig, run_dir: str | Path, resume: bool = False, quiet: bool = False, callbacks: list[Callback] | None = None
) -> Trainer:
    """The trainer class named by ``cfg.trainer``."""
    if cfg.trainer not in TRAINERS:
        raise ConfigError(f"trainer: unknown {cfg.trainer!r}; known: {', '.join(TRAINERS.names())}")
    return TRAINERS.get(cfg.trainer)(cfg, run_dir, resume=resume, quiet=quiet, callbacks=callbacks)


class TrainForward(torch.nn.Module):
    """A module whose ``forward`` is a model's ``forward_train`` (what DDP and ``torch.compile`` wrap)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, **kwargs):
        return self.model.forward_train(x, **kwargs)


class _Jobs(torch.utils.data.Dataset):
    """The planned batches of an epoch as a dataset, for data-loader workers."""

    def __init__(self, sampler, jobs: list[dict[str, Any]]) -> None:
        self.sampler = sampler
        self.jobs = jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.sampler.load(self.jobs[i])


def accumulate(sums: dict[str, float], loss, parts: dict[str, float]) -> None:
    """Add a step's loss and loss parts to the epoch sums (the criterion's ``total`` is the loss)."""
    for k, v in {"loss": float(loss.detach()), **parts}.items():
        if k != "total":
            sums[k] = sums.get(k, 0.0) + float(v)


class Trainer(TrainerSetup, TrainerValidation):
    """Supervised training of one model; the semi-supervised methods override its hooks.

    ``callbacks`` are called as ``callback(trainer, event)`` with ``event`` in ``"epoch_end"``,
    ``"fit_end"`` (the CLI draws the training curves this way; training never imports ``viz``).
    """

    #: whether ``train.multiscale_rates`` fits the method (every model input comes through ``step_views``
    #: or ``secondary_batch``); methods drawing unlabelled images at the network size say False
    supports_multiscale: bool = True

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: str | Path,
        resume: bool = False,
        quiet: bool = False,
        callbacks: list[Callback] | None = None,
    ) -> None:
        from covseg.training.text import text_settings

        self.cfg = cfg
        self.run = RunFolder(run_dir)
        self.resume = resume
        self.quiet = quiet
        self.callbacks = list(callbacks or [])
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.best_metric = -math.inf
        self.best_epoch = -1
        self.preprocessing = Preprocessing.from_dict(cfg.preprocess.model_dump(exclude={"volume"}))
        self.augment_cfg = cfg.augment
        self.num_classes = cfg.data.num_classes
        self.text = text_settings(cfg)
        self.adapters: list[Any] = []
        self.prior_adapter = None
        self.text_adapter = None
        self.train_variants: list[list[str]] = []
        self._val_inputs = None
        self._wrappers: dict[tuple[int, bool], Any] = {}
        self.runtime: Any = None
        self.joint = None  # JointSettings of a model with a classification head
        self.volume_plan: Any = None  # volumes: the plan (covseg.training.sources.volumes), else None
        self.cascade_stage: Any = None
        self.in_channels = cfg.preprocess.channels
        self.data: Any = None  # the source's TrainingData (covseg.training.sources)
        self.multiscale: Any = None  # BatchViews of train.multiscale_rates (covseg.training.multiscale)

    # ----------------------------------------------------------------- loop
    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train for the configured epochs; returns the best validation metrics.

        ``stop_after`` ends this session after that many epochs (the schedule stays that of
        the full run), for training in time slices with ``resume``.
        """
        from covseg.runs.checkpoint import save_checkpoint

        self.setup()
        cfg = self.cfg.train
        if self.start_epoch >= self.total_epochs:
            self.log(f"already trained for {self.total_epochs} epochs")
        with self._progress() as prog:
            task = prog.add_task("training", total=self.total_epochs * self.steps_per_epoch, info="")
            prog.update(task, completed=self.start_epoch * self.steps_per_epoch)
            end = self.total_epochs if stop_after is None else min(self.total_epochs, self.start_epoch + stop_after)
            for epoch in range(self.start_epoch, end):
                t0, c0 = time.perf_counter(), time.process_time()
                parts = self.train_epoch(epoch, lambda info: prog.update(task, advance=1, info=info))
                row: dict[str, Any] = {"epoch": epoch, **{f"train_{k}": v for k, v in parts.items()}}
                row["lr"] = self.optimizer.param_groups[0]["lr"]
                if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == self.total_epochs:
                    metrics = self.validate(self.evaluated_model())
                    row.update({f"val_{k}": v for k, v in metrics.items()})
                    value = metrics.get(cfg.monitor, float("nan"))
                    if value > self.best_metric:
                        self.best_metric, self.best_epoch = float(value), epoch
                        row["best"] = 1
                row["time_s"] = round(time.perf_counter() - t0, 3)
                row["cpu_s"] = round(time.process_time() - c0, 3)  # this process's CPU (all threads): cost on a loaded machine
                self.history.append(row)
                if self.runtime.is_main:
                    state = self.state(epoch)
                    save_checkpoint(self.run.checkpoint("last"), state)
                    if row.get("best"):
                        save_checkpoint(self.run.checkpoint("best"), state)
                    self.run.write_history(self.history)
                    self.log(self._epoch_line(row))
                    self._notify("epoch_end")
                self.runtime.barrier()  # no process runs ahead of the checkpoint a resume starts from
        if self.runtime.is_main:
            self._notify("fit_end")
        return self.summary()

    def close(self) -> None:
        """End the run's process group, DDP wrappers first: they hold the group, and a group torn down
        at exit under live wrappers hung about 1 in 100 resumed torchrun runs (docs/devices.md)."""
        self._wrappers.clear()
        gc.collect()
        self.runtime.close()

    def _notify(self, event: str) -> None:
        for callback in self.callbacks:
            callback(self, event)

    def summary(self) -> dict[str, Any]:
        best = next((r for r in self.history if r["epoch"] == self.best_epoch), None)
        return {
            "run_dir": str(self.run.path),
            "best_epoch": self.best_epoch,
            "best_metric": self.best_metric,
            "monitor": self.cfg.train.monitor,
            "best_row": best,
            "epochs": len(self.history),
            "train_time_s": float(sum(r.get("time_s", 0.0) for r in self.history)),
        }

    def epoch_generator(self, epoch: int, stream: int = 0):
        """Random stream for (seed, epoch, stream): batch order, augmentation."""
        import torch

        return torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + epoch * 101 + stream)

    def lr_at(self, step: int, total: int | None = None) -> float:
        from covseg.training.schedule import lr_factor

        s = self.cfg.schedule
        warm = int(s.warmup_epochs * self.steps_per_epoch)
        base = self.cfg.optim.lr
        total = self.total_steps if total is None else total
        return base * lr_factor(s.name, step, total, warm, s.power, s.min_lr / base if base else 0.0)

    def set_lr(self, step: int, total: int | None = None) -> None:
        lr = self.lr_at(step, total)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def batches(self, data, epoch: int, stream: int = 0):
        """Shuffled index batches of in-memory ``data`` for ``epoch``, with the epoch's generator."""
        from covseg.training.sampling import ImageSampler

        gen = self.epoch_generator(epoch, stream)
        for idx in ImageSampler(data, self.cfg.train.batch_size, self.augment_cfg).batches(gen):
            yield idx, gen

    def make_batch(self, data, idx, gen) -> dict[str, Any]:
        """Augmented batch dict of in-memory ``data``: ``image``, ``mask``, ``edge`` (if any), ``text``."""
        from covseg.training.sampling import ImageSampler

        variants = self.train_variants if data is self.train_data and self.train_variants else None
        sampler = ImageSampler(data, self.cfg.train.batch_size, self.augment_cfg, variants)
        job = self.plan_batch(sampler, idx, gen)
        return self.apply_adapter_draws(sampler.load(job), job)

    def secondary_batch(self, sampler, generator) -> dict[str, Any]:
        """A batch of another source (pseudo labels, a pool) drawn with replacement from ``generator``:
        as many cases as the current global batch, this process's share of them."""
        idx = torch.randint(len(sampler), (self.step_global_size,), generator=generator)
        job = self.plan_batch(sampler, idx, generator)
        batch = self.runtime.to_device(self.apply_adapter_draws(sampler.load(job), job))
        return batch if self.multiscale is None else self.multiscale.match(batch)

    def shard_rows(self, value: Any) -> Any:
        """This process's contiguous share of per-sample rows (a tensor, a list or a dict of them)."""
        if not self.runtime.distributed:
            return value
        from covseg.training.sampling import shard_job, shard_slice

        n = len(value) if not isinstance(value, dict) else len(next(iter(value.values())))
        return shard_job(value, shard_slice(n, self.runtime.rank, self.runtime.world_size))

    def forward_train(self, model, batch: dict[str, Any], sync: bool = True) -> dict[str, Any]:
        """A model's named training outputs on a batch; the adapters give its keyword inputs.

        Under torchrun the forward goes through the model's DistributedDataParallel wrapper (so
        gradients are averaged over processes); ``sync=False`` calls the model itself (scoring).
        """
        from covseg.engine.model_call import call_model

        n = batch["image"].shape[0]
        contexts = [{"text": t} for t in (batch.get("text") or [None] * n)]
        call = self._train_callable(model, sync)
        return call_model(call, batch["image"], contexts, self.adapters, self.runtime, self.cfg.train.channels_last, autocast=False)

    def _train_callable(self, model, sync: bool):
        """``model.forward_train``, or its DDP / compiled wrapper (made once per model)."""
        rt = self.runtime
        wrap_ddp = sync and rt.distributed
        if not (wrap_ddp or rt.compile):
            return model.forward_train
        key = (id(model), wrap_ddp)
        entry = self._wrappers.get(key)
        if entry is None or entry[0] is not model:
            module = rt.maybe_compile(TrainForward(model))
            entry = (model, rt.wrap_ddp(module) if wrap_ddp else module)
            self._wrappers[key] = entry
        return entry[1]

    # hooks of the epoch loop ------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        """Hook: work before the epoch's training mode and seeds (re-scoring, pseudo-labelling)."""

    def train_modules(self) -> list[Any]:
        """Hook: what is set to training mode for an epoch (models and adapters)."""
        return [self.model, *self.adapters]

    def epoch_sampler(self, epoch: int):
        """Hook: the sampler of ``epoch`` (methods with phases change it)."""
        return self.sampler

    def lr_position(self, epoch: int, step: int) -> tuple[int, int | None]:
        """Hook: ``(step, total)`` of the schedule at this step (``None``: the whole run)."""
        return epoch * self.steps_per_epoch + step, None

    def step_views(self, batch: dict[str, Any]):
        """Hook: what one planned batch is trained as, one optimiser step each (multi-scale: one per rate)."""
        return (batch,) if self.multiscale is None else self.multiscale.views(batch)

    def training_step(self, batch: dict[str, Any], epoch: int, step: int, aux_generator) -> tuple[Any, dict[str, float]]:
        """Hook: the loss of one step (supervised: the criterion on the batch)."""
        out = self.forward_train(self.model, batch)
        return self.criterion(out, batch)

    def clip_groups(self) -> list[Any]:
        """Hook: parameter groups clipped separately (one per model)."""
        return [self.model.parameters()]

    def step_info(self, sums: dict[str, float], n: int) -> str:
        return f"loss {sums['loss'] / n:.4f}"

    def epoch_extras(self) -> dict[str, float]:
        """Hook: extra per-epoch values for the history."""
        return {}

    def train_epoch(self, epoch: int, on_step) -> dict[str, float]:
        """One epoch: the sampler's batches, each view of a batch (``step_views``) through the method's
        step and the one optimiser step; the epoch's losses are means over optimiser steps.

        Every random number of the epoch's batches is drawn first, in a fixed order, from the
        epoch's generator (the sampler's plan, then each adapter's); data-loader workers only
        load and augment, and each process takes its contiguous share of every global batch.
        """
        self.on_epoch_start(epoch)
        for module in self.train_modules():
            module.train()
        torch.manual_seed(self.cfg.train.seed * 7919 + epoch)
        gen = self.epoch_generator(epoch)
        aux_gen = self.epoch_generator(epoch, stream=1)
        sampler = self.epoch_sampler(epoch)
        jobs = [self.plan_batch(sampler, idx, gen) for idx in sampler.batches(gen)]
        sums: dict[str, float] = {}
        n = 0
        for i, (job, batch) in enumerate(zip(jobs, self.load_batches(sampler, jobs))):
            self.step_global_size = job["global_size"]
            self.set_lr(*self.lr_position(epoch, i))
            batch = self.runtime.to_device(self.apply_adapter_draws(batch, job))
            for view in self.step_views(batch):
                with self.runtime.autocast():
                    loss, parts = self.training_step(view, epoch, i, aux_gen)
                self.optimizer_step(loss)
                n += 1
                accumulate(sums, loss, parts)
            on_step(self.step_info(sums, n))
        result = {k: v / max(n, 1) for k, v in sums.items()}
        result.update(self.epoch_extras())
        return result

    def plan_batch(self, sampler, indices, gen) -> dict[str, Any]:
        """A global batch's job (sampler draws, then each adapter's), cut to this process's share."""
        from covseg.training.sampling import shard_job, shard_slice

        job = sampler.plan(indices, gen)
        meta = {"n": len(indices), "text": job.get("text"), "text_variants": job.get("text_variants")}
        job["adapter_draws"] = {a.name: a.draw_training(meta, gen) for a in self.adapters}
        job["global_size"] = len(indices)
        if self.runtime.distributed:
            job = shard_job(job, shard_slice(len(indices), self.runtime.rank, self.runtime.world_size))
        return job

    def load_batches(self, sampler, jobs: list[dict[str, Any]]):
        """The jobs' batches in order: in this process, or from ``runtime.workers`` data-loader workers."""
        workers = self.cfg.runtime.workers
        if workers == 0:
            for job in jobs:
                yield sampler.load(job)
            return
        from torch.utils.data import DataLoader

        pin = self.cfg.runtime.pin_memory and self.runtime.device.type == "cuda"
        loader = DataLoader(_Jobs(sampler, jobs), batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin)
        yield from loader

    def apply_adapter_draws(self, batch: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
        draws = job.get("adapter_draws", {})
        for adapter in self.adapters:
            batch = adapter.apply_training(batch, draws.get(adapter.name))
        return batch

    def optimizer_step(self, loss) -> None:
        """The one optimiser step of every method: backward (scaled for fp16), per-model clipping, step."""
        self.runtime.backward_step(loss, self.optimizer, self.clip_groups(), self.cfg.optim.grad_clip)
        if self.average is not None:
            self.average.update(self.model)

    def evaluated_model(self):
        """What validation scores and checkpoints keep as ``model_state``: the weight average if any."""
        return self.average.module if self.average is not None else self.model

    # ----------------------------------------------------------------- output
    def log(self, text: str) -> None:
        if not self.quiet:
            from rich.console import Console

            Console(stderr=True, highlight=False).print(text)

    def _epoch_line(self, row: dict[str, Any]) -> str:
        keys = [k for k in row if k.startswith("val_") and isinstance(row[k], float)][:4]
        vals = " ".join(f"{k[4:]} {row[k]:.4f}" for k in keys)
        star = " *" if row.get("best") else ""
        return f"epoch {row['epoch'] + 1}/{self.total_epochs}  loss {row.get('train_loss', float('nan')):.4f}  {vals}  {row['time_s']:.1f}s{star}"

    def _progress(self):
        from covseg.training.sources.base import progress_bar

        return progress_bar(self.quiet)


TRAINERS.register("supervised", Trainer)
TRAINERS.register("text", Trainer, help="supervised training of a text-guided model (text on; see extra.text)")
