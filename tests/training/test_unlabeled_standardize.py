"""Intensity standardisation of unlabelled slices (``semi.unlabeled.standardize``, issue 24).

The mapping sends a volume's landmarks onto the reference, is monotone, equals torchio's, groups
slices by volume, and touches nothing but the unlabelled images of a semi-supervised run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covseg.engine.runtime import Runtime
from covseg.errors import ConfigError
from covseg.training.config import load_config
from covseg.training.trainer import build_trainer
from covseg.transforms.standardize import (
    HISTOGRAM_PERCENTILES,
    GreyLevels,
    body_mask,
    learn_reference,
    map_landmarks,
    standardize,
    volume_key,
)

from tests.helpers import phantom_dataset, tiny_config


def _ct_like(rng: np.random.Generator, shape=(40, 48), gain: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """An 8-bit slice: a dark lung field in a brighter body, grey levels ``gain * x + offset``."""
    body = rng.normal(170, 25, size=shape)
    body[8:32, 6:22] = rng.normal(40, 12, size=(24, 16))
    body[8:32, 26:42] = rng.normal(45, 12, size=(24, 16))
    return np.clip(np.round(gain * body + offset), 0, 255).astype(np.float32)


def _reference(n: int = 6):
    rng = np.random.default_rng(1)
    return learn_reference([_ct_like(rng) for _ in range(n)], "histogram")


def test_volume_landmarks_land_on_the_reference_landmarks():
    reference = _reference()
    rng = np.random.default_rng(2)
    volume = [_ct_like(rng, gain=0.35, offset=5.0) for _ in range(5)]  # another window: dark and narrow
    masks = [body_mask(s) for s in volume]
    before = GreyLevels()
    for s, m in zip(volume, masks):
        before.add(s, m)
    assert before.percentiles([50])[0] < 0.5 * reference.landmarks[5]
    after = GreyLevels()
    for s, m in zip(standardize(volume, reference), masks):
        after.add(s, m)
    np.testing.assert_allclose(after.percentiles(reference.percentiles), reference.landmarks, atol=0.75)
    # the reference itself: learned on the images' own grey scale (not torchio's 0..100)
    assert reference.low >= 0 and reference.high <= 255 and 5 < reference.landmarks[0] < reference.landmarks[-1] < 255


def test_percentile_scaling_is_one_linear_map_onto_the_mean_cutoffs():
    rng = np.random.default_rng(3)
    images = [_ct_like(rng) for _ in range(4)]
    reference = learn_reference(images, "percentile")
    cutoffs = np.array([GreyLevels_of(im).percentiles([1, 99]) for im in images])
    np.testing.assert_allclose(reference.landmarks, cutoffs.mean(axis=0), rtol=1e-6)
    x = np.linspace(-50, 300, 71)
    y = map_landmarks(x, np.array([10.0, 110.0]), np.array([20.0, 220.0]))
    np.testing.assert_allclose(y, 20 + 2.0 * (x - 10), rtol=1e-5, atol=1e-3)  # linear, extended past the ends


def GreyLevels_of(image: np.ndarray) -> GreyLevels:
    levels = GreyLevels()
    levels.add(image)
    return levels


def test_grey_levels_from_counts_equal_numpy_percentiles():
    rng = np.random.default_rng(4)
    slices = [np.round(rng.uniform(0, 255, size=(17, 23))).astype(np.float32) for _ in range(3)]
    full = np.ones((17, 23), dtype=bool)
    levels = GreyLevels()
    for s in slices:
        levels.add(s, full)
    assert levels.counts is not None  # integer grey levels are kept as a histogram
    q = [0, 1, 10, 33.3, 50, 99, 100]
    np.testing.assert_allclose(levels.percentiles(q), np.percentile(np.concatenate([s.ravel() for s in slices]), q))


def test_mapping_is_monotone_even_with_tied_landmarks():
    rng = np.random.default_rng(5)
    x = np.linspace(-100, 400, 2001)
    for _ in range(20):
        source = np.sort(np.round(rng.uniform(0, 255, size=11)))
        source[3:5] = source[3]  # a flat stretch of the histogram: two landmarks coincide
        target = np.sort(rng.uniform(0, 255, size=11))
        assert np.all(np.diff(map_landmarks(x, source, target)) >= -1e-4)
    reference = _reference()
    image = _ct_like(np.random.default_rng(6), gain=0.5)
    out = standardize([image], reference)[0]
    order = np.argsort(image.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order]) >= -1e-4)  # brighter in, never darker out


def test_mapping_equals_torchio_histogram_standardization():
    torch = pytest.importorskip("torch")
    tio = pytest.importorskip("torchio")
    reference = _reference()
    x = np.random.default_rng(7).gamma(2.0, 30.0, size=(1, 20, 30, 4)).astype(np.float32)
    landmarks13 = np.zeros(13)  # torchio also computes the quartiles, which its mapping skips
    landmarks13[[0, 1, 2, 4, 5, 6, 7, 8, 10, 11, 12]] = reference.landmarks
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(x)))
    theirs = tio.HistogramStandardization({"image": landmarks13})(subject)["image"].data.numpy()
    ours = map_landmarks(x, np.percentile(x, HISTOGRAM_PERCENTILES), np.asarray(reference.landmarks))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-3)


def test_body_mask_drops_outside_air_but_keeps_dark_lungs():
    image = np.full((30, 30), 150.0, dtype=np.float32)
    image[:, :4] = 0.0  # outside air along the border
    image[10:20, 10:20] = 3.0  # dark lung inside the body
    mask = body_mask(image)
    assert not mask[:, :4].any() and mask[10:20, 10:20].all() and mask[:, 4:].all()


def test_slices_of_a_volume_share_one_mapping():
    assert volume_key("Data-1_coronacases_org_001_57") == "Data-1_coronacases_org_001"
    assert volume_key("Data-1_radiopaedia_org_covid-19-pneumonia-10_85902_3-dcm_100") == (
        "Data-1_radiopaedia_org_covid-19-pneumonia-10_85902_3-dcm"
    )
    assert volume_key("scan") == "scan"
    from covseg.data.sample import CaseRecord
    from covseg.training.semi.standardize import group_key

    rec = CaseRecord(case_id="Data-1_x_7", image=Path("u/Data-1_x_7.png"))
    assert group_key(rec, "volume") == "Data-1_x" and group_key(rec, "slice") == "Data-1_x_7"


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)


def _sha(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    return phantom_dataset(tmp_path_factory.mktemp("std") / "labelled", n=12, size=48, seed=8)


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory, labelled) -> Path:
    """Two 'volumes' of the labelled phantoms in another window; volume A's slice 2 darker than its slice 1."""
    root = tmp_path_factory.mktemp("std_u") / "unlabelled" / "images"
    images = sorted((labelled / "images").iterdir())
    for k, path in enumerate(images[:3], start=1):
        x = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
        _write(root / f"Data-1_volA_{k}.png", 0.3 * x + 10 - 5 * (k == 2))
        _write(root / f"Data-1_volB_{k}.png", 0.6 * x + 40)
    return root


