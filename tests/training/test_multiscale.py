"""Multi-scale training (``train.multiscale_rates``, Inf-Net's ``MyTrain_LungInf.py``) on phantoms."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from covseg.errors import ConfigError
from covseg.models.unet import UNet
from covseg.training.config import load_config
from covseg.training.multiscale import BatchViews, resize_batch, scaled_size
from covseg.training.trainer import build_trainer

from tests.helpers import phantom_dataset, tiny_config

RATES = [0.75, 1.0, 1.25]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return phantom_dataset(tmp_path_factory.mktemp("ms") / "data", n=24, size=48, seed=4)


def _cfg(root: Path, epochs: int = 2, **over) -> dict:
    return tiny_config(root, size=48, epochs=epochs, **over)


def _fit(cfg: dict, run: Path, resume: bool = False, stop_after: int | None = None) -> dict:
    return build_trainer(load_config(raw=cfg), run, resume=resume, quiet=True).fit(stop_after=stop_after)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model_state"]


def test_sizes_follow_infnet_rounding():
    assert scaled_size((352, 352), 0.75) == (256, 256)  # Inf-Net's 352 training size: 256, 352, 448
    assert scaled_size((352, 352), 1.25) == (448, 448)
    assert scaled_size((48, 64), 0.75) == (32, 64)  # per side; round half to even as Python's round
    assert scaled_size((20, 20), 0.5) == (32, 32)  # never below one multiple
    assert scaled_size((64, 64), 0.75, multiple=16) == (48, 48)


def test_views_resize_maps_and_keep_rate_one_untouched():
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 2:6] = 1
    batch = {
        "image": torch.rand(2, 1, 8, 8),
        "mask": mask,
        "edge": mask.clone(),
        "label": torch.tensor([0, 1]),
    }
    views = BatchViews([0.5, 1.0, 2.0], multiple=4)
    out = list(views.views(batch))
    assert [tuple(v["image"].shape[-2:]) for v in out] == [(4, 4), (8, 8), (16, 16)]
    assert out[1] is batch  # rate 1: the batch itself (bit-identical steps)
    up = out[2]
    assert up["mask"].shape == up["edge"].shape == (2, 1, 16, 16)
    assert torch.equal(up["label"], batch["label"])
    ref = torch.nn.functional.interpolate(mask, size=(16, 16), mode="bilinear", align_corners=True)
    assert torch.equal(up["mask"], ref)  # bilinear with aligned corners, as Inf-Net
    assert float(up["mask"][(up["mask"] > 0) & (up["mask"] < 1)].numel()) > 0  # soft at the border
    classes = torch.tensor([[[0, 1], [2, 0]]])
    near = resize_batch({"image": torch.zeros(1, 1, 2, 2), "mask": classes}, (4, 4))["mask"]
    assert near.dtype == torch.long and set(near.unique().tolist()) == {0, 1, 2}
    assert torch.equal(near[0, :2, :2], torch.zeros(2, 2, dtype=torch.long))


def test_batches_arrive_at_the_three_sizes_and_the_model_learns(phantoms, tmp_path, monkeypatch):
    seen: list[tuple[int, ...]] = []
    original = UNet.forward_train

    def spy(self, x, **kwargs):
        seen.append(tuple(x.shape[-2:]))
        return original(self, x, **kwargs)

    monkeypatch.setattr(UNet, "forward_train", spy)
    cfg = _cfg(phantoms, epochs=12, train__multiscale_rates=RATES, optim__lr=5e-3)
    summary = _fit(cfg, tmp_path / "run")
    steps_per_epoch = 5  # 18 training cases in batches of 4
    assert len(seen) == 12 * steps_per_epoch * 3
    assert seen[:6] == [(32, 32), (48, 48), (64, 64)] * 2  # 0.75, 1, 1.25 of 48, rounded to 32
    assert summary["best_metric"] >= 0.6, summary


def test_resume_after_a_cut_is_exact(phantoms, tmp_path):
    cfg = _cfg(phantoms, epochs=2, train__multiscale_rates=RATES)
    _fit(cfg, tmp_path / "full")
    _fit(cfg, tmp_path / "part", stop_after=1)
    _fit(cfg, tmp_path / "part", resume=True)
    wf, wp = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert all(torch.equal(wf[k], wp[k]) for k in wf)


def test_rate_one_alone_is_the_plain_run_and_rates_change_training(phantoms, tmp_path):
    _fit(_cfg(phantoms, epochs=1), tmp_path / "off")
    _fit(_cfg(phantoms, epochs=1, train__multiscale_rates=[1.0]), tmp_path / "one")
    _fit(_cfg(phantoms, epochs=1, train__multiscale_rates=RATES), tmp_path / "on")
    off, one, on = (_weights(tmp_path / n) for n in ("off", "one", "on"))
    assert all(torch.equal(off[k], one[k]) for k in off)
    assert not all(torch.equal(off[k], on[k]) for k in off)


def test_infnet_with_edges_trains_at_every_size(phantoms, tmp_path):
    params = {
        "encoder_kwargs": {"widths": [8, 8, 16, 16, 32], "depths": [0, 1, 1, 1, 1]},
        "channel": 8,
        "ra_channels": 16,
        "edge_channels": 8,
    }
    cfg = _cfg(
        phantoms,
        epochs=1,
        data__edges=True,
        model={"name": "infnet", "params": params},
        loss={"main": "structure", "aux_weight": 1.0, "edge_weight": 1.0},
        train__multiscale_rates=RATES,
    )
    trainer = build_trainer(load_config(raw=cfg), tmp_path / "infnet", quiet=True)
    sizes = []
    criterion = None

    def spy(out, batch):
        sizes.append(
            (
                tuple(batch["edge"].shape[-2:]),
                tuple(batch["mask"].shape[-2:]),
                tuple(out["logits"].shape[-2:]),
            )
        )
        return criterion(out, batch)

    trainer.setup()
    criterion, trainer.criterion = trainer.criterion, spy
    trainer.setup = lambda: None  # keep the spy (setup already done)
    trainer.fit()
    assert sizes[:3] == [((s, s), (s, s), (s, s)) for s in (32, 48, 64)]  # edge and mask targets, logits
    assert len(sizes) == 3 * 5


def test_bad_rates_and_runs_it_does_not_fit_are_one_line_errors(phantoms, tmp_path):
    for rates, words in (([], "at least one"), ([0.0, 1.0], r"\(0, 4\]"), ([1.0, 1.0], "repeated")):
        with pytest.raises(ConfigError, match=words) as err:
            load_config(raw=_cfg(phantoms, train__multiscale_rates=rates))
        assert "\n" not in str(err.value)
    cfg = _cfg(phantoms, trainer="cps", train__multiscale_rates=RATES)
    cfg["semi"] = {"unlabeled": {"root": str(phantoms), "split": None}}
    with pytest.raises(ConfigError, match="trainer 'cps'"):
        build_trainer(load_config(raw=cfg), tmp_path / "cps", quiet=True).setup()
    unetr = _cfg(
        phantoms,
        model={
            "name": "unetr",
            "params": {"img_size": 48, "feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4},
        },
    )
    unetr["train"]["multiscale_rates"] = RATES
    with pytest.raises(ConfigError, match="one input size"):
        build_trainer(load_config(raw=unetr), tmp_path / "unetr", quiet=True).setup()


def test_volume_runs_are_refused(tmp_path):
    from covseg.data.synthetic3d import write_phantom_volumes

    root = write_phantom_volumes(tmp_path / "vol", 4, (32, 32, 16), (8.0, 8.0, 12.0), seed=1)
    cfg = {
        "data": {"root": str(root), "folds": 2, "fold": 0},
        "model": {
            "name": "monai_unet",
            "params": {"spatial_dims": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0},
        },
        "train": {"epochs": 1, "batch_size": 1, "threads": 1, "multiscale_rates": RATES},
        "sampler": {"name": "patches", "batches_per_epoch": 1, "cache_dir": str(tmp_path / "cache")},
    }
    with pytest.raises(ConfigError, match="volume patches"):
        build_trainer(load_config(raw=cfg), tmp_path / "run", quiet=True).setup()


def test_a_text_model_gets_its_text_at_every_size(tmp_path, monkeypatch):
    from covseg.models.lvit import LViT

    from tests.text.test_text_sources import make_folder_json, text_config

    root, _, _ = make_folder_json(tmp_path / "data")
    seen: list[tuple[tuple[int, ...], bool]] = []
    original = LViT.forward_train

    def spy(self, x, **kwargs):
        seen.append((tuple(x.shape[-2:]), kwargs.get("text_tokens") is not None))
        return original(self, x, **kwargs)

    monkeypatch.setattr(LViT, "forward_train", spy)
    raw = text_config(root, multiscale_rates=[0.5, 1.0, 2.0], multiscale_multiple=16)
    build_trainer(load_config(raw=raw), tmp_path / "run", quiet=True).fit()
    assert seen == [((16, 16), True), ((32, 32), True), ((64, 64), True)]  # 4 training cases: one batch
