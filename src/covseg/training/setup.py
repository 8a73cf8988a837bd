"""The trainer's setup: data from its source, the model, the optimiser, the run folder's files, state.

:class:`TrainerSetup` is the part of :class:`covseg.training.trainer.Trainer` that runs once before
the epoch loop (and the checkpoint state it resumes from); methods override its hooks
(``setup_data``, ``setup_model``, ``setup_optimisation``, ``state`` / ``load_state``).
"""

from __future__ import annotations

import os
from typing import Any

from covseg import __version__
from covseg.errors import ConfigError, CovsegError
from covseg.training.config import dump_config


class TrainerSetup:
    """Setup hooks of the trainer (see :class:`covseg.training.trainer.Trainer`)."""

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
        from covseg.training.multiscale import multiscale_views

        self.multiscale = multiscale_views(self)
        self.setup_optimisation()
        self.write_run_description()
        if self.resume:
            from covseg.runs.checkpoint import load_checkpoint

            self.load_state(load_checkpoint(self.run.checkpoint("last")))

    def setup_data(self) -> None:
        """The run's data from its source (:mod:`covseg.training.sources`), kept under the trainer's names."""
        from covseg.training.sources import load_training_data

        self.use_data(load_training_data(self.source_context()))

    def source_context(self):
        """What the data sources may use: settings and services, not the trainer."""
        from functools import partial

        from covseg.training.sources.base import SourceContext, progress_bar

        return SourceContext(
            self.cfg, self.run, self.runtime, self.preprocessing, self.text, self.num_classes,
            self.global_batch_size, self.min_batch, partial(progress_bar, self.quiet), self.log,
        )

    def use_data(self, data) -> None:
        """Take a source's :class:`~covseg.training.sources.TrainingData`."""
        self.data = data
        self.train_records, self.val_records, self.split_info = data.train_records, data.val_records, data.split_info
        self.train_data, self.val_data, self.sampler = data.train, data.val, data.sampler
        self.in_channels = data.in_channels
        self.train_variants = data.variants
        self.adapters.extend(data.adapters)
        self.prior_adapter = data.prior_adapter
        self.volume_plan, self.cascade_stage = data.volume_plan, data.cascade_stage

    @property
    def global_batch_size(self) -> int:
        """Samples per optimiser step over all processes (``train.batch_size`` is per process)."""
        return self.cfg.train.batch_size * self.runtime.world_size

    @property
    def min_batch(self) -> int:
        """Smallest batch a step takes: two samples per process (batch norm needs two)."""
        return 2 * self.runtime.world_size

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
            from covseg.training.sources.volumes import inferer_spec

            return build_inferer(inferer_spec(self.cfg, self.volume_plan))
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
            from covseg.training.sources.volumes import write_plan

            write_plan(self.run, self.data.plan_record, self.cascade_stage)

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
            from covseg.training.sources.volumes import describe_cascade

            desc["volume"] = self.volume_plan.to_dict()
            desc["cascade"] = describe_cascade(self.cascade_stage)
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
