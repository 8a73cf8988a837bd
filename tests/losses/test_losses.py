"""Losses: hand-computed values on tiny tensors, the structure loss's per-pixel weighting, Criterion."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from covseg.errors import ConfigError
from covseg.losses import (
    LOSSES,
    Criterion,
    boundary_weights,
    build_criterion,
    build_loss,
    mask_to_edge,
    structure_loss,
)
from covseg.models import build_model

LN3 = math.log(3.0)


def binary_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """p = σ(logits) = [[0.75, 0.25], [0.5, 0.5]], target [[1, 0], [1, 0]]."""
    logits = torch.tensor([[[[LN3, -LN3], [0.0, 0.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    return logits, target


def multiclass_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Two pixels, three classes: softmax [1/8, 2/8, 5/8] (target 2) and [4/6, 1/6, 1/6] (target 0)."""
    logits = torch.tensor([[0.0, math.log(4.0)], [math.log(2.0), 0.0], [math.log(5.0), 0.0]]).reshape(
        1, 3, 1, 2
    )
    target = torch.tensor([[[2, 0]]])
    return logits, target


def test_registry_holds_the_losses():
    assert set(LOSSES.names()) == {"dice", "bce", "dice_bce", "ce", "dice_ce", "structure", "edge", "class_ce"}


def test_batch_dice_pools_the_batch_so_an_empty_image_cannot_dominate():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 8, 8, generator=g)
    target = (torch.rand(3, 1, 8, 8, generator=g) > 0.6).float()
    target[1] = 0.0  # a lesion-free image
    pooled = LOSSES.build("dice", batch=True)(logits, target)
    one_image = LOSSES.build("dice")(logits.permute(1, 0, 2, 3).reshape(1, 1, 24, 8), target.permute(1, 0, 2, 3).reshape(1, 1, 24, 8))
    assert float(pooled) == pytest.approx(float(one_image), abs=1e-6)
    assert float(pooled) < float(LOSSES.build("dice")(logits, target))  # per image, the empty one scores badly
    k = torch.randn(2, 3, 6, 6, generator=g)
    labels = torch.randint(0, 3, (2, 6, 6), generator=g)
    stacked = LOSSES.build("dice", batch=True)(k, labels)
    joined = LOSSES.build("dice")(torch.cat([k[0], k[1]], dim=1)[None], torch.cat([labels[0], labels[1]], dim=0)[None])
    assert float(stacked) == pytest.approx(float(joined), abs=1e-6)


def test_class_ce_is_torch_cross_entropy_on_image_level_logits():
    import torch.nn.functional as F

    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-1.0, 3.0]])
    labels = torch.tensor([0, 1, 1])
    loss = LOSSES.build("class_ce", weight=[2.0, 0.5], label_smoothing=0.1)
    expected = F.cross_entropy(logits, labels, weight=torch.tensor([2.0, 0.5]), label_smoothing=0.1)
    assert float(loss(logits, labels)) == pytest.approx(float(expected))
    with pytest.raises(ValueError, match="class logits must be"):
        loss(torch.zeros(3, 2, 4, 4), labels)
    with pytest.raises(ValueError, match="class indices"):
        loss(logits, labels.float())
    with pytest.raises(ValueError, match="3 class weights for 2 classes"):
        LOSSES.build("class_ce", weight=[1, 1, 1])(logits, labels)


def test_binary_dice_by_hand():
    logits, target = binary_pair()
    # Σp·t = 1.25, Σp = 2, Σt = 2 → dice = (2.5 + 1) / (4 + 1) = 0.7
    assert build_loss("dice")(logits, target).item() == pytest.approx(0.3, abs=1e-6)
    assert build_loss("dice", smooth=0.0)(logits, target).item() == pytest.approx(1 - 2.5 / 4, abs=1e-6)
    # per-image average: an empty second image with p = 0.5 gives dice = 1 / (2 + 1)
    logits2 = torch.cat([logits, torch.zeros_like(logits)])
    target2 = torch.cat([target, torch.zeros_like(target)])
    assert build_loss("dice")(logits2, target2).item() == pytest.approx(1 - (0.7 + 1 / 3) / 2, abs=1e-6)


def test_bce_and_dice_bce_by_hand():
    logits, target = binary_pair()
    bce = (2 * -math.log(0.75) + 2 * math.log(2.0)) / 4
    assert build_loss("bce")(logits, target).item() == pytest.approx(bce, abs=1e-6)
    assert build_loss("dice_bce")(logits, target).item() == pytest.approx(0.3 + bce, abs=1e-6)
    weighted = build_loss("dice_bce", dice_weight=2.0, bce_weight=0.5)(logits, target).item()
    assert weighted == pytest.approx(0.6 + 0.5 * bce, abs=1e-6)


