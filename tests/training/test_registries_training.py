"""Samplers, optimisers and learning-rate schedules are registry entries: a toy one registered from
this file is taken by name from the config and trains, with no covseg module touched."""

from __future__ import annotations

import math

import pytest
import torch

from covseg.errors import ConfigError
from covseg.registry import OPTIMISERS, SAMPLERS, SCHEDULES
from covseg.training.config import load_config
from covseg.training.sampling import ImageSampler, SamplerRequest
from covseg.training.trainer import build_trainer

from tests.helpers import phantom_dataset, tiny_config


class InOrderSampler(ImageSampler):
    """Toy sampler: the training cases in file order (no shuffling), recording each batch it gives."""

    given: list[list[int]] = []

    @classmethod
    def from_request(cls, request: SamplerRequest) -> InOrderSampler:
        return cls(request.data, request.batch_size, request.augment, request.variants, request.min_batch)

    def batches(self, generator):
        for start in range(0, len(self.data), self.batch_size):
            idx = torch.arange(start, min(start + self.batch_size, len(self.data)))
            InOrderSampler.given.append(idx.tolist())
            yield idx


class CountingSGD(torch.optim.SGD):
    """Toy optimiser: plain SGD that counts its steps."""

    def __init__(self, params, lr: float) -> None:
        super().__init__(params, lr=lr)
        self.steps = 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)


@pytest.fixture
def toys():
    SAMPLERS.register("toy_in_order", InOrderSampler)
    OPTIMISERS.register("toy_sgd", lambda params, cfg: CountingSGD(params, cfg.lr))
    SCHEDULES.register("toy_half", lambda t, power: 0.5)
    InOrderSampler.given = []
    yield
    SAMPLERS.unregister("toy_in_order")
    OPTIMISERS.unregister("toy_sgd")
    SCHEDULES.unregister("toy_half")


def test_toy_sampler_optimiser_and_schedule_train_one_epoch_from_the_config(tmp_path, toys):
    data = phantom_dataset(tmp_path / "data", n=12, size=32)
    raw = tiny_config(data, size=32, epochs=1, train__batch_size=4, train__val_every=1)
    raw["sampler"] = {"name": "toy_in_order"}
    raw["optim"] = {"name": "toy_sgd", "lr": 0.01}
    raw["schedule"] = {"name": "toy_half"}
    trainer = build_trainer(load_config(raw=raw), tmp_path / "run", quiet=True)
    trainer.setup()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert isinstance(trainer.sampler, InOrderSampler)
    assert isinstance(trainer.optimizer, CountingSGD)
    n_train = len(trainer.train_data)
    trainer.start_epoch = 0
    parts = trainer.train_epoch(0, lambda info: None)
    steps = math.ceil(n_train / 4)
    # the toy sampler's batches, in order, each one optimiser step at half the base rate
    assert InOrderSampler.given == [list(range(s, min(s + 4, n_train))) for s in range(0, n_train, 4)]
    assert trainer.optimizer.steps == steps == trainer.steps_per_epoch
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.005)
    assert math.isfinite(parts["loss"])
    changed = [k for k, v in trainer.model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed


@pytest.mark.parametrize("section", ["sampler", "optim", "schedule"])
def test_an_unknown_name_is_one_line_naming_the_known_ones(tmp_path, section):
    raw = tiny_config(tmp_path / "data", size=32, epochs=1)
    raw[section] = {**raw.get(section, {}), "name": "no_such_thing"}
    with pytest.raises(ConfigError) as err:
        load_config(raw=raw)
    message = str(err.value)
    assert "no_such_thing" in message and "known:" in message
    known = {"sampler": "patches", "optim": "sgd", "schedule": "cosine"}[section]
    assert known in message


def test_a_registry_read_from_two_threads_at_once_sees_its_built_ins_in_both(monkeypatch):
    """The second thread waits for the first one's imports instead of reading an empty registry (two
    benchmark folds loading their configs at once failed with "unknown optimiser 'adamw'; known: ")."""
    import threading
    import time

    from covseg import builtins
    from covseg.registry import Registry

    reg: Registry = Registry("toy")

    def slow_load(kind: str) -> None:
        time.sleep(0.3)  # the imports take a while; the other thread asks meanwhile
        reg.register("a", object())
        assert "a" in reg  # re-entry from the importing thread returns at once

    monkeypatch.setattr(builtins, "load", slow_load)
    seen: list[list[str]] = []
    threads = [threading.Thread(target=lambda: seen.append(reg.names())) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert seen == [["a"], ["a"]]
