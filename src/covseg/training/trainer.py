"""The trainer: one epoch loop and one optimiser step for every training method.

One epoch is a function of (config, seed, epoch, weights at its start): the batch order,
augmentation and dropout are drawn from generators seeded by (seed, epoch). A run killed
mid-epoch and resumed from ``last.pt`` therefore continues exactly as if uninterrupted, and a
fixed seed gives the same weights on a re-run on CPU.

Methods (``trainer:`` in the config, :data:`covseg.registry.TRAINERS`) subclass :class:`Trainer`
once and override hooks: ``training_step`` (the loss of one step), ``on_epoch_start``,
``epoch_sampler`` and ``lr_position`` (epoch plans), ``state``/``load_state``. Extra model inputs
(text, the cascade's prior channel) are input adapters, so every method takes them.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from covseg import __version__
from covseg.errors import ConfigError, CovsegError
from covseg.registry import TRAINERS
from covseg.runs.folder import RunFolder
from covseg.training.config import TrainConfig, dump_config
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


class Trainer:
    """Supervised training of one model; the semi-supervised methods override its hooks.

    ``callbacks`` are called as ``callback(trainer, event)`` with ``event`` in ``"epoch_end"``,
    ``"fit_end"`` (the CLI draws the training curves this way; training never imports ``viz``).
    """

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
        self.volume_plan: Any = None  # volumes: the plan (covseg.training.volumes), else None
        self.cascade_stage: Any = None
        self.in_channels = cfg.preprocess.channels

    # ----------------------------------------------------------------- setup
    def setup(self) -> None:
        import torch

        from covseg.engine.runtime import Runtime
        from covseg.utils.seed import seed_everything

        threads = self.cfg.train.threads or int(os.environ.get("COVSEG_THREADS", 0)) or (os.cpu_count() or 1)
        torch.set_num_threads(threads)
        seed_everything(self.cfg.train.seed, deterministic=self.cfg.train.deterministic)
        rt = self.cfg.runtime
        self.runtime = Runtime.create(rt.device, rt.amp, rt.compile)
        if not self.runtime.is_main:
            self.quiet = True  # one process logs and writes: rank 0
        if self.resume and not self.run.checkpoint("last").exists():
            raise CovsegError("nothing to resume: no checkpoints/last.pt", self.run.path)
        if not self.resume and self.run.checkpoint("last").exists():
            raise CovsegError("run folder already holds a run; use --resume or another --output", self.run.path)
        self.setup_data()
        self.setup_model()
        self.setup_optimisation()
        self.write_run_description()
        if self.resume:
            from covseg.runs.checkpoint import load_checkpoint

            self.load_state(load_checkpoint(self.run.checkpoint("last")))

    def setup_data(self) -> None:
        from covseg.training.data import build_tensors, split_records

        self.train_records, self.val_records, self.split_info = split_records(self.cfg.data, self.cfg.train.seed)
        self.check_dimensions()
        from covseg.training.volumes import is_volume_dataset, setup_volume_data

        if is_volume_dataset(self.train_records):  # planned, cached, patched, validated as whole volumes
            return setup_volume_data(self)
        with self._progress() as prog:
            task = prog.add_task("reading cases", total=len(self.train_records) + len(self.val_records), info="")
            step = lambda: prog.advance(task)  # noqa: E731
            self.train_data = build_tensors(self.train_records, self.preprocessing, self.cfg.data, progress=step)
            self.val_data = build_tensors(
                self.val_records, self.preprocessing, self.cfg.data, keep_originals=True, progress=step, images=False
            )
        if self.text is not None:
            self.setup_text_data()
        if self.cfg.data.prior_run:
            self.add_prior_channel()
        self.sampler = self.make_sampler()

    def check_dimensions(self) -> None:
        """One line when a 3D model meets 2D images (before any case is read). Volumes with a 2D
        model are the 2.5D mode (:mod:`covseg.training.volumes`)."""
        from covseg.data.imageio import is_volume

        first = self.train_records[0].image
        if not is_volume(first) and int(self.cfg.model.params.get("spatial_dims", 2)) == 3:
            raise ConfigError(f"model.params.spatial_dims is 3 but data.root holds 2D images (first: {first})")

    def make_sampler(self):
        """The configured sampler (:data:`covseg.registry.SAMPLERS`) over the training cases."""
        from covseg.registry import SAMPLERS
        from covseg.training.sampling import SamplerRequest

        request = SamplerRequest(
            self.train_data,
            self.cfg.sampler,
            self.global_batch_size,
            self.augment_cfg,
            self.train_variants or None,
            self.min_batch,
            case_cache=self.case_cache,
            extra_inputs=bool(self.cfg.data.prior_run) or self.text is not None,
        )
        return SAMPLERS.get(self.cfg.sampler.name).from_request(request)

    @property
    def global_batch_size(self) -> int:
        """Samples per optimiser step over all processes (``train.batch_size`` is per process)."""
        return self.cfg.train.batch_size * self.runtime.world_size

    @property
    def min_batch(self) -> int:
        """Smallest batch a step takes: two samples per process (batch norm needs two)."""
        return 2 * self.runtime.world_size

    def case_cache(self):
        """The on-disk cache of the preprocessed training cases (for samplers reading them lazily)."""
        from covseg.training.cache import CaseCache
        from covseg.training.data import read_case

        settings = {"preprocessing": self.preprocessing.to_dict(), "mask": self.cfg.data.mask, "layout": self.cfg.data.layout}
        with self._progress() as prog:
            task = prog.add_task("caching cases", total=len(self.train_records), info="")
            cache = CaseCache.build(
                self.train_records,
                lambda rec: read_case(rec, self.preprocessing, self.cfg.data),
                settings,
                self.num_classes,
                self.cfg.sampler.cache_dir,
                progress=lambda: prog.advance(task),
            )
        self.split_info["cache"] = str(cache.folder)
        return cache

    def setup_text_data(self) -> None:
        from covseg.training import text as text_training

        self.train_data.texts = text_training.check_texts(self.train_records, self.train_data.texts, self.text)
        self.val_data.texts = text_training.check_texts(self.val_records, self.val_data.texts, self.text)
        self.train_variants = text_training.prompt_variants(self.train_records, self.text.prompt_types)
        for line in text_training.warnings_for(self.text, self.train_variants, self.augment_cfg.hflip, self.train_data.texts):
            self.log(line)

    def prior_run_dir(self, pattern: str | None = None) -> Path:
        from covseg.utils.paths import expand

        return expand((pattern or self.cfg.data.prior_run).replace("{fold}", str(self.cfg.data.fold)))

    def _same_data_root(self, run_dir: Path) -> bool:
        from covseg.training.config import load_config
        from covseg.utils.paths import expand

        try:
            other = load_config(run_dir / "config.yaml")
        except (OSError, CovsegError):
            return False
        return expand(other.data.root).resolve() == expand(self.cfg.data.root).resolve()

    def _prior_shared_training_cases(self) -> int:
        """How many of this run's training cases the prior run also trained on (same data root)."""
        prior_dir = self.prior_run_dir()
        try:
            prior_train = RunFolder(prior_dir).training_case_ids()
        except (OSError, CovsegError):
            return 0
        if not self._same_data_root(prior_dir):
            return 0
        return len(prior_train & {str(r.case_id) for r in self.train_records})

    def _oof_prior_runs(self) -> dict[str, Path]:
        """For each training case, the nested-CV run that held it out (its prior is then out-of-fold)."""
        owner: dict[str, Path] = {}
        for pattern in self.cfg.data.prior_oof_runs or []:
            run_dir = self.prior_run_dir(pattern)
            if not self._same_data_root(run_dir):
                raise ConfigError(f"data.prior_oof_runs: {run_dir} is not a run on data.root {self.cfg.data.root}")
            for case_id in RunFolder(run_dir).validation_case_ids():
                owner.setdefault(case_id, run_dir)
        missing = [str(r.case_id) for r in self.train_records if str(r.case_id) not in owner]
        if missing:
            raise ConfigError(
                f"data.prior_oof_runs: {len(missing)} training cases are held out by none of the runs (first: {missing[0]})"
            )
        return owner

    def add_prior_channel(self) -> None:
        """The cascade input: a binary run's infection probability as an extra channel (prior adapter)."""
        import torch

        from covseg.data import load_sample
        from covseg.engine.adapters import PriorAdapter
        from covseg.engine.segmenter import Segmenter
        from covseg.transforms.preprocess import resize_tensor

        if not self.cfg.model.params.get("prior_channel"):
            raise ConfigError("data.prior_run needs a model taking the prior as input (model.params.prior_channel: true)")
        prior_dir = self.prior_run_dir()
        self.prior_adapter = PriorAdapter(Segmenter.from_run(prior_dir, "last", self.runtime), prior_dir.resolve(), "last")
        self.adapters.append(self.prior_adapter)
        oof = self._oof_prior_runs() if self.cfg.data.prior_oof_runs else {}
        oof_sources = {d: Segmenter.from_run(d, "last", self.runtime) for d in sorted(set(oof.values()))}
        shared = 0 if oof else self._prior_shared_training_cases()
        self.split_info["prior"] = {"run": str(prior_dir.resolve()), "shared_training_cases": shared}
        if oof:
            self.split_info["prior"]["oof_runs"] = [str(d.resolve()) for d in oof_sources]
        if shared:
            self.log(
                f"[yellow]warning:[/] the prior run trained on {shared} of these training cases: its maps are better on "
                "them than on new images, and the model may learn to trust them too much (use out-of-fold priors)"
            )
        maps = []
        for rec in self.train_records:
            source = oof_sources[oof[str(rec.case_id)]] if oof else self.prior_adapter.source
            prior = self.prior_adapter.channels_from(source, load_sample(rec).image)
            maps.append(resize_tensor(torch.from_numpy(prior)[None], tuple(self.train_data.images.shape[-2:]))[0])
        self.train_data.images = torch.cat([self.train_data.images, torch.stack(maps)], dim=1)

    def model_params(self) -> dict[str, Any]:
        params = dict(self.cfg.model.params)
        params.setdefault("in_channels", self.in_channels)
        params.setdefault("out_channels", self.num_classes)
        return params

    def new_model(self, params: dict[str, Any] | None = None):
        """A fresh model of the configured architecture in the training memory format."""
        from covseg.models import build_model

        try:
            model = build_model(self.cfg.model.name, **(params or self.model_init_args))
        except (TypeError, ValueError, RuntimeError) as exc:  # RuntimeError: torch refusing a size
            raise ConfigError(f"model.params: {str(exc).strip().splitlines()[0]}") from None
        return self.place(model)

    def setup_model(self) -> None:
        from covseg.engine.adapters import TextAdapter

        params = self.model_params()
        encoder = None
        if self.text is not None:
            from covseg.training.text import build_text_encoder_for

            encoder = build_text_encoder_for(self.text, params, self.cfg.model.name, self.run.path, self.resume)
        self.model_init_args = params
        self.model = self.new_model(params)
        self.model_init_args = self.model.init_args
        if self.text is not None:
            self.text_adapter = TextAdapter(self.model, encoder, self.text, self.cfg.data.prompt)
            self.adapters.append(self.text_adapter)
        self.criterion = self.build_criterion()
        from covseg.training.joint import joint_settings

        self.joint = joint_settings(self)

    def build_criterion(self):
        """The loss terms: ``loss.terms`` as given, or the classic main / aux / edge (+ text alignment)."""
        from covseg.losses import build_criterion, build_loss_terms
        from covseg.losses.terms import LossTerm

        loss = self.cfg.loss
        if loss.terms is not None:
            return build_loss_terms(loss.terms)
        criterion = build_criterion(loss.model_dump(exclude={"terms"}))
        if self.text is not None and self.text.align_weight > 0:
            criterion.terms.append(LossTerm("align", None, self.text.align_weight, "align_loss", None))
        return criterion

    def place(self, model):
        """Put a model on the device, in the training memory format (channels-last for 2D by default)."""
        return self.runtime.prepare_model(model, self.cfg.train.channels_last)

    def as_input(self, x):
        """An image batch in the training memory format."""
        from covseg.engine.model_call import as_input

        return as_input(x, self.cfg.train.channels_last)

    def setup_optimisation(self) -> None:
        if self.text_adapter is not None:
            from covseg.training.text import optimizer_groups

            self.optimizer = self.make_optimizer(optimizer_groups(self.model, self.text_adapter))
        else:
            self.optimizer = self.make_optimizer(self.model.parameters())
        self.steps_per_epoch = self.sampler.steps_per_epoch()
        self.total_epochs = self.cfg.train.epochs
        self.total_steps = self.total_epochs * self.steps_per_epoch
        self.average = None
        if self.cfg.train.ema_decay is not None:
            from covseg.training.averaging import WeightAverage

            self.average = WeightAverage(self.model, self.cfg.train.ema_decay)

    def make_optimizer(self, params):
        """The configured optimiser (:data:`covseg.registry.OPTIMISERS`) over ``params``."""
        from covseg.training.optim import build_optimizer

        return build_optimizer(params, self.cfg.optim)

    def make_inferer(self):
        """The configured inferer; patch training validates with a sliding window of the patch size."""
        from covseg.engine.inferers import build_inferer

        spec = self.cfg.inferer.model_dump()
        if self.volume_plan is not None:
            from covseg.training.volumes import inferer_spec

            return build_inferer(inferer_spec(self))
        if self.cfg.sampler.name == "patches" and spec["name"] == "resize" and not spec["params"]:
            spec = {"name": "sliding_window", "params": {"roi_size": list(self.cfg.sampler.patch_size)}}
        if spec["name"] == "resize" and "size" not in spec["params"]:
            spec["params"]["size"] = list(self.preprocessing.size) if self.preprocessing.size else None
        return build_inferer(spec)

    def write_run_description(self) -> None:
        from covseg.training.data import dataset_summary

        self.inferer = self.make_inferer()
        if self.text_adapter is not None:
            from covseg.engine.adapters import CACHE_FILE

            texts = [*self.train_data.texts, *self.val_data.texts]
            if self.text.prompt_sampling:
                from covseg.training.text import variant_texts

                texts += variant_texts(self.train_variants)
            cache = self.run.path / CACHE_FILE if self.runtime.is_main else None
            if cache is not None:
                self.run.path.mkdir(parents=True, exist_ok=True)
            self.text_adapter.precompute(texts, cache)
        if not self.runtime.is_main:
            return  # one process writes the run folder
        self.run.path.mkdir(parents=True, exist_ok=True)
        self.run.write_config(dump_config(self.cfg))
        self.run.write_description(self.model_description())
        summary = dataset_summary(self.train_records, self.train_data, self.cfg.data)
        summary["val_cases"] = len(self.val_records)
        if self.joint is not None:
            summary["labels"] = self.joint.dataset
        self.run.write_json("dataset.json", summary)
        self.run.write_json("splits.json", self.split_info)
        if self.volume_plan is not None:
            from covseg.training.volumes import write_plan

            write_plan(self)

    def model_description(self) -> dict[str, Any]:
        """What ``covseg predict`` needs (``model.json``, read back as a ``RunDescription``)."""
        from covseg.runs.description import DESCRIPTION_FORMAT

        desc: dict[str, Any] = {
            "format": DESCRIPTION_FORMAT,
            "name": self.cfg.model.name,
            "init_args": self.model.init_args,
            "preprocessing": self.preprocessing.to_dict(),
            "num_classes": self.num_classes,
            "class_names": self.cfg.data.class_names or (["infection"] if self.num_classes == 1 else None),
            "threshold": self.cfg.train.threshold,
            "trainer": self.cfg.trainer,
            "prior": None,
            "inferer": self.inferer.describe(),
            "covseg_version": __version__,
        }
        for adapter in self.adapters:
            desc[adapter.name] = adapter.describe()
        if self.joint is not None:
            desc["classification"] = self.joint.describe()
        if self.volume_plan is not None:
            from covseg.training.volumes import describe_cascade

            desc["volume"] = self.volume_plan.to_dict()
            desc["cascade"] = describe_cascade(self)
        return desc

    # ----------------------------------------------------------------- state
    def state(self, epoch: int) -> dict[str, Any]:
        """Everything to rebuild the model and resume after ``epoch``."""
        import torch

        state = {
            "model_spec": {"name": self.cfg.model.name, "init_args": self.model.init_args},
            "model_state": self.evaluated_model().state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "epoch": epoch,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "config": self.cfg.model_dump(mode="json"),
            "preprocessing": self.preprocessing.to_dict(),
            "num_classes": self.num_classes,
            "covseg_version": __version__,
            "torch_version": str(torch.__version__),
        }
        if self.runtime.scaler is not None:
            state["scaler_state"] = self.runtime.scaler.state_dict()
        if self.average is not None:  # model_state is the average; the raw weights resume training
            state["train_model_state"] = self.model.state_dict()
            state["ema"] = self.average.state()
        if self.text_adapter is not None:
            enc = self.text_adapter.encoder
            state["text"] = {"encoder": enc.spec.to_dict() if enc is not None else None}
            encoder_state = self.text_adapter.state_dict()
            if encoder_state is not None:
                state["text_encoder_state"] = encoder_state
        return state

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt.get("train_model_state", ckpt["model_state"]))
        if self.average is not None and "ema" in ckpt:
            self.average.load(ckpt["model_state"], ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        if self.runtime.scaler is not None and ckpt.get("scaler_state"):
            self.runtime.scaler.load_state_dict(ckpt["scaler_state"])
        self.start_epoch = int(ckpt["epoch"]) + 1
        self.best_metric = float(ckpt["best_metric"])
        self.best_epoch = int(ckpt["best_epoch"])
        self.history = list(ckpt["history"])
        if self.text_adapter is not None and "text_encoder_state" in ckpt:
            self.text_adapter.load_state_dict(ckpt["text_encoder_state"])

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
        return self.runtime.to_device(self.apply_adapter_draws(sampler.load(job), job))

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
        """One epoch: the sampler's batches, each through the method's step and the one optimiser step.

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
            with self.runtime.autocast():
                loss, parts = self.training_step(batch, epoch, i, aux_gen)
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

    # ----------------------------------------------------------------- validation
    def segmenter(self, model=None):
        """The model being trained as a :class:`Segmenter` (the predictor's own path)."""
        from covseg.engine.segmenter import Segmenter

        return Segmenter(
            model or self.model,
            self.preprocessing,
            self.num_classes,
            self.adapters,
            self.inferer,
            self.cfg.train.threshold,
            channels_last=self.cfg.train.channels_last,
            runtime=self.runtime,
            volume_plan=self.volume_plan,
            cascade=self.cascade_stage,
        )

    def val_contexts(self) -> list[dict[str, Any]]:
        texts = self.val_data.texts or [None] * len(self.val_data)
        return [{"text": t} for t in texts]

    def val_inputs(self):
        """Validation inputs at their original size, prepared once (normalised + adapter channels)."""
        if self._val_inputs is None:
            segmenter = self.segmenter()
            self._val_inputs = [
                segmenter.prepare(img, ctx) for img, ctx in zip(self.val_data.original_images, self.val_contexts())
            ]
        return self._val_inputs

    def predict_val(self, model=None, indices: list[int] | None = None):
        """Validation outputs at each case's original size (the cases ``indices``, default all):
        ``.probs`` and, for joint models, ``.class_probs``."""
        indices = list(range(len(self.val_data))) if indices is None else indices
        if self.volume_plan is not None:  # whole volumes, through the saved run's own path
            from covseg.engine.segmenter import SegmenterOutput

            segmenter, data = self.segmenter(model), self.val_data
            return SegmenterOutput(
                [segmenter.volume_probabilities(data.original_images[i], data.affines[i], batch_size=self.cfg.train.val_batch_size) for i in indices]
            )
        inputs, contexts = self.val_inputs(), self.val_contexts()
        return self.segmenter(model).infer_outputs(
            [inputs[i] for i in indices], [contexts[i] for i in indices], self.cfg.train.val_batch_size
        )

    def validate(self, model=None) -> dict[str, float]:
        """Medical-protocol metrics on the validation set at original resolution (+ classification
        metrics for joint models).

        Each process scores its share of the cases; the records are gathered and reduced in case
        order, so every process gets the numbers one process would.
        """
        from covseg.training.validation import case_records, classification_scores, summarise_records

        rt = self.runtime
        indices = list(range(len(self.val_data)))[rt.rank :: rt.world_size]
        out = self.predict_val(model, indices)
        gts = [self.val_data.original_masks[i] for i in indices]
        records = case_records(out.probs, gts, self.num_classes, self.cfg.train.threshold, indices)
        classes = list(zip(indices, out.class_probs)) if out.class_probs is not None else []
        if rt.distributed:
            records = [r for part in rt.gather_objects(records) for r in part]
            classes = [c for part in rt.gather_objects(classes) for c in part]
        scores = summarise_records(records, self.num_classes, self.cfg.train.threshold)
        if classes:
            classes.sort(key=lambda c: c[0])
            labels = self.val_data.labels.tolist()
            scores.update(classification_scores([p for _, p in classes], [labels[i] for i, _ in classes]))
        return scores

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
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=self.quiet,
            transient=True,
        )


TRAINERS.register("supervised", Trainer)
TRAINERS.register("text", Trainer, help="supervised training of a text-guided model (text on; see extra.text)")