def test_ce_and_multiclass_dice_by_hand():
    logits, target = multiclass_pair()
    ce = (math.log(8 / 5) + math.log(6 / 4)) / 2
    assert build_loss("ce")(logits, target).item() == pytest.approx(ce, abs=1e-6)
    # foreground classes only: class 1 absent → dice = 1 / (Σp + 1); class 2 → (2·5/8 + 1) / (Σp + 1 + 1)
    dice1 = 1 / (2 / 8 + 1 / 6 + 1)
    dice2 = (2 * 5 / 8 + 1) / (5 / 8 + 1 / 6 + 1 + 1)
    dice = 1 - (dice1 + dice2) / 2
    assert build_loss("dice")(logits, target).item() == pytest.approx(dice, abs=1e-6)
    assert build_loss("dice_ce")(logits, target).item() == pytest.approx(dice + ce, abs=1e-6)
    # a (B, 1, H, W) label map is accepted as well
    assert build_loss("ce")(logits, target[:, None]).item() == pytest.approx(ce, abs=1e-6)


def test_target_checks_are_clear():
    logits, target = binary_pair()
    with pytest.raises(ValueError, match="float"):
        build_loss("bce")(logits, target.long())
    with pytest.raises(ValueError, match="differs"):
        build_loss("dice")(logits, target[..., :1])
    with pytest.raises(ValueError, match="integer class"):
        build_loss("ce")(*multiclass_pair()[:1], multiclass_pair()[1].float())


def structure_reference(logits: np.ndarray, mask: np.ndarray, weights: np.ndarray) -> float:
    """The structure loss of one image written out with per-pixel BCE (``reduction='none'``)."""
    bce = np.maximum(logits, 0) - logits * mask + np.log1p(np.exp(-np.abs(logits)))
    wbce = (weights * bce).sum() / weights.sum()
    p = 1 / (1 + np.exp(-logits))
    inter = (p * mask * weights).sum()
    union = ((p + mask) * weights).sum()
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return float(wbce + wiou)


def tiny_structure_case() -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    mask[..., 1:3, 2:5] = 1.0  # six foreground pixels
    logits = torch.linspace(-3.0, 2.5, 36, dtype=torch.float64).reshape(1, 1, 6, 6)
    return logits, mask


def test_structure_weights_by_hand():
    _, mask = tiny_structure_case()
    # a 31×31 window (zero padding counted) covers the whole 6×6 image: local mean = 6/961 everywhere
    expected = torch.where(mask > 0, 1 + 5 * (1 - 6 / 961), torch.full_like(mask, 1 + 5 * 6 / 961))
    torch.testing.assert_close(boundary_weights(mask), expected)
    # 3×3 window: compare with an explicit zero-padded average
    padded = np.pad(mask[0, 0].numpy(), 1)
    local = np.array([[padded[i : i + 3, j : j + 3].mean() for j in range(6)] for i in range(6)])
    expected3 = 1 + 5 * np.abs(local - mask[0, 0].numpy())
    np.testing.assert_allclose(boundary_weights(mask, kernel_size=3)[0, 0].numpy(), expected3, atol=1e-12)


def test_structure_loss_is_per_pixel_weighted():
    logits, mask = tiny_structure_case()
    weights = boundary_weights(mask)[0, 0].numpy()
    reference = structure_reference(logits[0, 0].numpy(), mask[0, 0].numpy(), weights)
    ours = build_loss("structure")(logits, mask).item()
    assert ours == pytest.approx(reference, abs=1e-10)

    # The released code: reduce='none' is the legacy flag, read as "reduce" → the BCE is a scalar
    # mean before weighting, so Σ w·c / Σ w = c and the boundary weighting of the BCE vanishes.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bce_original = F.binary_cross_entropy_with_logits(logits, mask, reduce="none")
    assert bce_original.ndim == 0
    weit = boundary_weights(mask)
    wbce_original = (weit * bce_original).sum(dim=(2, 3)) / weit.sum(dim=(2, 3))
    plain_bce = F.binary_cross_entropy_with_logits(logits, mask).item()
    assert wbce_original.item() == pytest.approx(plain_bce, abs=1e-12)
    averaged_first = structure_loss(logits, mask, bce_weight=0.0).item() + plain_bce
    assert abs(ours - averaged_first) > 1e-2


