"""The cascade's input: a binary run's infection probability as an extra channel of the training images
(the prior input adapter), out-of-fold when nested cross-validation runs are given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from covseg.errors import ConfigError, CovsegError
from covseg.runs.folder import RunFolder
from covseg.training.sources.base import SourceContext, TrainingData


def prior_run_dir(cfg: Any, pattern: str | None = None) -> Path:
    """``data.prior_run`` (or ``pattern``) with ``{fold}`` filled in."""
    from covseg.utils.paths import expand

    return expand((pattern or cfg.data.prior_run).replace("{fold}", str(cfg.data.fold)))


def same_data_root(cfg: Any, run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` trained on this config's ``data.root``."""
    from covseg.training.config import load_config
    from covseg.utils.paths import expand

    try:
        other = load_config(run_dir / "config.yaml")
    except (OSError, CovsegError):
        return False
    return expand(other.data.root).resolve() == expand(cfg.data.root).resolve()


def shared_training_cases(cfg: Any, train_records: list) -> int:
    """How many of this run's training cases the prior run also trained on (same data root)."""
    prior_dir = prior_run_dir(cfg)
    try:
        prior_train = RunFolder(prior_dir).training_case_ids()
    except (OSError, CovsegError):
        return 0
    if not same_data_root(cfg, prior_dir):
        return 0
    return len(prior_train & {str(r.case_id) for r in train_records})


def oof_prior_runs(cfg: Any, train_records: list) -> dict[str, Path]:
    """For each training case, the nested-CV run that held it out (its prior is then out-of-fold)."""
    owner: dict[str, Path] = {}
    for pattern in cfg.data.prior_oof_runs or []:
        run_dir = prior_run_dir(cfg, pattern)
        if not same_data_root(cfg, run_dir):
            raise ConfigError(f"data.prior_oof_runs: {run_dir} is not a run on data.root {cfg.data.root}")
        for case_id in RunFolder(run_dir).validation_case_ids():
            owner.setdefault(case_id, run_dir)
    missing = [str(r.case_id) for r in train_records if str(r.case_id) not in owner]
    if missing:
        raise ConfigError(
            f"data.prior_oof_runs: {len(missing)} training cases are held out by none of the runs (first: {missing[0]})"
        )
    return owner


def add_prior_channel(ctx: SourceContext, data: TrainingData) -> None:
    """The prior adapter joins ``data.adapters`` and its maps become the training images' last channel."""
    import torch

    from covseg.data import load_sample
    from covseg.engine.adapters import PriorAdapter
    from covseg.engine.segmenter import Segmenter
    from covseg.transforms.preprocess import resize_tensor

    cfg = ctx.cfg
    if not cfg.model.params.get("prior_channel"):
        raise ConfigError("data.prior_run needs a model taking the prior as input (model.params.prior_channel: true)")
    prior_dir = prior_run_dir(cfg)
    adapter = PriorAdapter(Segmenter.from_run(prior_dir, "last", ctx.runtime), prior_dir.resolve(), "last")
    data.adapters.append(adapter)
    oof = oof_prior_runs(cfg, data.train_records) if cfg.data.prior_oof_runs else {}
    oof_sources = {d: Segmenter.from_run(d, "last", ctx.runtime) for d in sorted(set(oof.values()))}
    shared = 0 if oof else shared_training_cases(cfg, data.train_records)
    data.split_info["prior"] = {"run": str(prior_dir.resolve()), "shared_training_cases": shared}
    if oof:
        data.split_info["prior"]["oof_runs"] = [str(d.resolve()) for d in oof_sources]
    if shared:
        ctx.log(
            f"[yellow]warning:[/] the prior run trained on {shared} of these training cases: its maps are better on "
            "them than on new images, and the model may learn to trust them too much (use out-of-fold priors)"
        )
    maps = []
    for rec in data.train_records:
        source = oof_sources[oof[str(rec.case_id)]] if oof else adapter.source
        prior = adapter.channels_from(source, load_sample(rec).image)
        maps.append(resize_tensor(torch.from_numpy(prior)[None], tuple(data.train.images.shape[-2:]))[0])
    data.train.images = torch.cat([data.train.images, torch.stack(maps)], dim=1)
