"""The architecture's seams: typed run descriptions (old folders too), inferers, samplers, input
adapters (text pseudo-labelling, cascade ensembles, CPS on a text model), named loss terms."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from covseg.errors import CovsegError
from covseg.inference.predictor import Predictor
from covseg.training.config import load_config
from covseg.training.trainer import build_trainer

from tests.helpers import phantom_dataset, tiny_config

OLD_RUN = Path(__file__).resolve().parents[1] / "assets" / "run_v0_1"  # written by covseg 0.1 before the typed description


def _covseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "covseg.cli.main", *map(str, args)], capture_output=True, text=True)


# ----------------------------------------------------------------------------------- run descriptions


def test_a_run_folder_of_the_previous_format_loads_and_predicts_as_before(tmp_path):
    run = tmp_path / "old"
    shutil.copytree(OLD_RUN, run)
    desc = json.loads((run / "model.json").read_text())
    assert "format" not in desc and "inferer" not in desc  # really the old format
    predictor = Predictor.from_run(run)
    assert predictor.description.format == 1 and predictor.segmenter.inferer.describe() == {"name": "resize", "params": {"size": [32, 32]}}
    image = np.load(run / "probe_image.npy")
    expected = np.load(run / "probe_probs.npy")  # what covseg 0.1 predicted from this folder
    np.testing.assert_allclose(predictor.predict_image(image).probs, expected, atol=1e-6)
    out = tmp_path / "pred"
    from covseg.data.imageio import write_image

    write_image(tmp_path / "in" / "x.png", image)
    proc = _covseg("predict", "-m", run, "-i", tmp_path / "in", "-o", out, "-q")
    assert proc.returncode == 0, proc.stderr
    assert (out / "masks" / "x.png").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"preprocessing": {"std": [0.0]}}, "std must be > 0"),
        ({"threshold": 1.5}, "threshold must lie in (0, 1)"),
        ({"num_classes": 3, "class_names": None}, "out_channels=1"),
        ({"class_names": ["a", "b", "c"]}, "class_names"),
        ({"preprocessing": {"window": [100, -100]}}, "low < high"),
    ],
)
def test_impossible_run_descriptions_are_one_line_errors(tmp_path, edit, message):
    run = tmp_path / "bad"
    shutil.copytree(OLD_RUN, run)
    desc = json.loads((run / "model.json").read_text())
    for key, value in edit.items():
        desc[key] = {**desc[key], **value} if isinstance(value, dict) else value
    (run / "model.json").write_text(json.dumps(desc))
    with pytest.raises(CovsegError) as err:
        Predictor.from_run(run)
    text = str(err.value)
    assert message in text and "model.json" in text and "\n" not in text


def test_description_round_trips_through_model_json(tmp_path):
    data = phantom_dataset(tmp_path / "data", n=12, size=48)
    run = tmp_path / "run"
    build_trainer(load_config(raw=tiny_config(data, size=48, epochs=1)), run, quiet=True).fit()
    from covseg.runs import RunDescription, RunFolder

    desc = RunFolder(run).description()
    assert isinstance(desc, RunDescription) and desc.format == 2
    assert desc.inferer.name == "resize" and desc.inferer.params == {"size": [48, 48]}
    assert RunDescription.from_dict(desc.to_dict()) == desc


# ------------------------------------------------------------------------------------------- inferers


def test_sliding_window_inferer_equals_monai_on_the_same_model_and_input():
    from monai.inferers import sliding_window_inference

    from covseg.engine.inferers import SlidingWindowInferer
    from covseg.models import build_model

    torch.manual_seed(0)
    model = build_model("unet", in_channels=1, out_channels=1, base_width=4, depth=2).eval()
    x = torch.randn(1, 70, 90)
    inferer = SlidingWindowInferer(roi_size=(32, 32), overlap=0.5, mode="gaussian", sw_batch_size=3)
    with torch.no_grad():
        ours = inferer(lambda batch, contexts: model(batch), [x])[0]
        ref = sliding_window_inference(x[None], (32, 32), 3, model, overlap=0.5, mode="gaussian")[0]
    assert ours.shape == (1, 70, 90)
    torch.testing.assert_close(ours, torch.as_tensor(ref), rtol=0, atol=0)


def test_resize_inferer_restores_each_input_size_and_batches_equal_shapes():
    from covseg.engine.inferers import ResizeInferer, SliceInferer

    calls = []

    def forward(batch, contexts):
        calls.append((tuple(batch.shape), [c.get("k") for c in contexts]))
        return batch.mean(dim=1, keepdim=True)

    inputs = [torch.rand(1, 40, 30), torch.rand(1, 50, 60), torch.rand(1, 20, 20)]
    out = ResizeInferer((32, 32))(forward, inputs, [{"k": i} for i in range(3)], batch_size=2)
    assert [tuple(o.shape) for o in out] == [(1, 40, 30), (1, 50, 60), (1, 20, 20)]
    assert calls == [((2, 1, 32, 32), [0, 1]), ((1, 1, 32, 32), [2])]
    calls.clear()
    volume = torch.rand(1, 5, 24, 28)  # (C, D, H, W): a 2D network slice by slice
    out3d = SliceInferer(ResizeInferer((16, 16)))(forward, [volume], [{"k": 9}], batch_size=4)
    assert tuple(out3d[0].shape) == (1, 5, 24, 28) and [c[0][0] for c in calls] == [4, 1]


# --------------------------------------------------------------------------------------------- samplers


def test_patch_sampler_oversamples_foreground(tmp_path):
    from covseg.training.cache import CaseCache
    from covseg.training.sampling import PatchSampler
    from covseg.transforms.augment import AugmentConfig

    rng = np.random.default_rng(0)
    cases = []
    for _ in range(6):  # 96² images with one small lesion each: a random 32² patch rarely holds it
        label = np.zeros((96, 96), np.uint8)
        y, x = rng.integers(5, 85, size=2)
        label[y : y + 6, x : x + 6] = 1
        cases.append((rng.normal(size=(1, 96, 96)).astype(np.float32), label))
    records = [type("R", (), {"case_id": f"c{i}", "image": tmp_path / f"c{i}", "mask": None, "masks": {}})() for i in range(6)]
    cache = CaseCache.build(records, lambda r: cases[int(r.case_id[1:])], {"test": 1}, 1, root=tmp_path / "cache")
    assert len(cache) == 6 and (cache.folder / "manifest.json").exists()
    again = CaseCache.build(records, lambda r: pytest.fail("a complete cache is not rebuilt"), {"test": 1}, 1, root=tmp_path / "cache")
    assert again.folder == cache.folder
    no_aug = AugmentConfig(hflip=0, rotate_deg=0, scale=(1, 1), brightness=0, contrast=0, p_spatial=0)

    def fg_share(fraction: float) -> tuple[float, float]:
        sampler = PatchSampler(cache, (32, 32), batch_size=8, augment=no_aug, foreground_fraction=fraction, batches_per_epoch=40)
        gen = torch.Generator().manual_seed(1)
        forced, free = [], []
        for idx in sampler.batches(gen):
            batch = sampler.batch(idx, gen)
            has = (batch["mask"].flatten(1).amax(1) > 0).tolist()
            flags = sampler.forced_foreground(len(idx))
            forced += [h for h, f in zip(has, flags) if f]
            free += [h for h, f in zip(has, flags) if not f]
        assert batch["image"].shape == (8, 1, 32, 32)
        return (np.mean(forced) if forced else float("nan")), (np.mean(free) if free else 0.0)

    forced, free = fg_share(0.5)
    assert forced == 1.0  # every forced patch holds its case's lesion
    assert free < 0.4  # a random patch mostly misses it
    forced0, free0 = fg_share(0.0)
    assert np.isnan(forced0) and free0 < 0.4


def test_patch_training_from_a_config_validates_with_a_sliding_window(tmp_path):
    data = phantom_dataset(tmp_path / "data", n=12, size=64)
    cfg = tiny_config(data, epochs=1, preprocess__size=None, sampler={"name": "patches", "patch_size": [32, 32], "batches_per_epoch": 3})
    cfg["sampler"]["cache_dir"] = str(tmp_path / "cache")
    run = tmp_path / "run"
    build_trainer(load_config(raw=cfg), run, quiet=True).fit()
    desc = json.loads((run / "model.json").read_text())
    assert desc["inferer"]["name"] == "sliding_window" and desc["inferer"]["params"]["roi_size"] == [32, 32]
    pred = Predictor.from_run(run).predict_image(np.full((70, 50), 90.0, np.float32))
    assert pred.probs.shape == (70, 50)


# ------------------------------------------------------------------------------------ input adapters


@pytest.mark.slow  # a text run, then three `covseg pseudo-label` subprocesses
def test_pseudo_labelling_a_text_run_feeds_the_text(tmp_path):
    from tests.text.test_text_sources import make_folder_json, text_config

    root, _, _ = make_folder_json(tmp_path / "data")
    run = tmp_path / "run"
    build_trainer(load_config(raw=text_config(root, epochs=1, text={"encoder": "embedding"})), run, quiet=True).fit()
    images = root / "images"
    out_a, out_b = tmp_path / "pa", tmp_path / "pb"
    no_text = _covseg("pseudo-label", "-m", run, "-i", images, "-o", tmp_path / "none", "-q")
    assert no_text.returncode == 1 and "no text for this image" in no_text.stderr  # not silently image-only
    a = _covseg("pseudo-label", "-m", run, "-i", images, "-o", out_a, "--text", "opacity in the left lung", "-q")
    b = _covseg("pseudo-label", "-m", run, "-i", images, "-o", out_b, "--text", "opacity in the right lung", "-q")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    conf_a = (out_a / "confidence.csv").read_text()
    conf_b = (out_b / "confidence.csv").read_text()
    assert conf_a != conf_b  # the text reached the model
    predictor = Predictor.from_run(run)
    image = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(next(images.iterdir())).convert("L"), np.float32)
    left = predictor.predict_image(image, text="opacity in the left lung").probs
    right = predictor.predict_image(image, text="opacity in the right lung").probs
    assert not np.allclose(left, right)


def test_ensemble_of_an_image_only_run_and_a_cascade_run(tmp_path):
    from covseg.inference.ensemble import EnsemblePredictor

    data = phantom_dataset(tmp_path / "data", n=12, size=48)
    binary = tmp_path / "binary"
    build_trainer(load_config(raw=tiny_config(data, size=48, epochs=1)), binary, quiet=True).fit()
    mc = dict(data__mask="multiclass", data__num_classes=3, model__name="unet_multiclass", loss__main="dice_ce")
    plain = tmp_path / "plain"
    build_trainer(load_config(raw=tiny_config(data, size=48, epochs=1, **mc)), plain, quiet=True).fit()
    cascade = tmp_path / "cascade"
    cfg = tiny_config(data, size=48, epochs=1, data__prior_run=str(binary), **mc)
    cfg["model"]["params"]["prior_channel"] = True
    build_trainer(load_config(raw=cfg), cascade, quiet=True).fit()
    members = [Predictor.from_run(plain), Predictor.from_run(cascade)]
    assert members[1].segmenter.adapter("prior") is not None and members[0].segmenter.adapters == []
    ensemble = EnsemblePredictor.from_runs([plain, cascade])
    image = np.random.default_rng(0).integers(0, 255, size=(40, 52)).astype(np.float32)
    got = ensemble.predict_image(image)
    parts = [m.predict_image(image).probs for m in members]
    assert got.probs.shape == (3, 40, 52)
    np.testing.assert_allclose(got.probs, (parts[0] + parts[1]) / 2, atol=1e-6)


def test_cps_trains_a_text_guided_model(tmp_path):
    from tests.text.test_text_sources import make_folder_json, text_config

    root, _, _ = make_folder_json(tmp_path / "data")
    unlabelled = phantom_dataset(tmp_path / "u", n=6, size=32)
    raw = text_config(root, epochs=1, text={"encoder": "embedding"})
    raw["trainer"] = "cps"
    raw["semi"] = {"unlabeled": {"root": str(unlabelled)}, "cps": {"rampup_epochs": 0}}
    trainer = build_trainer(load_config(raw=raw), tmp_path / "run", quiet=True)
    trainer.fit()
    assert trainer.text_adapter is not None and np.isfinite(trainer.history[-1]["train_cps"])
    desc = json.loads((tmp_path / "run" / "model.json").read_text())
    assert desc["trainer"] == "cps" and desc["text"]["input"] == "features"


# ------------------------------------------------------------------------------------- loss terms


def test_named_loss_terms_equal_the_classic_loss_fields(tmp_path):
    data = phantom_dataset(tmp_path / "data", n=12, size=48)
    classic = tiny_config(data, size=48, epochs=1, loss={"main": "dice_bce", "aux_weight": 0.0})
    terms = tiny_config(data, size=48, epochs=1)
    terms["loss"] = {"terms": {"main": "dice_bce"}}
    build_trainer(load_config(raw=classic), tmp_path / "a", quiet=True).fit()
    build_trainer(load_config(raw=terms), tmp_path / "b", quiet=True).fit()
    wa = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)["model_state"]
    wb = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)["model_state"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(CovsegError, match="not both"):
        load_config(raw={**terms, "loss": {"terms": {"seg": "dice"}, "edge_weight": 1.0}})


def test_loss_terms_weights_lists_values_and_partial_targets():
    from covseg.losses import build_loss_terms

    terms = build_loss_terms({"seg": "bce", "aux": {"loss": "bce", "weight": [0.5, 0.0]}, "align": {"loss": "value", "weight": 0.1}})
    logits = torch.zeros(2, 1, 4, 4, requires_grad=True)
    outputs = {"logits": logits, "aux": [torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)], "align_loss": torch.tensor(2.0)}
    mask = torch.ones(2, 1, 4, 4)
    total, parts = terms(outputs, {"mask": mask})
    assert set(parts) == {"seg", "aux0", "align", "total"}
    assert total.item() == pytest.approx(np.log(2) + 0.5 * np.log(2) + 0.2, abs=1e-6)
    # a sample without a mask does not touch the mask terms; no sample with one → zero gradient
    total, _ = terms({"logits": logits}, {"mask": mask, "has_mask": torch.tensor([False, False])})
    total.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) == 0.0
