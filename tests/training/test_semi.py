"""Semi-supervised trainers on phantoms: CPS (+UIF), pseudo-label source, Semi-Inf-Net schedule."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from covseg.data import open_dataset
from covseg.errors import ConfigError
from covseg.training.config import load_config
from covseg.training.semi.common import edges_from_masks, sigmoid_rampup
from covseg.training.semi.cps import cutmix_boxes, image_uncertainty
from covseg.training.trainer import build_trainer

from tests.helpers import phantom_dataset, tiny_config


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    return phantom_dataset(tmp_path_factory.mktemp("semi") / "labelled", n=16, size=48, seed=5)


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory) -> Path:
    root = phantom_dataset(tmp_path_factory.mktemp("semi_u") / "unlabelled", n=20, size=48, seed=6)
    return root / "images"


def _semi_config(labelled: Path, unlabelled: Path, trainer: str, epochs: int, **over) -> dict:
    cfg = tiny_config(labelled, size=48, epochs=epochs, **over)
    cfg["trainer"] = trainer
    cfg.setdefault("semi", {})["unlabeled"] = {"root": str(unlabelled.parent), "split": None}
    return cfg


def _history(run: Path) -> list[dict[str, str]]:
    with (run / "history.csv").open() as f:
        return list(csv.DictReader(f))


def test_uncertainty_scores():
    a = torch.zeros(3, 1, 8, 8)
    a[:, :, 2:6, 2:6] = 0.9
    b = a.clone()
    b[1] = 0.0
    b[1, :, 0:2, 0:2] = 0.9  # disjoint prediction
    d = image_uncertainty(a, b, "disagreement")
    assert d[0] == 0.0 and d[1] == 1.0 and d[2] == 0.0
    both_empty = image_uncertainty(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    assert both_empty[0] == 0.0
    half = torch.full((1, 1, 4, 4), 0.5)
    assert image_uncertainty(half, half, "entropy")[0] == pytest.approx(1.0)
    sure = torch.zeros(1, 3, 4, 4)
    sure[:, 0] = 1.0
    assert image_uncertainty(sure, sure, "entropy")[0] == pytest.approx(0.0, abs=1e-6)
    vol = torch.rand(2, 1, 4, 5, 6)  # 3D patches work unchanged
    assert image_uncertainty(vol, vol).shape == (2,)
    assert sigmoid_rampup(0, 5) < 0.01 and sigmoid_rampup(5, 5) == 1.0 and sigmoid_rampup(3, 0) == 1.0


def test_edges_from_masks_marks_the_boundary():
    m = torch.zeros(1, 1, 9, 9)
    m[:, :, 3:6, 3:6] = 1
    e = edges_from_masks(m)
    assert e[0, 0, 4, 4] == 0 and e[0, 0, 3, 3] == 1 and e[0, 0, 2, 3] == 1 and e[0, 0, 0, 0] == 0


def test_cps_unlabelled_loss_goes_down_and_uif_keeps_the_fraction(labelled, unlabelled, tmp_path):
    cfg = _semi_config(labelled, unlabelled, "cps", epochs=6, optim__lr=5e-3)
    cfg["semi"]["cps"] = {"weight": 1.0, "rampup_epochs": 0, "uif": {"enabled": True, "keep_fraction": 0.25, "rescore_every": 2}}
    run = tmp_path / "cps"
    build_trainer(load_config(raw=cfg), run, quiet=True).fit()
    hist = _history(run)
    cps = [float(r["train_cps"]) for r in hist]
    assert cps[-1] < cps[0], cps
    assert all(float(r["train_unlabeled_used"]) == 5 for r in hist)  # 25 % of 20
    with (run / "uif_scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20 and sum(int(r["kept"]) for r in rows) == 5
    kept = sorted(float(r["uncertainty"]) for r in rows if r["kept"] == "1")
    dropped = sorted(float(r["uncertainty"]) for r in rows if r["kept"] == "0")
    assert kept[-1] <= dropped[0]  # the most certain fifth was kept
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert "model_b_state" in ckpt and len(ckpt["uif_kept"]) == 5
    a, b = ckpt["model_state"], ckpt["model_b_state"]
    assert not all(torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_validation_images_are_never_unlabelled(labelled, tmp_path):
    cfg = _semi_config(labelled, labelled / "images", "cps", epochs=1)
    run = tmp_path / "leak"
    build_trainer(load_config(raw=cfg), run, quiet=True).fit()
    splits = json.loads((run / "splits.json").read_text())
    assert splits["unlabeled"]["cases"] == 16 - len(splits["val"])


def test_pseudo_label_cli_writes_a_dataset_a_trainer_reads(labelled, unlabelled, tmp_path):
    sup = tmp_path / "sup"
    build_trainer(load_config(raw=tiny_config(labelled, size=48, epochs=2)), sup, quiet=True).fit()
    out = tmp_path / "pseudo"
    proc = subprocess.run(
        [sys.executable, "-m", "covseg.cli.main", "pseudo-label", "--model", str(sup), "--input", str(unlabelled), "--output", str(out), "-q"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    index = open_dataset(out)
    assert len(index.records) == 20
    assert all(r.mask is not None and r.edge is not None for r in index.records)
    with (out / "confidence.csv").open() as f:
        conf = {r["case_id"]: float(r["confidence"]) for r in csv.DictReader(f)}
    assert len(conf) == 20 and all(0.0 <= c <= 1.0 for c in conf.values())
    cfg = tiny_config(labelled, size=48, epochs=2)
    cfg["trainer"] = "pseudo"
    cutoff = sorted(conf.values())[10]
    cfg["semi"] = {"pseudo": {"root": str(out), "weight": 0.5, "min_confidence": cutoff}}
    run = tmp_path / "with_pseudo"
    build_trainer(load_config(raw=cfg), run, quiet=True).fit()
    splits = json.loads((run / "splits.json").read_text())
    assert splits["pseudo"]["cases"] == sum(c >= cutoff for c in conf.values())
    assert "train_pseudo" in _history(run)[0]


def test_semi_infnet_schedule_and_exact_resume(labelled, unlabelled, tmp_path):
    cfg = _semi_config(labelled, unlabelled, "semi_infnet", epochs=1)
    cfg["semi"]["semi_infnet"] = {
        "group_size": 5,
        "max_groups": 2,
        "initial_epochs": 1,
        "epochs_per_group": 1,
        "pretrain_epochs": 1,
        "finetune_epochs": 1,
    }
    full = tmp_path / "full"
    build_trainer(load_config(raw=cfg), full, quiet=True).fit()
    hist = _history(full)
    assert len(hist) == 5
    assert [float(r["train_pool"]) for r in hist] == [0, 5, 10, 10, 10]
    part = tmp_path / "part"
    build_trainer(load_config(raw=cfg), part, quiet=True).fit(stop_after=2)  # stop inside the group phase
    build_trainer(load_config(raw=cfg), part, resume=True, quiet=True).fit()
    wf = torch.load(full / "checkpoints" / "last.pt", weights_only=False)
    wp = torch.load(part / "checkpoints" / "last.pt", weights_only=False)
    assert wf["pool_index"] == wp["pool_index"]
    assert all(torch.allclose(wf["model_state"][k].float(), wp["model_state"][k].float(), atol=1e-6) for k in wf["model_state"])


def test_semi_infnet_starts_from_a_trained_run_of_the_same_fold(labelled, unlabelled, tmp_path):
    from covseg.errors import ConfigError

    sup = tmp_path / "sup"
    build_trainer(load_config(raw=tiny_config(labelled, size=48, epochs=2)), sup, quiet=True).fit()
    cfg = _semi_config(labelled, unlabelled, "semi_infnet", epochs=1)
    cfg["semi"]["semi_infnet"] = {
        "init_run": str(sup), "initial_epochs": 0, "group_size": 5, "max_groups": 1,
        "epochs_per_group": 1, "pretrain_epochs": 0, "finetune_epochs": 1,
    }
    trainer = build_trainer(load_config(raw=cfg), tmp_path / "semi", quiet=True)
    trainer.setup()
    start = torch.load(sup / "checkpoints" / "last.pt", weights_only=False)["model_state"]
    assert all(torch.equal(v, start[k]) for k, v in trainer.model.state_dict().items())
    # The first group's pseudo labels are the trained run's hard predictions, not a random model's.
    sup_model = build_trainer(load_config(raw=tiny_config(labelled, size=48, epochs=2)), sup, resume=True, quiet=True)
    sup_model.setup()
    idx = trainer.groups[0]
    assert torch.equal(trainer.pseudo_label(idx), sup_model.model.eval()(sup_model.as_input(trainer.unlabeled.images[idx])).gt(0).to(torch.uint8))
    trainer.fit()
    hist = _history(tmp_path / "semi")
    assert [float(r["train_pool"]) for r in hist] == [5, 5]  # no labelled start: group, then fine-tune
    assert json.loads((tmp_path / "semi" / "splits.json").read_text())["semi_infnet_init"]["checkpoint"] == "last"

    other_fold = dict(cfg, data={**cfg["data"], "fold": 1})
    with pytest.raises(ConfigError, match="validation cases"):
        build_trainer(load_config(raw=other_fold), tmp_path / "leak", quiet=True).setup()
    other_model = tmp_path / "other_model"
    build_trainer(load_config(raw=tiny_config(labelled, size=48, epochs=1, model__params={"base_width": 4, "depth": 3})), other_model, quiet=True).fit()
    mismatch = json.loads(json.dumps(cfg))
    mismatch["semi"]["semi_infnet"]["init_run"] = str(other_model)
    with pytest.raises(ConfigError, match="other init args") as err:
        build_trainer(load_config(raw=mismatch), tmp_path / "mismatch", quiet=True).setup()
    assert "last.pt" in str(err.value) and "\n" not in str(err.value)  # one line, naming the checkpoint
    no_start = json.loads(json.dumps(cfg))
    del no_start["semi"]["semi_infnet"]["init_run"]
    with pytest.raises(ConfigError, match="needs init_run"):
        load_config(raw=no_start)


def test_cutmix_boxes_cover_the_configured_area_in_2d_and_3d():
    gen = torch.Generator().manual_seed(0)
    for shape in ((64, 1, 40, 40), (16, 1, 20, 24, 28)):
        boxes = cutmix_boxes(shape, (0.25, 0.5), gen)
        assert boxes.shape == (shape[0], 1, *shape[2:]) and set(boxes.unique().tolist()) == {0.0, 1.0}
        area = boxes.flatten(1).mean(1)
        assert area.min() > 0.2 and area.max() < 0.56, area  # rounding of the sides
        assert area.std() > 0.02  # fractions are drawn, not fixed
        for b in boxes[:, 0]:  # one axis-aligned box: its bounding box is filled
            idx = b.nonzero()
            lo, hi = idx.min(0).values, idx.max(0).values
            assert int(b.sum()) == int(torch.prod(hi - lo + 1))


def test_cps_with_cutmix_learns_from_mixed_unlabelled_images(labelled, unlabelled, tmp_path):
    cfg = _semi_config(labelled, unlabelled, "cps", epochs=6, optim__lr=5e-3)
    cfg["semi"]["cps"] = {"weight": 1.0, "rampup_epochs": 0, "cutmix": True, "unlabeled_batch_size": 4}
    run = tmp_path / "cps_cutmix"
    build_trainer(load_config(raw=cfg), run, quiet=True).fit()
    hist = _history(run)
    cps = [float(r["train_cps"]) for r in hist]
    assert cps[-1] < cps[0], cps
    # The mixed image is the first image outside the box and the next one inside, and so are
    # each network's targets (its logits on the unmixed images).
    trainer = build_trainer(load_config(raw=cfg), tmp_path / "mix", quiet=True)
    trainer.setup()
    xu = trainer.unlabeled.images[:4]
    mixed, (ta, tb) = trainer.cutmix_unlabeled(xu, torch.Generator().manual_seed(3))
    inside = cutmix_boxes(xu.shape, (0.25, 0.5), torch.Generator().manual_seed(3)).bool()
    assert torch.equal(mixed[~inside.expand_as(mixed)], xu[~inside.expand_as(xu)])
    assert torch.equal(mixed[inside.expand_as(mixed)], xu.roll(1, 0)[inside.expand_as(xu)])
    with torch.no_grad():
        la = trainer.forward_train(trainer.model, {"image": xu})["logits"]
    assert torch.allclose(ta[~inside.expand_as(ta)], la[~inside.expand_as(la)], atol=1e-5)
    assert torch.allclose(ta[inside.expand_as(ta)], la.roll(1, 0)[inside.expand_as(la)], atol=1e-5)
    assert not torch.allclose(ta, tb)
    part = tmp_path / "part"  # resume is exact with the extra random draws of the boxes
    build_trainer(load_config(raw=cfg), part, quiet=True).fit(stop_after=3)
    build_trainer(load_config(raw=cfg), part, resume=True, quiet=True).fit()
    assert _history(part)[-1]["val_dice"] == hist[-1]["val_dice"]
    bad = json.loads(json.dumps(cfg))
    bad["semi"]["cps"]["cutmix_area"] = [0.5, 1.0]
    with pytest.raises(ConfigError, match="cutmix_area"):
        load_config(raw=bad)


def test_unlabelled_images_filtered_by_name(labelled, unlabelled, tmp_path):
    """``semi.unlabeled.include`` keeps one source of a mixed folder; no match is a one-line error."""
    cfg = _semi_config(labelled, unlabelled, "cps", epochs=1)
    cfg["semi"]["unlabeled"]["include"] = ["phantom_000[0-4].*", "phantom_0019.png"]
    run = tmp_path / "include"
    build_trainer(load_config(raw=cfg), run, quiet=True).fit()
    assert json.loads((run / "splits.json").read_text())["unlabeled"]["cases"] == 6
    cfg["semi"]["unlabeled"]["include"] = ["*radiopaedia*"]
    with pytest.raises(ConfigError, match="matches no image"):
        build_trainer(load_config(raw=cfg), tmp_path / "none", quiet=True).fit()