def test_structure_loss_averages_images_and_weights_terms():
    logits, mask = tiny_structure_case()
    other_logits, other_mask = -logits, torch.flip(mask, dims=(-1,))
    batch_logits, batch_mask = torch.cat([logits, other_logits]), torch.cat([mask, other_mask])
    single = [build_loss("structure")(lg, m).item() for lg, m in ((logits, mask), (other_logits, other_mask))]
    assert build_loss("structure")(batch_logits, batch_mask).item() == pytest.approx(
        np.mean(single), abs=1e-10
    )
    bce_only = structure_loss(logits, mask, iou_weight=0.0).item()
    iou_only = structure_loss(logits, mask, bce_weight=0.0).item()
    assert bce_only + iou_only == pytest.approx(single[0], abs=1e-10)


def test_structure_loss_weight_cache_follows_the_target():
    """Reused boundary weights never leak into a different or modified target."""
    logits, mask = tiny_structure_case()
    loss = build_loss("structure")
    assert loss(logits, mask).item() == pytest.approx(structure_loss(logits, mask).item(), abs=1e-12)
    flipped = torch.flip(mask, dims=(-1,)).contiguous()
    assert loss(logits, flipped).item() == pytest.approx(structure_loss(logits, flipped).item(), abs=1e-12)
    flipped[..., :2] = 1.0 - flipped[..., :2]  # in place: same tensor, new values
    assert loss(logits, flipped).item() == pytest.approx(structure_loss(logits, flipped).item(), abs=1e-12)