def _setup(labelled: Path, unlabelled: Path, tmp_path: Path, **unlabeled):
    cfg = tiny_config(labelled, size=48, epochs=1)
    cfg["trainer"] = "cps"
    cfg["semi"] = {"unlabeled": {"root": str(unlabelled.parent), **unlabeled}}
    trainer = build_trainer(load_config(raw=cfg), tmp_path / "run", quiet=True)
    trainer.runtime = Runtime.create("cpu")
    trainer.setup_data()
    return trainer


def test_standardize_changes_only_the_unlabelled_images(labelled, unlabelled, tmp_path):
    before = {**_sha(labelled), **_sha(unlabelled)}
    plain = _setup(labelled, unlabelled, tmp_path / "a")
    std = _setup(labelled, unlabelled, tmp_path / "b", standardize="histogram")
    assert std.train_data.images.equal(plain.train_data.images)  # labelled training slices untouched
    assert all(np.array_equal(a, b) for a, b in zip(std.val_data.original_masks, plain.val_data.original_masks))
    assert [r.case_id for r in std.val_records] == [r.case_id for r in plain.val_records]
    labelled_mean = float(plain.train_data.images.mean())
    assert abs(float(std.unlabeled.images.mean()) - labelled_mean) < 0.25 * abs(float(plain.unlabeled.images.mean()) - labelled_mean)
    info = std.split_info["unlabeled"]["standardize"]
    assert info["method"] == "histogram" and info["per"] == "volume" and info["groups"] == 2
    assert "standardize" not in plain.split_info["unlabeled"]
    assert {**_sha(labelled), **_sha(unlabelled)} == before  # inputs never modified


