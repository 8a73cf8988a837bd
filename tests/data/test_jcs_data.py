"""Image-level labels for joint training: labels CSV, extra sources, label-only cases in batches, phantom negatives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from covseg.data.imageio import write_image
from covseg.data.labels import apply_labels_csv, label_from_mask, read_labels_csv
from covseg.data.layouts import detect_layout
from covseg.data.synthetic import is_negative_case, write_phantom_dataset
from covseg.errors import ConfigError, DataError
from covseg.training.config import load_config
from covseg.training.data import build_tensors, split_records
from covseg.training.sampling import ImageSampler
from covseg.transforms.augment import AugmentConfig
from covseg.transforms.preprocess import Preprocessing

from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("jcsdata") / "data", n=12, size=48, seed=2, negatives=0.5)


def test_phantom_negatives_are_lesion_free_and_listed(phantoms):
    from covseg.data.imageio import read_mask

    rows = (phantoms / "labels.csv").read_text().splitlines()
    assert rows[0] == "image,label" and len(rows) == 13
    for i, row in enumerate(rows[1:]):
        mask = read_mask(phantoms / "masks" / f"phantom_{i:04d}.png")
        assert int(row.split(",")[1]) == label_from_mask(mask) == int(not is_negative_case(i, 0.5))
    assert 4 <= sum(r.endswith(",0") for r in rows[1:]) <= 8
    # a labels CSV (image,label = class) is not mistaken for a pair list: the folder layout is still found
    assert detect_layout(phantoms) == "folder"


def _label_only_images(root: Path, n: int = 3) -> list[Path]:
    paths = []
    for i in range(n):
        path = root / "cls_only" / f"extra_{i}.png"
        write_image(path, np.full((48, 48), 40 * (i + 1), dtype=np.uint8))
        paths.append(path)
    return paths


def test_labels_csv_names_matching_label_only_rows_and_errors(phantoms, tmp_path):
    extra = _label_only_images(tmp_path)
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "image,label\n"
        f"{phantoms}/images/phantom_0001.png,healthy\n"  # overrides the mask rule for a dataset case
        "phantom_0002,covid\n"  # a stem of a dataset case
        f"cls_only/{extra[0].name},covid\n"  # relative to the CSV: a label-only case
        f"{extra[1]},1\n"
    )
    table = read_labels_csv(csv, ["healthy", "covid"])
    from covseg.data import open_dataset

    records = list(open_dataset(phantoms).records)
    matched, label_only = apply_labels_csv(records, table)
    by_id = {r.case_id: r for r in matched}
    assert by_id["phantom_0001"].label == 0 and by_id["phantom_0002"].label == 1
    assert by_id["phantom_0003"].label is None  # not listed: the mask rule decides later
    assert [(r.case_id, r.label, r.mask) for r in label_only] == [("extra_0", 1, None), ("extra_1", 1, None)]

    csv.write_text("image,label\nphantom_0001.png,covid-ish\n")
    with pytest.raises(DataError, match="row 2: label 'covid-ish' is not one of healthy, covid"):
        read_labels_csv(csv, ["healthy", "covid"])
    csv.write_text("image,label\nphantom_0001.png,pneumonia\n")
    with pytest.raises(DataError, match=r"set data\.label_names"):
        read_labels_csv(csv)
    csv.write_text("image,label\nmissing.png,1\n")
    with pytest.raises(DataError, match=r"row 2: image .missing\.png. is neither a file nor a case"):
        apply_labels_csv(records, read_labels_csv(csv))
    csv.write_text("image,label\na.png,1\na.png,0\n")
    with pytest.raises(DataError, match="already listed on row 2"):
        read_labels_csv(csv)
    csv.write_text("file,diagnosis\n")
    with pytest.raises(DataError, match="column 'label' not found"):
        read_labels_csv(csv)


def test_label_only_cases_reach_the_batch_without_a_mask(phantoms, tmp_path):
    _label_only_images(tmp_path, 4)
    csv = tmp_path / "labels.csv"
    csv.write_text("image,label\n" + "".join(f"cls_only/extra_{i}.png,{i % 2}\n" for i in range(4)))
    cfg = load_config(raw=tiny_config(phantoms, size=48, data__labels=str(csv), data__folds=2)).data
    train, val, _ = split_records(cfg)
    records = train + val
    assert len(records) == 16 and sum(r.mask is None for r in records) == 4
    tensors = build_tensors(records, Preprocessing(size=(48, 48)), cfg, keep_originals=True)
    assert tensors.has_mask.tolist() == [r.mask is not None for r in records]
    assert sorted(set(tensors.label_sources)) == ["csv", "masks"]
    assert all((tensors.original_masks[i] is None) == (r.mask is None) for i, r in enumerate(records))
    only = [i for i, r in enumerate(records) if r.mask is None]
    assert float(tensors.masks[only].abs().sum()) == 0.0  # placeholders, kept out of the loss by has_mask
    sampler = ImageSampler(tensors, batch_size=16, augment=AugmentConfig(hflip=0.5))
    batch = sampler.batch(torch.arange(16), torch.Generator().manual_seed(0))
    assert batch["label"].tolist() == tensors.labels.tolist()
    assert batch["has_mask"].tolist() == tensors.has_mask.tolist()


def test_extra_sources_join_before_the_split(phantoms, tmp_path):
    negatives = tmp_path / "neg"
    for i in range(4):
        write_image(negatives / "images" / f"neg_{i}.png", np.full((40, 40), 90, dtype=np.uint8))
    raw = tiny_config(phantoms, size=48, data__folds=2, data__extra=[{"root": str(negatives), "masks": "empty"}])
    cfg = load_config(raw=raw).data
    assert cfg.extra[0].label == 0  # infection-free: class 0 unless said otherwise
    train, val, _ = split_records(cfg)
    records = train + val
    assert len(records) == 16
    tensors = build_tensors(records, Preprocessing(size=(48, 48)), cfg)
    extra = [i for i, r in enumerate(records) if r.case_id.startswith("neg_")]
    assert tensors.has_mask[extra].all() and (tensors.labels[extra] == 0).all()  # empty masks train segmentation too
    assert {tensors.label_sources[i] for i in extra} == {"extra"}
    with pytest.raises(ConfigError, match="masks: none"):
        load_config(raw=tiny_config(phantoms, data__extra=[{"root": str(negatives), "masks": "none"}]))
    clash = tiny_config(phantoms, data__extra=[{"root": str(phantoms)}])
    with pytest.raises(DataError, match="occurs in several sources"):
        split_records(load_config(raw=clash).data)


def test_train_only_extra_sources_keep_the_folds(phantoms, tmp_path):
    """``train_only`` negatives join every fold's training cases; the root's folds stay as without them."""
    negatives = tmp_path / "neg"
    for i in range(4):
        write_image(negatives / "images" / f"neg_{i}.png", np.full((40, 40), 90, dtype=np.uint8))
    for fold in (0, 1):
        plain = split_records(load_config(raw=tiny_config(phantoms, size=48, data__folds=2, data__fold=fold)).data)
        extra = [{"root": str(negatives), "masks": "empty", "train_only": True}]
        joined = split_records(load_config(raw=tiny_config(phantoms, size=48, data__folds=2, data__fold=fold, data__extra=extra)).data)
        assert [r.case_id for r in joined[1]] == [r.case_id for r in plain[1]]  # the same validation cases
        assert [r.case_id for r in joined[0]] == [r.case_id for r in plain[0]] + [f"neg_{i}" for i in range(4)]
        assert joined[2]["train"][-4:] == [f"neg_{i}" for i in range(4)]
