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
    alone = [m.predict_outputs(images) for m in members]
    assert all(a.class_probs is not None for a in alone)
    out = ensemble.predict_outputs(images)
    assert out.class_probs is not None and len(out.class_probs) == 2
    for i in range(2):
        expected = (alone[0].class_probs[i].astype(np.float64) + alone[1].class_probs[i]) / 2
        np.testing.assert_allclose(out.class_probs[i], expected, rtol=1e-6)
        np.testing.assert_array_equal(out.probs[i], ((alone[0].probs[i] + alone[1].probs[i]) / 2).astype(np.float32))
        assert not np.allclose(alone[0].class_probs[i], alone[1].class_probs[i])  # two different members
    # the soft maps are what predict_arrays gave before: the members' maps summed, then divided
    np.testing.assert_array_equal(ensemble.predict_arrays(images)[0], out.probs[0])
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

