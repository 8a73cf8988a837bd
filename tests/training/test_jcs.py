"""Joint classification + segmentation (jcs, classification heads): mixed supervision, export, checks, inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covseg.errors import ConfigError
from covseg.losses.terms import build_loss_terms
from covseg.models import build_model
from covseg.models.export import ONNX_INPUT, export_onnx

from tests.helpers import tiny_config

SMALL = {
    "encoder_kwargs": {"widths": [8, 8, 16, 16, 32]}, "decoder_widths": [16, 16, 8, 8], "attention_channels": 8, "deep_supervision": True,
}
TERMS = {"seg": "dice_bce", "aux": {"loss": "dice_bce", "weight": 0.4}, "cls": {"loss": "class_ce", "weight": 0.5}}


def _batch(has_mask: list[bool]) -> dict:
    g = torch.Generator().manual_seed(0)
    n = len(has_mask)
    mask = (torch.rand(n, 1, 32, 32, generator=g) > 0.7).float()
    return {
        "image": torch.randn(n, 1, 32, 32, generator=g, requires_grad=True),
        "mask": mask,
        "label": torch.tensor([1] * n),
        "has_mask": torch.tensor(has_mask),
    }


def test_label_only_sample_leaves_the_segmentation_loss_gradient_at_zero():
    torch.manual_seed(0)
    model = build_model("jcs", in_channels=1, **SMALL).eval()  # eval: batch norm couples no samples
    terms = build_loss_terms(TERMS)
    seg_terms = build_loss_terms({k: v for k, v in TERMS.items() if k != "cls"})

    batch = _batch([True, False, True])
    out = model.forward_train(batch["image"])
    seg_loss, _ = seg_terms(out, batch)
    (grad,) = torch.autograd.grad(seg_loss, batch["image"])
    assert float(grad[1].abs().max()) == 0.0  # the label-only sample gets no gradient from seg and aux
    assert float(grad[0].abs().max()) > 0.0 and float(grad[2].abs().max()) > 0.0

    # its mask placeholder does not matter: another mask gives the same segmentation loss
    other = dict(batch, mask=batch["mask"].clone())
    other["mask"][1] = 1.0 - other["mask"][1]
    assert float(seg_terms(out, other)[0].detach()) == pytest.approx(float(seg_loss.detach()))

    only = _batch([False, False])
    out = model.forward_train(only["image"])
    total, parts = terms(out, only)
    assert parts["seg"] == 0.0 and parts["aux0"] == 0.0 and parts["cls"] > 0.0
    seg_grads = torch.autograd.grad(seg_terms(out, only)[0], list(model.parameters()), allow_unused=True, retain_graph=True)
    assert all(g is None or float(g.abs().max()) == 0.0 for g in seg_grads)
    total.backward()
    assert float(model.heads["classification"].linear.weight.grad.abs().sum()) > 0  # the class term still trains


def test_export_keeps_forward_one_segmentation_tensor(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build_model("jcs", in_channels=1, **SMALL).eval()
    x = torch.randn(2, 1, 64, 80)
    with torch.no_grad():
        named = model.forward_heads(x)
        expected = model(x)
    assert torch.equal(named["logits"], expected) and named["class_logits"].shape == (2, 2)
    session = ort.InferenceSession(str(export_onnx(model, tmp_path / "jcs.onnx", method="torchscript")))
    assert [o.name for o in session.get_outputs()] == ["logits"]
    (got,) = session.run(None, {ONNX_INPUT: x.numpy()})
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=1e-4)


def test_heads_are_registry_entries_and_bad_settings_are_refused():
    from covseg.registry import HEADS

    assert "classification" in HEADS
    with pytest.raises(ValueError, match="classes counts the negative class"):
        build_model("unet", in_channels=1, base_width=8, depth=3, heads={"classification": {"classes": 1}})
    with pytest.raises(ValueError, match="pooling"):
        build_model("unet", in_channels=1, base_width=8, depth=3, heads={"classification": {"pooling": "median"}})
    with pytest.raises(ValueError, match="head 'classification'"):
        build_model("unet", in_channels=1, base_width=8, depth=3, heads={"classification": {"colour": 1}})
    with pytest.raises(ConfigError, match="unknown head"):
        build_model("unet", in_channels=1, base_width=8, depth=3, heads={"detector": {}})


def test_trainer_refuses_joint_setups_that_would_train_something_else(tmp_path):
    from covseg.data.synthetic import write_phantom_dataset
    from covseg.engine.runtime import Runtime
    from covseg.training.config import load_config
    from covseg.training.trainer import build_trainer

    data = write_phantom_dataset(tmp_path / "data", n=8, size=32, seed=1, negatives=0.5)
    joint = {"name": "jcs", "params": SMALL}

    def setup(**over):
        cfg = load_config(raw=tiny_config(data, size=32, data__folds=2, **over))
        trainer = build_trainer(cfg, tmp_path / "run", quiet=True)
        trainer.runtime = Runtime.create("cpu")  # what setup() makes before the data
        trainer.setup_data()
        trainer.setup_model()
        return trainer

    with pytest.raises(ConfigError, match="no loss term reads class_logits"):
        setup(model=joint)
    with pytest.raises(ConfigError, match="need a model with a classification head"):
        setup(data__labels=str(data / "labels.csv"))
    with pytest.raises(ConfigError, match="head has 2 classes but the labels have 3"):
        setup(model=joint, loss={"terms": TERMS}, data__label_names=["none", "ggo", "consolidation"])
    trainer = setup(model=joint, loss={"terms": TERMS}, data__labels=str(data / "labels.csv"))
    assert trainer.joint.class_names == ["negative", "positive"]
    assert trainer.joint.describe()["labels"] == str(data / "labels.csv")
    assert trainer.joint.dataset["sources"] == {"csv": 4} and sum(trainer.joint.dataset["per_class"].values()) == 4


def test_class_probabilities_of_windows_and_flips_follow_the_most_positive_part():
    from covseg.engine.inferers import SlidingWindowInferer
    from covseg.engine.segmenter import Segmenter, most_positive
    from covseg.transforms.preprocess import Preprocessing, resize_tensor

    logits = [torch.tensor([2.0, 0.0]), torch.tensor([-1.0, 1.0]), torch.tensor([0.0, 0.5])]
    np.testing.assert_allclose(most_positive(logits), torch.softmax(logits[1], 0).numpy(), rtol=1e-6)

    torch.manual_seed(0)
    model = build_model("jcs", in_channels=1, **SMALL).eval()
    pre = Preprocessing(size=(32, 32))
    images = [np.random.default_rng(i).integers(0, 255, (32 + 8 * i, 48)).astype(np.float32) for i in range(2)]
    whole = Segmenter(model, pre, 1).infer(images, batch_size=2)
    assert len(whole.class_probs) == 2 and all(p.shape == (2,) for p in whole.class_probs)
    for image, probs in zip(images, whole.class_probs):  # one image alone gives the same probabilities
        alone = Segmenter(model, pre, 1).infer([image]).class_probs[0]
        np.testing.assert_allclose(alone, probs, atol=1e-5)
    windows = Segmenter(model, pre, 1, inferer=SlidingWindowInferer((32, 32), overlap=0.5)).infer(images)
    assert [p.shape for p in windows.probs] == [im.shape for im in images]
    flipped = Segmenter(model, pre, 1).infer(images, tta_flip=True)
    x = resize_tensor(torch.from_numpy(pre.normalise(images[0]))[None], (32, 32))
    with torch.no_grad():
        both = 0.5 * (model.forward_heads(x)["class_logits"] + model.forward_heads(torch.flip(x, dims=[-1]))["class_logits"])
    np.testing.assert_allclose(flipped.class_probs[0], torch.softmax(both[0], 0).numpy(), atol=1e-4)
