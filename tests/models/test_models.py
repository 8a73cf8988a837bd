"""Shared model test class: every registered model configuration passes the same checks.

The segmentation_models_pytorch idea: one parametrised class over ``MODEL_CASES``; a new model
is covered by adding a case (``test_every_registered_model_has_a_case`` fails until one exists).
Configurations are small (narrow widths) so the class stays fast on two CPU cores; the real
defaults are exercised by ``test_default_configurations_build``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

from covseg.models import MODELS, build_model
from covseg.models.export import ONNX_INPUT, export_onnx

SIZES = [(64, 64), (67, 93), (128, 96)]
SIZES_3D = [(16, 16, 16), (17, 23, 19), (24, 16, 32)]


@dataclass(frozen=True)
class ModelCase:
    name: str
    kwargs: dict[str, Any]
    train_keys: frozenset[str]
    num_aux: int = 0
    #: parameters allowed to get no gradient from a loss over all outputs (documented why)
    no_grad_ok: frozenset[str] = field(default_factory=frozenset)

    @property
    def id(self) -> str:
        extra = ",".join(
            f"{k}={v}" for k, v in self.kwargs.items() if k in ("encoder", "esm", "prior_channel", "spatial_dims", "dual_backbone")
        )
        if "heads" in self.kwargs:
            extra = ",".join(filter(None, [extra, "heads=" + "+".join(self.kwargs["heads"]) if self.kwargs["heads"] else "heads=none"]))
        return f"{self.name}[{extra}]" if extra else self.name

    @property
    def sizes(self) -> list[tuple[int, ...]]:
        """Input sizes: square, odd (padded), non-square; 3D cases get volumes."""
        return SIZES_3D if self.kwargs.get("spatial_dims") == 3 else SIZES


SMALL_RESNET = {"widths": [8, 8, 16, 16, 32], "depths": [0, 1, 1, 1, 1]}

MODEL_CASES = [
    ModelCase("unet", {"base_width": 8, "depth": 3}, frozenset({"logits"})),
    ModelCase(
        "unet",
        {"encoder": "resnet", "encoder_kwargs": SMALL_RESNET, "decoder_widths": [16, 16, 8, 8]},
        frozenset({"logits"}),
    ),
    ModelCase("unet", {"base_width": 4, "depth": 3, "spatial_dims": 3}, frozenset({"logits"})),
    ModelCase("monai_unet", {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}, frozenset({"logits"})),
    ModelCase(
        "monai_unet",
        {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1, "spatial_dims": 3},
        frozenset({"logits"}),
    ),
    # the baselines of the seeds' comparison tables, as MONAI builds them (covseg.models.monai_baselines)
    ModelCase(
        "unetplusplus",
        {"features": [4, 4, 8, 8, 16, 4], "deep_supervision": True},
        frozenset({"logits", "aux"}),
        num_aux=3,
    ),
    ModelCase(
        "unetplusplus",
        {"features": [4, 4, 8, 8, 16, 4], "spatial_dims": 3},
        frozenset({"logits"}),
        # MONAI builds the three shallower nested heads even without deep supervision, and never uses them
        no_grad_ok=frozenset(f"net.final_conv_0_{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")),
    ),
    # the attention gate's psi convolution feeds a BatchNorm, which removes any constant: its bias gets no gradient
    *(
        ModelCase(
            "attention_unet", {"channels": [4, 8, 16], "strides": [2, 2], **dims}, frozenset({"logits"}),
            no_grad_ok=frozenset({"net.model.1.submodule.1.attention.psi.0.conv.bias"}),
        )
        for dims in ({}, {"spatial_dims": 3})
    ),
    ModelCase(
        "unetr",
        {"img_size": 32, "feature_size": 4, "hidden_size": 32, "mlp_dim": 64, "num_heads": 2, "spatial_dims": 3},
        frozenset({"logits"}),
        # MONAI's transformer blocks build a cross-attention norm that UNETR (self-attention only) never uses
        no_grad_ok=frozenset(f"net.vit.blocks.{i}.norm_cross_attn.{p}" for i in range(12) for p in ("weight", "bias")),
    ),
    ModelCase(
        "swin_unetr",
        {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 4, "norm": "batch", "spatial_dims": 3},
        frozenset({"logits"}),
    ),
    ModelCase(
        "unet_multiclass",
        {"out_channels": 3, "prior_channel": True, "base_width": 8, "depth": 3},
        frozenset({"logits"}),
    ),
    ModelCase(
        "resunet",
        {"widths": [8, 8, 16, 16, 32], "edge_channels": 8, "fusion_channels": 8},
        frozenset({"logits", "aux", "edge"}),
        num_aux=2,
    ),
    ModelCase(
        "resunet",
        {"widths": [8, 8, 16, 16, 32], "esm": False, "assm": False, "afm": False},
        frozenset({"logits"}),
    ),
    ModelCase(
        "resunet",
        {"encoder": "efficientnet-lite0", "edge_channels": 8, "fusion_channels": 8},
        frozenset({"logits", "aux", "edge"}),
        num_aux=2,
    ),
    ModelCase(
        "infnet",
        {"encoder_kwargs": SMALL_RESNET, "channel": 8, "ra_channels": 16, "edge_channels": 8},
        frozenset({"logits", "aux", "edge"}),
        num_aux=3,
    ),
    ModelCase(
        "infnet",
        {"encoder": "efficientnet-lite0", "channel": 8, "ra_channels": 16, "edge_channels": 8},
        frozenset({"logits", "aux", "edge"}),
        num_aux=3,
    ),
    # joint classification + segmentation (the other models with a head: test_every_model_takes_a_classification_head)
    ModelCase(
        "unet",
        {"base_width": 8, "depth": 3, "heads": {"classification": {"classes": 3}}},
        frozenset({"logits", "class_logits"}),
    ),
    ModelCase(
        "jcs",
        {"encoder_kwargs": SMALL_RESNET, "decoder_widths": [16, 16, 8, 8], "attention_channels": 8},
        frozenset({"logits", "attention", "class_logits"}),
    ),
    # JCS as published: dual backbone with stage fusion, EFM, AFF decoder, deep supervision at five scales
    ModelCase(
        "jcs",
        {
            "encoder_kwargs": SMALL_RESNET, "decoder_widths": [16, 16, 8, 8], "efm": True, "aff": True,
            "deep_supervision": True, "dual_backbone": True, "classification_encoder_kwargs": SMALL_RESNET,
        },
        frozenset({"logits", "aux", "class_logits"}),
        num_aux=4,
    ),
]


#: models of a fixed published size (far above these cases' 10 M parameters), tested in their own file
COVERED_ELSEWHERE = {
    "jcs_published": "tests/runs/test_weights_import_jcs.py (118 M parameters, the authors' network)",
    "c2fvl_published": "tests/runs/test_weights_c2fvl.py (40.5 M parameters, the authors' network; reads caption attributes)",
}


def make(case: ModelCase, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs = {"in_channels": 1, **case.kwargs}
    return build_model(case.name, **kwargs)


def make_input(model, batch: int, *spatial: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.input_channels, *spatial, generator=g)


def test_every_registered_model_has_a_case():
    from covseg.models.text_layers import (
        TextSegmentationModel,  # text-guided models: tests/models/test_text_models.py
    )

    image_only = {n for n in MODELS.names() if not issubclass(MODELS.get(n), TextSegmentationModel)}
    assert image_only <= {c.name for c in MODEL_CASES} | set(COVERED_ELSEWHERE)
    assert {"unet", "resunet", "infnet", "unet_multiclass"} <= set(MODELS.names())


@pytest.mark.parametrize(
    ("name", "kwargs", "expected_params"),
    [
        ("unet", {}, 1_963_809),
        ("unet_multiclass", {"out_channels": 3, "prior_channel": True}, 1_963_987),
        ("resunet", {}, 2_280_036),
        ("infnet", {}, 2_453_685),
        ("jcs", {}, 2_018_311),
    ],
)
def test_default_configurations_build(name, kwargs, expected_params, record_property):
    """The defaults build, run once, and keep their (reported) size; a change here is deliberate."""
    model = build_model(name, in_channels=1, **kwargs).eval()
    n = model.num_parameters()
    record_property("parameters", n)
    print(f"{name} {kwargs}: {n:,} trainable parameters")
    assert n == expected_params
    with torch.no_grad():
        y = model(torch.randn(1, model.input_channels, 64, 64))
    assert y.shape == (1, model.out_channels, 64, 64)


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: c.id)
class TestSegmentationModel:
    def test_forward_shapes(self, case: ModelCase):
        model = make(case).eval()
        for batch, size in zip((1, 2, 1), case.sizes):
            with torch.no_grad():
                y = model(make_input(model, batch, *size))
            assert y.shape == (batch, model.out_channels, *size)
            assert torch.isfinite(y).all()

    def test_forward_train_outputs(self, case: ModelCase):
        model = make(case).train()
        assert set(model.train_outputs) == case.train_keys
        assert model.num_aux == case.num_aux
        for size in case.sizes[:2]:
            h, w = size[-2:]
            out = model.forward_train(make_input(model, 2, *size))
            assert set(out) == case.train_keys
            assert out["logits"].shape == (2, model.out_channels, *size)
            aux = out.get("aux", [])
            assert len(aux) == case.num_aux
            for a in aux:
                assert a.shape[:2] == (2, model.out_channels)
                assert a.shape[-2] <= h and a.shape[-1] <= w
                assert torch.isfinite(a).all()
            if "edge" in out:
                assert out["edge"].shape[:2] == (2, 1)
                assert out["edge"].shape[-2] <= h and out["edge"].shape[-1] <= w
            for a in out.get("attention", []):
                assert a.shape[:2] == (2, 1) and float(a.detach().min()) >= 0 and float(a.detach().max()) <= 1
            if "class_logits" in out:
                classes = case.kwargs.get("heads", {}).get("classification", {}).get("classes", 2)
                assert out["class_logits"].shape == (2, classes)
            if size == case.sizes[1]:  # padded input: side outputs are cropped to the input's frame
                for a in [*aux, *out.get("attention", []), *([out["edge"]] if "edge" in out else [])]:
                    assert a.shape[-2:] == (h, w)

    def test_backward_reaches_every_parameter(self, case: ModelCase):
        model = make(case).train()
        out = model.forward_train(make_input(model, 2, *case.sizes[0]))
        loss = out["logits"].square().mean()
        for key in ("aux", "attention"):
            for a in out.get(key, []):
                loss = loss + a.square().mean()
        for key in ("edge", "class_logits"):
            if key in out:
                loss = loss + out[key].square().mean()
        loss.backward()
        missing, zero = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad or name in case.no_grad_ok:
                continue
            if p.grad is None:
                missing.append(name)
            else:
                assert torch.isfinite(p.grad).all(), name
                if not p.grad.abs().sum() > 0:
                    zero.append(name)
        assert not missing, f"parameters without gradient: {missing}"
        assert not zero, f"parameters with all-zero gradient: {zero}"

    def test_eval_is_deterministic(self, case: ModelCase):
        model = make(case).eval()
        x = make_input(model, 2, *case.sizes[1])
        with torch.no_grad():
            assert torch.equal(model(x), model(x))
            assert torch.equal(model(x), model.forward_train(x)["logits"])
            heads = model.forward_heads(x)
            assert torch.equal(model(x), heads["logits"])
            assert set(heads) == {"logits", *model.head_outputs}
            if "class_logits" in heads:
                assert torch.equal(heads["class_logits"], model.forward_train(x)["class_logits"])

    def test_rebuild_from_init_args(self, case: ModelCase):
        model = make(case, seed=0).train()
        with torch.no_grad():  # move the BatchNorm statistics away from their defaults
            model.forward_train(make_input(model, 2, *case.sizes[0]))
        init_args = json.loads(json.dumps(model.init_args))  # what a checkpoint can store
        rebuilt = build_model(case.name, **init_args)
        assert rebuilt.init_args == model.init_args
        rebuilt.load_state_dict(model.state_dict(), strict=True)
        model.eval()
        rebuilt.eval()
        x = make_input(model, 1, *case.sizes[1])
        with torch.no_grad():
            assert torch.equal(model(x), rebuilt(x))

    def test_parameter_count(self, case: ModelCase, record_property):
        model = make(case)
        n = model.num_parameters()
        record_property("parameters", n)
        assert n == sum(p.numel() for p in model.parameters())
        assert 1_000 < n < 10_000_000

    def test_onnx_export_matches_onnxruntime(self, case: ModelCase, tmp_path):
        self._check_onnx(case, tmp_path, "torchscript")

    @staticmethod
    def _check_onnx(case: ModelCase, tmp_path, method: str) -> None:
        ort = pytest.importorskip("onnxruntime")
        model = make(case).eval()
        path = export_onnx(model, tmp_path / "model.onnx", method=method)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no external data file
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for batch, size in ((1, case.sizes[0]), (2, case.sizes[1])):
            x = make_input(model, batch, *size)
            with torch.no_grad():
                expected = model(x).numpy()
            (got,) = session.run(None, {ONNX_INPUT: x.numpy()})
            assert got.shape == expected.shape
            np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


# The dynamo exporter is the alternative to the TorchScript one that ``covseg export`` uses (every
# model above goes through that one); it takes ~25 s a model, so it runs on one model of each kind:
# plain 2D and 3D convolutions, the co-supervised ResUNet's attention fusion, Inf-Net's reverse
# attention, and a model with a classification head.
DYNAMO_CASES = [c for c in MODEL_CASES if c.id in {"unet", "unet[spatial_dims=3]", "resunet", "infnet", "jcs"}]


@pytest.mark.slow
@pytest.mark.parametrize("case", DYNAMO_CASES, ids=lambda c: c.id)
def test_onnx_export_dynamo(case: ModelCase, tmp_path):
    assert len(DYNAMO_CASES) == 5
    TestSegmentationModel._check_onnx(case, tmp_path, "dynamo")


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("unet", {"base_width": 4, "depth": 3, "spatial_dims": 3}),
        ("unet_multiclass", {"out_channels": 3, "base_width": 8, "depth": 3}),
        ("resunet", {"widths": [8, 8, 16, 16, 32], "edge_channels": 8, "fusion_channels": 8}),
        ("infnet", {"encoder_kwargs": SMALL_RESNET, "channel": 8, "ra_channels": 16, "edge_channels": 8}),
        ("jcs", {"encoder_kwargs": SMALL_RESNET, "decoder_widths": [16, 16, 8, 8], "deep_supervision": True}),
    ],
)
def test_every_model_takes_a_classification_head(name, kwargs):
    """A head on the deepest encoder feature: class logits beside the model's own outputs, gradients reach it,
    the init args rebuild it, and ``forward`` is unchanged (the same weights without the head give the same map)."""
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, heads={"classification": {"classes": 3, "pooling": "max", "dropout": 0.1}}, **kwargs)
    size = (16, 24, 16) if kwargs.get("spatial_dims") == 3 else (64, 48)
    x = torch.randn(2, 1, *size)
    out = model.train().forward_train(x)
    assert out["class_logits"].shape == (2, 3) and "class_logits" in model.train_outputs and "bottleneck" not in out
    out["class_logits"].sum().backward()
    assert model.heads["classification"].linear.weight.grad.abs().sum() > 0
    model.eval()
    rebuilt = build_model(name, **json.loads(json.dumps(model.init_args)))
    rebuilt.load_state_dict(model.state_dict())
    plain = build_model(name, in_channels=1, **kwargs, **({"heads": {}} if name == "jcs" else {}))  # jcs has one by default
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("heads.")})
    with torch.no_grad():
        y = model(x)
        assert torch.equal(y, rebuilt.eval()(x)) and torch.equal(y, plain.eval()(x))
        assert torch.equal(model.forward_heads(x)["class_logits"], rebuilt.forward_heads(x)["class_logits"])


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
def test_unet_norm_options(norm):
    model = build_model("unet", in_channels=1, base_width=8, depth=3, norm=norm).train()
    y = model(torch.randn(2, 1, 40, 48))
    y.mean().backward()
    assert y.shape == (2, 1, 40, 48)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("branches", [1, 2, 3])
def test_infnet_with_fewer_rfb_branches(branches):
    model = build_model(
        "infnet", in_channels=1, encoder_kwargs=SMALL_RESNET, channel=8, rfb_branches=branches
    ).eval()
    full = build_model("infnet", in_channels=1, encoder_kwargs=SMALL_RESNET, channel=8).eval()
    assert len(model.rfb2.branches) == branches
    assert model.num_parameters() < full.num_parameters()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_invalid_configurations_are_refused():
    with pytest.raises(ValueError, match="binary"):
        build_model("infnet", in_channels=1, out_channels=2)
    with pytest.raises(ValueError, match="out_channels ≥ 2"):
        build_model("unet_multiclass", in_channels=1, out_channels=1)
    with pytest.raises(ValueError, match="needs encoder="):
        build_model("unet", in_channels=1, pretrained=True)
    with pytest.raises(ValueError, match="unknown norm"):
        build_model("unet", in_channels=1, norm="layer")
    with pytest.raises(ValueError, match="rfb_branches"):
        build_model("infnet", in_channels=1, rfb_branches=5)
    with pytest.raises(KeyError, match="unknown encoder"):
        build_model("unet", in_channels=1, encoder="no-such-encoder")  # resnet50 is registered now (Inf-Net's variant)


def test_multiclass_prior_input():
    model = build_model(
        "unet_multiclass", in_channels=1, out_channels=3, prior_channel=True, base_width=8, depth=3
    )
    assert model.input_channels == 2 and model.init_args["in_channels"] == 1
    image, prior = torch.randn(1, 1, 32, 32), torch.rand(1, 1, 16, 16)
    x = model.with_prior(image, prior)
    assert x.shape == (1, 2, 32, 32)
    torch.testing.assert_close(x[:, :1], image)
    with torch.no_grad():
        assert model.eval()(x).shape == (1, 3, 32, 32)


def test_unetplusplus_deep_supervision_goes_to_the_aux_loss_term():
    """MONAI's nested decoders' maps are the ``aux`` outputs: the criterion weighs each against the mask,
    and the total is the main term plus the weighted aux terms."""
    from covseg.losses.criterion import build_criterion

    torch.manual_seed(0)
    model = build_model("unetplusplus", in_channels=1, features=[4, 4, 8, 8, 16, 4], deep_supervision=True).train()
    x, mask = torch.randn(2, 1, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    out = model.forward_train(x)
    total, parts = build_criterion({"main": "dice_bce", "aux_weight": 0.5})(out, {"mask": mask})
    assert {"main", "aux0", "aux1", "aux2"} <= set(parts)
    main_only, main_parts = build_criterion({"main": "dice_bce", "aux_weight": 0.0})(out, {"mask": mask})
    expected = float(main_parts["main"]) + 0.5 * sum(float(parts[f"aux{i}"]) for i in range(3))
    assert total.item() == pytest.approx(expected, rel=1e-5) and total.item() > main_only.item()
    total.backward()
    assert all(model.net.get_submodule(f"final_conv_0_{i}").weight.grad.abs().sum() > 0 for i in (1, 2, 3))


def test_unetr_pads_up_to_its_img_size_and_refuses_larger_inputs():
    torch.manual_seed(0)
    model = build_model("unetr", in_channels=1, img_size=[32, 32], feature_size=4, hidden_size=32, mlp_dim=64,
                        num_heads=2, spatial_dims=2).eval()
    x = torch.randn(1, 1, 20, 27)
    padded = torch.nn.functional.pad(x, (0, 5, 0, 12), mode="replicate")
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net(padded)[..., :20, :27])
    with pytest.raises(ValueError, match="sliding_window"):
        model(torch.randn(1, 1, 48, 32))
    with pytest.raises(ValueError, match="multiples of 16"):
        build_model("unetr", in_channels=1, img_size=40, spatial_dims=3)


@pytest.mark.slow  # 14 s CPU, 72 s wall on the loaded 2-core machine
def test_unetplusplus_with_deep_supervision_trains_from_a_config_and_predicts(tmp_path):
    """The baseline as a config names it: two epochs on 2D phantoms with the aux term weighted, a run folder
    that rebuilds the model by name and predicts at the input's size."""
    from covseg.api import fit
    from covseg.inference.predictor import Predictor
    from covseg.training.config import load_config

    from tests.helpers import phantom_dataset, tiny_config

    data = phantom_dataset(tmp_path / "data", n=8, size=32)
    model = {"name": "unetplusplus", "params": {"features": [4, 4, 8, 8, 16, 4], "deep_supervision": True}}
    cfg = tiny_config(data, size=32, epochs=2, model=model, loss={"main": "dice_bce", "aux_weight": 0.5})
    fit(load_config(raw=cfg), tmp_path / "run", quiet=True)
    header = (tmp_path / "run" / "history.csv").read_text().splitlines()[0].split(",")
    assert {"train_main", "train_aux0", "train_aux1", "train_aux2"} <= set(header), header
    desc = json.loads((tmp_path / "run" / "model.json").read_text())
    assert desc["name"] == "unetplusplus" and desc["init_args"]["deep_supervision"] is True
    image = np.random.default_rng(0).integers(0, 255, (40, 36)).astype(np.uint8)
    probs = Predictor.from_run(tmp_path / "run").predict_image(image).probs
    assert probs.shape == (40, 36) and probs.min() >= 0 and probs.max() <= 1