def test_volume_mapping_is_shared_and_slice_mapping_is_not(labelled, unlabelled, tmp_path):
    ids = None
    maps = {}
    for per in ("volume", "slice"):
        trainer = _setup(labelled, unlabelled, tmp_path / per, standardize="histogram", standardize_per=per)
        ids = trainer.unlabeled.ids
        images = trainer.unlabeled.images
        maps[per] = {i: images[k] for k, i in enumerate(ids)}
        assert trainer.split_info["unlabeled"]["standardize"]["groups"] == (2 if per == "volume" else 6)
    a1, a2 = "Data-1_volA_1", "Data-1_volA_2"
    # per volume, slice 2 (5 grey levels darker on input) stays darker than slice 1 after mapping;
    # per slice, each is stretched onto the reference on its own and the difference all but vanishes
    gap_volume = float(maps["volume"][a1].mean() - maps["volume"][a2].mean())
    gap_slice = float(maps["slice"][a1].mean() - maps["slice"][a2].mean())
    assert gap_volume > 0.05 and abs(gap_slice) < 0.3 * gap_volume, (gap_volume, gap_slice)


@pytest.mark.parametrize(("key", "value"), [("standardize", "zscore"), ("standardize", True), ("standardize_per", "patient")])
def test_config_refuses_unknown_standardize_values(key, value, tmp_path):
    cfg = tiny_config(tmp_path, size=48)
    cfg["semi"] = {"unlabeled": {"root": str(tmp_path), key: value}}
    with pytest.raises(ConfigError, match=f"semi.unlabeled.{key}"):
        load_config(raw=cfg)
    cfg["semi"]["unlabeled"] = {"root": str(tmp_path), "standardize": "percentile", "standardize_per": "slice"}
    assert load_config(raw=cfg).semi.unlabeled.standardize == "percentile"
    assert load_config(raw=tiny_config(tmp_path), overrides=[f"semi.unlabeled.root={tmp_path}"]).semi.unlabeled.standardize == "none"


@pytest.mark.data
def test_coronacases_volume_moves_onto_the_labelled_grey_levels(real_data):
    from covseg.data.imageio import read_image

    data = real_data / "covid_semiseg_infnet"
    labelled = [read_image(p) for p in sorted((data / "train" / "images").iterdir())[:40]]
    reference = learn_reference(labelled, "histogram")
    volume = [read_image(p) for p in sorted((data / "unlabeled" / "images").glob("Data-1_coronacases_org_001_*"))]
    labelled_mean = np.mean([im.mean() for im in labelled])
    raw_mean = np.mean([im.mean() for im in volume])
    std_mean = np.mean([im.mean() for im in standardize(volume, reference)])
    assert labelled_mean - raw_mean > 60  # another window: about 58 against 142
    assert abs(std_mean - labelled_mean) < 15, (raw_mean, std_mean, labelled_mean)