def test_edge_loss_plain_and_balanced_by_hand():
    logits = torch.tensor([[[[0.0, LN3], [-LN3, 0.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    per_pixel = [math.log(2), math.log(4), math.log(4 / 3), math.log(2)]
    plain = sum(per_pixel) / 4
    balanced = 0.5 * per_pixel[0] + 0.5 * sum(per_pixel[1:]) / 3
    assert build_loss("edge")(logits, target).item() == pytest.approx(plain, abs=1e-6)
    assert build_loss("edge", balanced=True)(logits, target).item() == pytest.approx(balanced, abs=1e-6)
    # an image without edge pixels falls back to the plain mean instead of dividing by zero
    empty = torch.zeros_like(target)
    expected_empty = (math.log(2) + math.log(4) + math.log(4 / 3) + math.log(2)) / 4
    assert build_loss("edge", balanced=True)(logits, empty).item() == pytest.approx(expected_empty, abs=1e-6)


@pytest.mark.parametrize("name", ["dice", "bce", "dice_bce", "structure", "edge"])
def test_binary_losses_have_finite_gradients_at_extreme_logits(name):
    logits = torch.tensor([[[[50.0, -50.0], [-50.0, 50.0]]]], requires_grad=True)
    target = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])
    loss = build_loss(name)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", ["dice", "ce", "dice_ce"])
def test_multiclass_losses_have_finite_gradients_at_extreme_logits(name):
    logits = torch.tensor([[[[60.0, -60.0]], [[-60.0, 60.0]], [[0.0, 0.0]]]], requires_grad=True)
    target = torch.tensor([[[1, 2]]])
    loss = build_loss(name)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_mask_to_edge_by_hand():
    mask = torch.zeros(1, 1, 5, 5)
    mask[..., 1:4, 1:4] = 1.0
    expected = torch.tensor(
        [
            [0, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
            [1, 1, 0, 1, 1],
            [1, 1, 1, 1, 1],
            [0, 1, 1, 1, 0],
        ],
        dtype=torch.float32,
    )
    torch.testing.assert_close(mask_to_edge(mask)[0, 0], expected)
    torch.testing.assert_close(mask_to_edge((mask[:, 0] * 2).long())[0, 0], expected)  # label maps too


def criterion_case() -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(3)
    mask = (torch.rand(2, 1, 8, 8, generator=g) > 0.6).float()
    outputs = {
        "logits": torch.randn(2, 1, 8, 8, generator=g),
        "aux": [torch.randn(2, 1, 2, 2, generator=g), torch.randn(2, 1, 4, 4, generator=g)],
        "edge": torch.randn(2, 1, 4, 4, generator=g),
    }
    return outputs, {"mask": mask, "edge": mask_to_edge(mask)}


def test_criterion_combines_main_aux_and_edge():
    outputs, batch = criterion_case()
    crit = Criterion(main="dice_bce", aux_weight=[0.5, 0.25], edge_weight=2.0)
    total, parts = crit(outputs, batch)

    def up(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, size=(8, 8), mode="bilinear", align_corners=False)

    dice_bce, edge = build_loss("dice_bce"), build_loss("edge")
    main = dice_bce(outputs["logits"], batch["mask"])
    aux0 = dice_bce(up(outputs["aux"][0]), batch["mask"])
    aux1 = dice_bce(up(outputs["aux"][1]), batch["mask"])
    edge_value = edge(up(outputs["edge"]), batch["edge"])
    expected = main + 0.5 * aux0 + 0.25 * aux1 + 2.0 * edge_value
    assert total.item() == pytest.approx(expected.item(), abs=1e-6)
    assert parts == pytest.approx(
        {
            "main": main.item(),
            "aux0": aux0.item(),
            "aux1": aux1.item(),
            "edge": edge_value.item(),
            "total": expected.item(),
        },
        abs=1e-6,
    )


def test_criterion_upsamples_a_constant_aux_map_exactly():
    """A constant low-resolution aux map stays constant when upsampled: value computable by hand."""
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1.0  # 4 of 16 pixels
    outputs = {"logits": torch.zeros(1, 1, 4, 4), "aux": [torch.zeros(1, 1, 1, 1)]}
    total, parts = Criterion(main="bce", aux_weight=3.0)(outputs, {"mask": mask})
    assert parts["aux0"] == pytest.approx(math.log(2), abs=1e-6)
    assert total.item() == pytest.approx(4 * math.log(2), abs=1e-6)


def test_criterion_edge_rules():
    outputs, batch = criterion_case()
    no_edge = {"mask": batch["mask"]}
    with pytest.raises(ValueError, match="no 'edge'"):
        Criterion(main="bce", edge_weight=1.0)(outputs, no_edge)
    # derived from the mask: identical to passing mask_to_edge(mask)
    derived, _ = Criterion(main="bce", edge_from_mask=True)(outputs, no_edge)
    explicit, _ = Criterion(main="bce")(outputs, batch)
    assert derived.item() == pytest.approx(explicit.item(), abs=1e-7)
    # edge_weight = 0 skips the term (no error, no part)
    _, parts = Criterion(main="bce", edge_weight=0.0)(outputs, no_edge)
    assert "edge" not in parts
    # aux weights of zero skip, a wrong-length list is an error
    _, parts = Criterion(main="bce", aux_weight=0.0, edge_weight=0.0)(outputs, batch)
    assert set(parts) == {"main", "total"}
    with pytest.raises(ValueError, match="aux_weight has 3 entries"):
        Criterion(main="bce", aux_weight=[1.0, 1.0, 1.0])(outputs, batch)


def test_build_criterion_from_config():
    crit = build_criterion(
        {"main": "structure", "aux_weight": [1, 1, 1], "edge_weight": 1.0, "params": {"gain": 3.0}}
    )
    assert crit.main.gain == 3.0 and crit.aux.gain == 3.0  # aux defaults to the main loss and its settings
    trainer_dump = {
        "main": "dice_bce",
        "aux_weight": 0.0,
        "edge_weight": 0.0,
        "edge_loss": "edge",
        "params": {},
    }
    assert isinstance(build_criterion(trainer_dump), Criterion)
    assert isinstance(build_criterion("dice_ce"), Criterion)
    with pytest.raises(ConfigError, match="unknown loss config keys"):
        build_criterion({"main": "dice", "weights": 1})
    with pytest.raises(ConfigError, match="unknown loss 'focal'"):
        build_criterion({"main": "focal"})
    with pytest.raises(ConfigError, match="needs 'main'"):
        build_criterion({"aux_weight": 1.0})
    with pytest.raises(ConfigError, match="unexpected keyword"):
        build_criterion({"main": "bce", "params": {"gamma": 2}})


def test_criterion_on_infnet_outputs_backpropagates():
    torch.manual_seed(0)
    model = build_model(
        "infnet",
        in_channels=1,
        encoder_kwargs={"widths": [8, 8, 16, 16, 32]},
        channel=8,
        ra_channels=16,
        edge_channels=8,
    )
    x = torch.randn(2, 1, 64, 64)
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 20:40, 10:30] = 1.0
    crit = build_criterion(
        {"main": "structure", "aux_weight": 1.0, "edge_weight": 1.0, "edge_from_mask": True}
    )
    total, parts = crit(model.forward_train(x), {"mask": mask})
    assert set(parts) == {"main", "aux0", "aux1", "aux2", "edge", "total"}
    total.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_criterion_on_multiclass_outputs():
    torch.manual_seed(0)
    model = build_model(
        "unet_multiclass", in_channels=1, out_channels=3, prior_channel=True, base_width=8, depth=3
    )
    x = torch.randn(2, model.input_channels, 32, 48)
    labels = torch.zeros(2, 32, 48, dtype=torch.long)
    labels[:, 5:15, 5:20] = 1
    labels[:, 20:28, 30:40] = 2
    total, parts = Criterion(main="dice_ce")(model.forward_train(x), {"mask": labels})
    total.backward()
    assert set(parts) == {"main", "total"} and math.isfinite(parts["total"])
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
