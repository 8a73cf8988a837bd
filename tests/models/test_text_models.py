"""The text-guided models ``lvit``, ``c2fvl`` and ``cris``: contract, text sensitivity, masking, rebuild, ONNX."""

from __future__ import annotations

import pytest
import torch

from covseg.models import MODELS, build_model
from covseg.models.text_layers import TextSegmentationModel

TINY = {
    "lvit": {"encoder": "resnet", "encoder_kwargs": {"widths": [8, 8, 16, 16, 24]}, "decoder_widths": [16, 8, 8, 8], "vit_dim": 16, "vit_heads": 2},
    "c2fvl": {"encoder": "resnet", "encoder_kwargs": {"widths": [8, 8, 16, 16, 24]}, "decoder_widths": [16, 8, 8, 8], "align_dim": 16, "heads": 2},
    "cris": {"encoder": "resnet", "encoder_kwargs": {"widths": [8, 8, 16, 16, 24]}, "dim": 16, "heads": 2, "layers": 2, "proj_dim": 8},
}
TEXT_DIM = 12


def tiny(name: str, **kw):
    torch.manual_seed(0)
    return build_model(name, in_channels=1, out_channels=1, text_dim=TEXT_DIM, **{**TINY[name], **kw}).eval()


def text_batch(b: int, length: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, length, TEXT_DIM, generator=g), torch.ones(b, length)


def test_registered_by_name():
    for name in ("lvit", "c2fvl", "cris", "clipseg"):
        assert name in MODELS.names()
        assert issubclass(MODELS.get(name), TextSegmentationModel)


@pytest.mark.parametrize("name", ["lvit", "c2fvl", "cris"])
def test_contract_shapes_any_size(name):
    model = tiny(name)
    tokens, mask = text_batch(2)
    for h, w in ((64, 64), (50, 77)):
        x = torch.randn(2, 1, h, w)
        with torch.no_grad():
            assert model(x, tokens, mask).shape == (2, 1, h, w)
            assert model(x).shape == (2, 1, h, w)  # image-only: null text
        out = model.train().forward_train(x, tokens, mask)
        model.eval()
        assert out["logits"].shape == (2, 1, h, w)
        assert set(out) == set(model.train_outputs)
    if name == "c2fvl":
        assert len(out["aux"]) == 2 and torch.isfinite(out["align_loss"])
    if name == "cris":  # stride-4 text-to-pixel scores, cropped to the input's field of view
        assert out["t2p"].shape[:2] == (2, 1) and out["t2p"].shape[-2:] in ((16, 16), (50, 77))


@pytest.mark.parametrize("name", ["lvit", "c2fvl", "cris"])
def test_text_changes_the_output_and_padding_does_not(name):
    model = tiny(name)
    x = torch.randn(2, 1, 64, 64)
    t1, m1 = text_batch(2, seed=1)
    t2, _ = text_batch(2, seed=2)
    with torch.no_grad():
        y1, y2 = model(x, t1, m1), model(x, t2, m1)
        assert (y1 - y2).abs().max() > 1e-4  # the text reaches the logits
        # extra padded (masked) tokens of any value change nothing
        pad = torch.randn(2, 3, TEXT_DIM) * 100
        y1p = model(x, torch.cat([t1, pad], 1), torch.cat([m1, torch.zeros(2, 3)], 1))
        torch.testing.assert_close(y1p, y1, atol=1e-5, rtol=1e-4)
        # an all-zero mask is "no text", whatever the token values
        torch.testing.assert_close(model(x, t2 * 0 + 7, torch.zeros(2, 5)), model(x), atol=1e-5, rtol=1e-4)
        # each case sees its own text: swapping texts swaps the outputs
        swapped = model(x, t1.flip(0), m1)
        single = model(x[:1], t1[1:], m1[1:])
        torch.testing.assert_close(swapped[:1], single, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["lvit", "c2fvl", "cris"])
def test_backward_reaches_text_projection_and_rebuild(name):
    model = tiny(name).train()
    tokens, mask = text_batch(2)
    tokens.requires_grad_(True)
    out = model.forward_train(torch.randn(2, 1, 64, 64), tokens, mask)
    loss = out["logits"].mean() + out.get("align_loss", 0.0)
    loss.backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    assert model.text.tokens[1].weight.grad.abs().sum() > 0
    # init_args rebuild the same network (what checkpoints rely on)
    clone = build_model(name, **model.init_args)
    clone.load_state_dict(model.state_dict())
    model.eval()
    clone.eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(clone(x, tokens[:1].detach(), mask[:1]), model(x, tokens[:1].detach(), mask[:1]))


