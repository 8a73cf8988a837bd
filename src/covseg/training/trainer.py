"""The supervised trainer, and the base that the semi-supervised trainers extend.

One epoch is a function of (config, seed, epoch, weights at its start): the batch order,
augmentation and dropout are drawn from generators seeded by (seed, epoch). A run killed
mid-epoch and resumed from ``last.pt`` therefore continues exactly as if uninterrupted,
and a fixed seed gives the same metrics on a re-run on CPU.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from covseg import __version__
from covseg.errors import ConfigError, CovsegError
from covseg.training.config import TrainConfig, dump_config
from covseg.training.run_folder import RunFolder
from covseg.transforms.preprocess import Preprocessing

TRAINERS: dict[str, type[Trainer]] = {}


def register_trainer(name: str):
    def deco(cls):
        TRAINERS[name] = cls
        return cls

    return deco


def build_trainer(cfg: TrainConfig, run_dir: str | Path, resume: bool = False, quiet: bool = False) -> Trainer:
    """The trainer class named by ``cfg.trainer``."""
    import covseg.text.trainer
    import covseg.training.semi  # noqa: F401  (registers the semi-supervised trainers)
    if cfg.trainer not in TRAINERS:
        raise ConfigError(f"trainer: unknown {cfg.trainer!r}; known: {', '.join(sorted(TRAINERS))}")
    return TRAINERS[cfg.trainer](cfg, run_dir, resume=resume, quiet=quiet)


class Trainer:
    """Supervised training of one model; subclasses override the hooks marked below."""

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, resume: bool = False, quiet: bool = False) -> None:
        self.cfg = cfg
        self.run = RunFolder(run_dir)
        self.resume = resume
        self.quiet = quiet
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.best_metric = -math.inf
        self.best_epoch = -1
        self.preprocessing = Preprocessing.from_dict(cfg.preprocess.model_dump())
        self.augment_cfg = cfg.augment
        self.num_classes = cfg.data.num_classes

    # ----------------------------------------------------------------- setup
    def setup(self) -> None:
        import torch

        from covseg.utils.seed import seed_everything

        threads = self.cfg.train.threads or int(os.environ.get("COVSEG_THREADS", 0)) or (os.cpu_count() or 1)
        torch.set_num_threads(threads)
        seed_everything(self.cfg.train.seed, deterministic=self.cfg.train.deterministic)
        if self.resume and not self.run.checkpoint("last").exists():
            raise CovsegError("nothing to resume: no checkpoints/last.pt", self.run.path)
        if not self.resume and self.run.checkpoint("last").exists():
            raise CovsegError("run folder already holds a run; use --resume or another --output", self.run.path)
        self.setup_data()
        self.setup_model()
        self.setup_optimisation()
        self.write_run_description()
        if self.resume:
            from covseg.training.checkpoint import load_checkpoint

            self.load_state(load_checkpoint(self.run.checkpoint("last")))

    def setup_data(self) -> None:
        from covseg.training.data import build_tensors, split_records

        self.train_records, self.val_records, self.split_info = split_records(self.cfg.data, self.cfg.train.seed)
        with self._progress() as prog:
            task = prog.add_task("reading cases", total=len(self.train_records) + len(self.val_records), info="")
            step = lambda: prog.advance(task)  # noqa: E731
            self.train_data = build_tensors(self.train_records, self.preprocessing, self.cfg.data, progress=step)
            self.val_data = build_tensors(self.val_records, self.preprocessing, self.cfg.data, keep_originals=True, progress=step)
        if self.cfg.data.prior_run:
            self.add_prior_channel()

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
            splits = RunFolder(run_dir).read_json("splits.json")
            for case_id in splits.get("val", []):
                owner.setdefault(str(case_id), run_dir)
        missing = [str(r.case_id) for r in self.train_records if str(r.case_id) not in owner]
        if missing:
            raise ConfigError(
                f"data.prior_oof_runs: {len(missing)} training cases are held out by none of the runs (first: {missing[0]})"
            )
        return owner

    def add_prior_channel(self) -> None:
        """Append a binary run's infection probability as an extra input channel (cascade input)."""
        import torch

        from covseg.inference.predictor import Predictor
        from covseg.transforms.preprocess import resize_tensor

        if not self.cfg.model.params.get("prior_channel"):
            raise ConfigError("data.prior_run needs a model taking the prior as input (model.params.prior_channel: true)")
        from covseg.data import load_sample

        prior = Predictor.from_run(self.prior_run_dir(), checkpoint="last")
        oof = self._oof_prior_runs() if self.cfg.data.prior_oof_runs else {}
        oof_predictors = {d: Predictor.from_run(d, checkpoint="last") for d in sorted(set(oof.values()))}
        shared = 0 if oof else self._prior_shared_training_cases()
        self.split_info["prior"] = {"run": str(self.prior_run_dir().resolve()), "shared_training_cases": shared}
        if oof:
            self.split_info["prior"]["oof_runs"] = [str(d.resolve()) for d in oof_predictors]
        if shared:
            self.log(
                f"[yellow]warning:[/] the prior run trained on {shared} of these training cases: its maps are better on "
                "them than on new images, and the model may learn to trust them too much (use out-of-fold priors)"
            )
        for records, data, is_train in ((self.train_records, self.train_data, True), (self.val_records, self.val_data, False)):
            maps = []
            for rec in records:
                source = oof_predictors[oof[str(rec.case_id)]] if is_train and oof else prior
                probs = source.predict_arrays([load_sample(rec).image])[0]
                maps.append(resize_tensor(torch.from_numpy(probs)[None, None], tuple(data.images.shape[-2:]))[0])
            data.images = torch.cat([data.images, torch.stack(maps)], dim=1)

    def setup_model(self) -> None:
        from covseg.losses import build_criterion
        from covseg.models.registry import build_model

        params = dict(self.cfg.model.params)
        params.setdefault("in_channels", self.cfg.preprocess.channels)
        params.setdefault("out_channels", self.num_classes)
        self.model = self.place(build_model(self.cfg.model.name, **params))
        self.criterion = build_criterion(self.cfg.loss.model_dump())

    def place(self, model):
        """Put a model in the training memory format (channels-last on CPU by default)."""
        import torch

        return model.to(memory_format=torch.channels_last) if self.cfg.train.channels_last else model

    def as_input(self, x):
        """An image batch in the training memory format."""
        import torch

        if self.cfg.train.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def setup_optimisation(self) -> None:
        self.optimizer = self.make_optimizer(self.model.parameters())
        self.steps_per_epoch = max(1, math.ceil(len(self.train_data) / self.cfg.train.batch_size))
        self.total_epochs = self.cfg.train.epochs
        self.total_steps = self.total_epochs * self.steps_per_epoch

    def make_optimizer(self, params):
        import torch

        o = self.cfg.optim
        if o.name == "sgd":
            return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=True)
        if o.name == "adam":
            return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)

    def write_run_description(self) -> None:
        from covseg.training.data import dataset_summary

        self.run.path.mkdir(parents=True, exist_ok=True)
        self.run.write_config(dump_config(self.cfg))
        self.run.write_json("model.json", self.model_description())
        summary = dataset_summary(self.train_records, self.train_data, self.cfg.data)
        summary["val_cases"] = len(self.val_records)
        self.run.write_json("dataset.json", summary)
        self.run.write_json("splits.json", self.split_info)

    def model_description(self) -> dict[str, Any]:
        """What ``covseg predict`` needs: model spec, preprocessing, classes, threshold."""
        return {
            "name": self.cfg.model.name,
            "init_args": self.model.init_args,
            "preprocessing": self.preprocessing.to_dict(),
            "num_classes": self.num_classes,
            "class_names": self.cfg.data.class_names or (["infection"] if self.num_classes == 1 else None),
            "threshold": self.cfg.train.threshold,
            "trainer": self.cfg.trainer,
            "prior": {"run": str(self.prior_run_dir().resolve()), "checkpoint": "last"} if self.cfg.data.prior_run else None,
            "covseg_version": __version__,
        }

    # ----------------------------------------------------------------- state
    def state(self, epoch: int) -> dict[str, Any]:
        """Everything to rebuild the model and resume after ``epoch``."""
        import torch

        return {
            "model_spec": {"name": self.cfg.model.name, "init_args": self.model.init_args},
            "model_state": self.model.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "epoch": epoch,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "config": self.cfg.model_dump(mode="json"),
            "preprocessing": self.preprocessing.to_dict(),
            "num_classes": self.num_classes,
            "covseg_version": __version__,
            "torch_version": torch.__version__,
        }

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model_state"])
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        self.start_epoch = int(ckpt["epoch"]) + 1
        self.best_metric = float(ckpt["best_metric"])
        self.best_epoch = int(ckpt["best_epoch"])
        self.history = list(ckpt["history"])

    # ----------------------------------------------------------------- loop
    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train for the configured epochs; returns the best validation metrics.

        ``stop_after`` ends this session after that many epochs (the schedule stays that of
        the full run), for training in time slices with ``resume``.
        """
        from covseg.training.checkpoint import save_checkpoint

        self.setup()
        cfg = self.cfg.train
        if self.start_epoch >= self.total_epochs:
            self.log(f"already trained for {self.total_epochs} epochs")
        with self._progress() as prog:
            task = prog.add_task("training", total=self.total_epochs * self.steps_per_epoch, info="")
            prog.update(task, completed=self.start_epoch * self.steps_per_epoch)
            end = self.total_epochs if stop_after is None else min(self.total_epochs, self.start_epoch + stop_after)
            for epoch in range(self.start_epoch, end):
                t0 = time.perf_counter()
                parts = self.train_epoch(epoch, lambda info: prog.update(task, advance=1, info=info))
                row: dict[str, Any] = {"epoch": epoch, **{f"train_{k}": v for k, v in parts.items()}}
                row["lr"] = self.optimizer.param_groups[0]["lr"]
                if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == self.total_epochs:
                    metrics = self.validate()
                    row.update({f"val_{k}": v for k, v in metrics.items()})
                    value = metrics.get(cfg.monitor, float("nan"))
                    if value > self.best_metric:
                        self.best_metric, self.best_epoch = float(value), epoch
                        row["best"] = 1
                row["time_s"] = round(time.perf_counter() - t0, 3)
                self.history.append(row)
                state = self.state(epoch)
                save_checkpoint(self.run.checkpoint("last"), state)
                if row.get("best"):
                    save_checkpoint(self.run.checkpoint("best"), state)
                self.run.write_history(self.history)
                self.log(self._epoch_line(row))
        self.finish()
        return self.summary()

    def finish(self) -> None:
        from covseg.utils.atomic import write_bytes
        from covseg.viz.plots import training_curves_png

        if self.history:
            write_bytes(self.run.path / "curves.png", training_curves_png(self.history, monitor=self.cfg.train.monitor))

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
        """Shuffled index batches of ``data`` for ``epoch`` (the last short batch is kept)."""
        import torch

        gen = self.epoch_generator(epoch, stream)
        perm = torch.randperm(len(data), generator=gen)
        bs = self.cfg.train.batch_size
        for start in range(0, len(perm), bs):
            idx = perm[start : start + bs]
            if len(idx) == 1 and len(perm) > 1:
                idx = torch.cat([idx, perm[:1]])  # batch norm needs two samples
            yield idx, gen

    def make_batch(self, data, idx, gen) -> dict[str, Any]:
        """Augmented batch dict: ``image``, ``mask``, ``edge`` (if any), ``text``."""
        from covseg.transforms.augment import augment_batch

        labels = {"mask": data.masks[idx]}
        if data.edges is not None:
            labels["edge"] = data.edges[idx]
        image, labels = augment_batch(data.images[idx], labels, self.augment_cfg, gen)
        batch = {"image": image, **labels}
        if data.texts:
            batch["text"] = [data.texts[int(i)] for i in idx]
        return batch

    def forward_train(self, model, batch: dict[str, Any]) -> dict[str, Any]:
        """Hook: run a model on a batch (text-guided trainers pass the text too)."""
        return model.forward_train(self.as_input(batch["image"]))

    def train_epoch(self, epoch: int, on_step) -> dict[str, float]:
        """Hook: one epoch over the labelled data; returns mean loss parts."""
        import torch

        self.model.train()
        torch.manual_seed(self.cfg.train.seed * 7919 + epoch)
        sums: dict[str, float] = {}
        n = 0
        for step_in_epoch, (idx, gen) in enumerate(self.batches(self.train_data, epoch)):
            self.set_lr(epoch * self.steps_per_epoch + step_in_epoch)
            batch = self.make_batch(self.train_data, idx, gen)
            out = self.forward_train(self.model, batch)
            loss, parts = self.criterion(out, batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.clip(self.model)
            self.optimizer.step()
            n += 1
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                if k != "total":  # the criterion's total is the loss itself
                    sums[k] = sums.get(k, 0.0) + float(v)
            on_step(f"loss {sums['loss'] / n:.4f}")
        return {k: v / max(n, 1) for k, v in sums.items()}

    def clip(self, model) -> None:
        import torch

        if self.cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.optim.grad_clip)

    # ----------------------------------------------------------------- validation
    def predict_val(self, model=None) -> list[np.ndarray]:
        """Validation probabilities at each case's original size."""
        from covseg.inference.core import predict_probabilities

        model = model or self.model
        model.eval()
        sizes = [m.shape[:2] for m in self.val_data.original_masks]
        return predict_probabilities(
            self.eval_forward(model, self.val_data),
            self.val_data.images,
            sizes,
            num_classes=self.num_classes,
            batch_size=self.cfg.train.val_batch_size,
            extra_inputs=self.eval_extra_inputs(self.val_data),
        )

    def eval_forward(self, model, data):
        """Hook: the callable ``predict_probabilities`` uses (text models bind text here)."""
        return lambda x, **_: model(self.as_input(x))

    def eval_extra_inputs(self, data):
        return None

    def validate(self, model=None) -> dict[str, float]:
        """Medical-protocol metrics on the validation set at original resolution."""
        from covseg.training.validation import score_cases

        probs = self.predict_val(model)
        return score_cases(probs, self.val_data.original_masks, self.num_classes, self.cfg.train.threshold)

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


register_trainer("supervised")(Trainer)
