"""One prediction path: ensembles of joint runs, the one CT window rule, and the options objects of the API."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covseg.models import build_model

SMALL = {
    "encoder_kwargs": {"widths": [8, 8, 16, 16, 32]}, "decoder_widths": [16, 16, 8, 8], "attention_channels": 8, "deep_supervision": True,
}


def _joint_predictor(seed: int):
    from covseg.engine.segmenter import Segmenter
    from covseg.inference.predictor import Predictor
    from covseg.transforms.preprocess import Preprocessing

    torch.manual_seed(seed)
    model = build_model("jcs", in_channels=1, **SMALL).eval()
    return Predictor(Segmenter(model, Preprocessing(size=(32, 32)), 1))


def test_an_ensemble_of_joint_runs_averages_class_probabilities_too():
    from covseg.inference.ensemble import EnsemblePredictor

    members = [_joint_predictor(0), _joint_predictor(1)]
    ensemble = EnsemblePredictor(members)
    images = [np.random.default_rng(i).integers(0, 255, (32 + 8 * i, 40)).astype(np.float32) for i in range(2)]
    alone = [m._outputs(images) for m in members]
    assert all(a.class_probs is not None for a in alone)
    out = ensemble._outputs(images)
    assert out.class_probs is not None and len(out.class_probs) == 2
    for i in range(2):
        expected = (alone[0].class_probs[i].astype(np.float64) + alone[1].class_probs[i]) / 2
        np.testing.assert_allclose(out.class_probs[i], expected, rtol=1e-6)
        np.testing.assert_array_equal(out.probs[i], ((alone[0].probs[i] + alone[1].probs[i]) / 2).astype(np.float32))
        assert not np.allclose(alone[0].class_probs[i], alone[1].class_probs[i])  # two different members
    # the soft maps are the members' maps summed, then divided: the same bit for bit when asked again
    np.testing.assert_array_equal(ensemble._outputs(images).probs[0], out.probs[0])
    pred = ensemble.predict_image(images[0])
    assert ensemble.class_names == ["class0", "class1"]
    np.testing.assert_allclose(pred.class_probs, out.class_probs[0], rtol=1e-6)
    assert pred.class_probs.sum() == pytest.approx(1.0, abs=1e-5)


def test_the_ct_window_is_written_once_and_read_everywhere():
    from covseg.data import convert, synthetic
    from covseg.data.intensity import LUNG_WINDOW, hu_window, to_unit
    from covseg.inference.predictor import DEFAULT_CT_WINDOW
    from covseg.runs.description import VolumeSpec
    from covseg.transforms import volume

    assert hu_window() == LUNG_WINDOW == (-1250.0, 250.0)
    assert hu_window((-160, 240)) == (-160.0, 240.0)
    for other in (convert.WINDOWS["lung"], synthetic.LUNG_WINDOW, VolumeSpec().window, volume.VolumePlan().window, DEFAULT_CT_WINDOW):
        assert tuple(other) == LUNG_WINDOW
    hu = np.array([-1250.0, -500.0, 250.0, 1000.0])
    np.testing.assert_allclose(to_unit(hu, "hu"), [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(to_unit(hu, "hu", (-1000.0, 0.0)), [0.0, 0.5, 1.0, 1.0])


ZOO_CT = "covid-ct-infection"


def _png(path, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = (rng.random((48, 40)) * 120).astype(np.uint8)
    img[12:30, 8:24] = 210
    Image.fromarray(img).save(path)
    return img


def test_predictor_input_levels_array_file_and_folder_agree(tmp_path):
    """predict_array, predict_file and predict_folder are one path: the same soft map and mask."""
    from PIL import Image

    from covseg.inference.options import PredictOptions
    from covseg.inference.predictor import Predictor
    from covseg.runs.packing import resolve_run_dir

    image = _png(tmp_path / "scan.png")
    predictor = Predictor.from_run(resolve_run_dir(ZOO_CT), device="cpu")
    options = PredictOptions(tta=True, largest=1)
    by_array = predictor.predict_array(image, options=options)
    by_file = predictor.predict_file(tmp_path / "scan.png", options)
    assert by_file.space == "display" and not by_file.is_volume
    np.testing.assert_array_equal(by_file.prediction.probs, by_array.probs)
    np.testing.assert_array_equal(by_file.labels, by_array.labels)
    assert by_array.probs.shape == image.shape and 0 < by_array.labels.sum() < image.size
    report = predictor.predict_folder(tmp_path / "scan.png", tmp_path / "out", options)
    assert len(report.written) == 1 and not report.failed
    mask = np.asarray(Image.open(report.written[0]["mask"]))
    np.testing.assert_array_equal(mask, by_array.labels.astype(np.uint8) * 255)
    assert report.written[0]["foreground_fraction"] == pytest.approx(float(by_array.labels.mean()))


def test_api_predict_takes_one_options_object_or_its_fields(tmp_path):
    from covseg.api import predict
    from covseg.errors import ConfigError
    from covseg.inference.options import PredictOptions

    _png(tmp_path / "a.png", 1)
    by_object = predict(ZOO_CT, tmp_path / "a.png", tmp_path / "o1", PredictOptions(overlays=False, device="cpu", min_size=5))
    by_fields = predict(ZOO_CT, tmp_path / "a.png", tmp_path / "o2", overlays=False, device="cpu", min_size=5)
    for name in ("masks/a.png", "probs/a.png"):
        assert (tmp_path / "o1" / name).read_bytes() == (tmp_path / "o2" / name).read_bytes()
    assert not (tmp_path / "o1" / "overlays").exists() or not any((tmp_path / "o1" / "overlays").iterdir())
    assert by_object.written[0]["foreground_fraction"] == by_fields.written[0]["foreground_fraction"]
    assert PredictOptions(tta_axes=(0, 2)).tta_flip == (0, 2) and PredictOptions(tta=True).tta_flip is True
    assert PredictOptions(lungs_only=True).post.lung_margin_mm == 15.0
    with pytest.raises(ConfigError, match=r"--lung-margin: 3.0 needs --lungs-only"):
        PredictOptions(lung_margin_mm=3.0).checked()
    with pytest.raises(ConfigError, match=r"--tta-axes: '5': axes are 0, 1 or 2"):
        PredictOptions(tta_axes=(5,)).checked()


def test_api_evaluate_with_options_scores_the_dice_it_should(tmp_path):
    from covseg.api import evaluate
    from covseg.data.imageio import write_mask
    from covseg.errors import ConfigError
    from covseg.metrics.options import EvaluateOptions

    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    gt = np.zeros((32, 32), np.uint8)
    gt[8:24, 8:24] = 1  # 256 pixels
    pred = np.zeros_like(gt)
    pred[8:24, 8:16] = 1  # 128 pixels, all inside: Dice = 2·128 / (128 + 256)
    write_mask(tmp_path / "gt" / "c1.png", gt)
    write_mask(tmp_path / "pred" / "c1.png", pred)
    write_mask(tmp_path / "gt" / "c2.png", gt)
    write_mask(tmp_path / "pred" / "c2.png", gt)  # perfect
    events = []
    result = evaluate(tmp_path / "pred", tmp_path / "gt", EvaluateOptions(out=str(tmp_path / "e"), report=False, spacing="0.5"),
                      listener=lambda event, value: events.append((event, value)))  # fmt: skip
    dice = result.summary["metrics"]["dice"]
    assert dice["mean"] == pytest.approx((2 * 128 / 384 + 1.0) / 2) and dice["n"] == 2
    assert ("start", 2) in events and sorted(result.paths) == ["csv", "summary"]
    assert result.run.options["spacing"] == [0.5] and (tmp_path / "e" / "summary.json").is_file()
    assert EvaluateOptions(spacing="0.7x0.7,3", empty_distance="inf").checked().spacing == (0.7, 0.7, 3.0)
    assert EvaluateOptions(empty_distance="inf").checked().empty_distance == float("inf")
    with pytest.raises(ConfigError, match=r"--protocol: 'dice' is not one of medical, sod"):
        EvaluateOptions(protocol="dice").checked()
    with pytest.raises(ConfigError, match=r"--spacing: '0.5,abc' is not a list of numbers"):
        EvaluateOptions(spacing="0.5,abc").checked()


def test_a_2d_run_on_a_volume_goes_through_the_slices_inferer_and_matches_slice_by_slice(monkeypatch):
    """Predictor._volume_probabilities of a 2D run = its slices predicted one by one as 2D images (the old path)."""
    from covseg.engine.inferers import SliceInferer
    from covseg.inference.predictor import Predictor
    from covseg.runs.packing import resolve_run_dir
    from covseg.transforms.orientation import slices_to_volume, volume_to_slices

    rng = np.random.default_rng(3)
    volume = rng.normal(-700, 300, (40, 36, 3)).astype(np.float32)
    volume[8:24, 6:18, :] = 40.0
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    predictor = Predictor.from_run(resolve_run_dir(ZOO_CT), device="cpu")
    calls = []
    original = SliceInferer.__call__
    monkeypatch.setattr(SliceInferer, "__call__", lambda self, *a, **k: calls.append(self.inner) or original(self, *a, **k))
    probs = predictor._volume_probabilities(volume, affine, tta_flip=True, batch_size=2, space="hu")
    assert calls == [predictor.segmenter.inferer]  # the registered inferer, around the run's own resize inferer
    one_by_one = predictor._outputs(list(volume_to_slices(volume, affine)), tta_flip=True, batch_size=2, space="hu").probs
    np.testing.assert_array_equal(probs, slices_to_volume(np.stack(one_by_one), affine))  # bit for bit
    assert probs.shape == volume.shape and probs.min() >= 0.0 and probs.max() <= 1.0