def test_c2fvl_alignment_loss_prefers_matching_pairs():
    model = tiny("c2fvl")
    fg = torch.zeros(4, 1, 4, 4)
    sentence = torch.eye(4, 16) * 5
    model.logit_scale.data.fill_(0.0)
    # image embeddings equal to the text embeddings of the same case → low loss; shuffled → higher
    cls = model.class_proj(sentence).reshape(4, 1, -1)[:, 0]
    with torch.no_grad():
        model.pixel_proj.weight.copy_(torch.eye(16))
        model.pixel_proj.bias.zero_()
    matched = cls.detach()[:, None, :].expand(4, 16, 16)
    lo = model.alignment_loss(matched, fg, sentence, torch.ones(4, 3))
    hi = model.alignment_loss(matched.flip(0), fg, sentence, torch.ones(4, 3))
    assert lo < hi
    # cases without text take no part; identical captions are positives of each other
    none = model.alignment_loss(matched, fg, sentence, torch.zeros(4, 3))
    assert float(none) == 0.0


@pytest.mark.parametrize("name", ["lvit", "cris"])
def test_onnx_export_with_text_inputs(tmp_path, name):
    onnxruntime = pytest.importorskip("onnxruntime")
    import warnings

    model = tiny(name)
    x = torch.randn(1, 1, 64, 64)
    tokens, mask = text_batch(1, length=6)
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x, tokens, mask),
            str(path),
            input_names=["image", "text_tokens", "text_mask"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}, "text_tokens": {0: "b", 1: "l"}, "text_mask": {0: "b", 1: "l"}},
            dynamo=False,
        )
    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x2 = torch.randn(2, 1, 96, 64)
    t2, m2 = text_batch(2, length=9, seed=3)
    m2[1, 4:] = 0
    (got,) = sess.run(None, {"image": x2.numpy(), "text_tokens": t2.numpy(), "text_mask": m2.numpy()})
    with torch.no_grad():
        want = model(x2, t2, m2).numpy()
    assert got.shape == want.shape
    assert abs(got - want).max() < 1e-3


def test_cris_text_to_pixel_loss_learns_which_side_the_text_names():
    """Two texts name two image halves: the CRIS config's loss terms (Dice + text-to-pixel BCE) learn them."""
    from covseg.losses import build_loss_terms

    model = tiny("cris").train()
    criterion = build_loss_terms({"seg": "dice", "t2p": {"loss": "bce", "output": "t2p"}})
    g = torch.Generator().manual_seed(0)
    words = torch.randn(2, 3, TEXT_DIM, generator=g)  # text 0 = "left half", text 1 = "right half"
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, :, :16] = 1
    mask[1, :, :, 16:] = 1
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        x = torch.randn(4, 1, 32, 32, generator=g) * 0.1  # the image alone says nothing about the side
        which = torch.tensor([0, 1, 1, 0])
        out = model.forward_train(x, words[which], torch.ones(4, 3))
        loss, parts = criterion(out, {"mask": mask[which]})
        assert set(parts) == {"seg", "t2p", "total"}
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        x = torch.zeros(2, 1, 32, 32)
        probs = torch.sigmoid(model(x, words, torch.ones(2, 3)))
    pred = (probs > 0.5).float()
    dice = (2 * (pred * mask).sum((1, 2, 3)) / (pred.sum((1, 2, 3)) + mask.sum((1, 2, 3)))).min()
    assert dice > 0.9


def test_cris_on_a_local_clip_vision_folder(tmp_path):
    """``encoder: clip-vision`` reads a CLIP checkpoint folder (a tiny random one here); the ViT stays frozen."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    CLIPVisionModel(config).save_pretrained(tmp_path / "clip")
    kwargs = {"pretrained_dir": str(tmp_path / "clip"), "widths": [8, 8, 16, 16, 24]}
    model = build_model("cris", in_channels=1, out_channels=1, text_dim=TEXT_DIM, encoder="clip-vision", pretrained=True,
                        encoder_kwargs=kwargs, dim=16, heads=2, layers=1, proj_dim=8).train()  # fmt: skip
    tokens, mask = text_batch(2)
    x = torch.randn(2, 1, 50, 77)
    out = model.forward_train(x, tokens, mask)
    assert out["logits"].shape == (2, 1, 50, 77)
    out["logits"].mean().backward()
    assert all(p.grad is None for p in model.encoder.vit.parameters())
    assert model.encoder.proj[1][0].weight.grad.abs().sum() > 0  # stride 4 (cris reads strides 4..32)
    assert model.input_normalization[0] == (pytest.approx(0.44916, abs=1e-4),)  # CLIP's mean, grey
    with pytest.raises(Exception, match=r"config\.json"):
        build_model("cris", text_dim=TEXT_DIM, encoder="clip-vision", encoder_kwargs={"pretrained_dir": str(tmp_path / "none")})
