"""The speed-ups of ``covseg evaluate`` change no number: threshold shortcut, threaded reading, case_records."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from covseg.errors import DataError
from covseg.metrics import FlareMetrics, MedicalMetrics
from covseg.metrics._arrays import binarise_soft_map, soft_map
from covseg.metrics.evaluation import evaluate_cases, make_accumulator, pair_cases, read_ahead


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 128 / 255, 0.5000001, 0.999, 1.0])
def test_binarise_soft_map_is_the_float_comparison(dtype, threshold):
    values = np.arange(np.iinfo(dtype).max + 1, dtype=dtype).reshape(-1, 256)  # every stored value
    expected = (soft_map(values) >= threshold).astype(np.uint8)
    got = binarise_soft_map(values, threshold)
    assert got.dtype == np.uint8 and np.array_equal(got, expected)


def test_binarise_soft_map_floats_and_small_ints_unchanged():
    rng = np.random.default_rng(0)
    floats = rng.random((32, 32))
    assert np.array_equal(binarise_soft_map(floats, 0.5), (floats >= 0.5).astype(np.uint8))
    ints = rng.integers(0, 256, (16, 16)).astype(np.int32)  # values <= 255: divided by 255 as well
    assert np.array_equal(binarise_soft_map(ints, 0.5), (ints / 255 >= 0.5).astype(np.uint8))
    with pytest.raises(ValueError, match="negative"):
        binarise_soft_map(np.array([[-1, 3]]), 0.5)


def _pairs(rng, n, size=48):
    out = []
    for _ in range(n):
        gt = np.zeros((size, size), bool)
        y, x = rng.integers(6, size - 18, 2)
        gt[y : y + rng.integers(4, 12), x : x + rng.integers(4, 12)] = True
        pred = np.clip(np.roll(gt, rng.integers(-2, 3), axis=0) * 200 + rng.integers(0, 80, gt.shape), 0, 255)
        out.append((pred.astype(np.uint8), gt.astype(np.uint8)))
    return out


@pytest.mark.parametrize("cls", [MedicalMetrics, FlareMetrics])
def test_case_records_equal_update_records(cls):
    rng = np.random.default_rng(1)
    by_update, by_records = cls(tolerance=1.0), cls(tolerance=1.0)
    for i, (pred, gt) in enumerate(_pairs(rng, 6)):
        by_update.update(pred, gt, spacing=(0.7, 0.8), case_id=f"c{i}")
        records = by_records.case_records(pred, gt, (0.7, 0.8), f"c{i}")
        assert len(by_records) == i  # nothing recorded by case_records
        by_records.add_records(f"c{i}", records)
    a, b = by_update.per_case(), by_records.per_case()
    assert [list(r) for r in a] == [list(r) for r in b]  # same columns in the same order
    assert np.array_equal(
        np.array([[r[k] for k in r if k not in ("case_id", "spacing")] for r in a], float),
        np.array([[r[k] for k in r if k not in ("case_id", "spacing")] for r in b], float),
        equal_nan=True,
    )


def test_read_ahead_keeps_order_and_errors():
    def read(i):
        if i == 3:
            raise DataError("broken", f"f{i}")
        return i * 10

    for threads in (1, 4):
        futures = list(read_ahead(list(range(8)), read, threads=threads))
        assert [f.exception() is not None for f in futures] == [i == 3 for i in range(8)]
        assert [f.result() for i, f in enumerate(futures) if i != 3] == [i * 10 for i in range(8) if i != 3]


def _comparable(records):
    """Records with NaN as a string, so that equal runs compare equal (NaN != NaN)."""
    return [{k: "nan" if isinstance(v, float) and v != v else v for k, v in r.items()} for r in records]


def test_threaded_evaluation_equals_sequential(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    for i, (pred, gt) in enumerate(_pairs(rng, 12)):
        Image.fromarray(pred).save(tmp_path / "pred" / f"{i:02d}.png")
        Image.fromarray(gt * 255).save(tmp_path / "gt" / f"{i:02d}.png")
    (tmp_path / "pred" / "05.png").write_bytes(b"not a png")  # a bad case in the middle
    cases, _, _ = pair_cases(tmp_path / "pred", tmp_path / "gt")
    runs = {}
    for threads in (1, 4):
        monkeypatch.setattr("covseg.metrics.evaluation.READ_THREADS", threads)
        runs[threads] = evaluate_cases(cases, make_accumulator("medical"), spacing=(0.7, 0.7))
    one, four = runs[1], runs[4]
    assert [c.case_id for c in one.cases] == [c.case_id for c in four.cases] and len(one.cases) == 11
    assert [str(b) for b in one.bad] == [str(b) for b in four.bad] and "05.png" in str(one.bad[0])
    assert _comparable(one.accumulator.per_case()) == _comparable(four.accumulator.per_case())
    with pytest.raises(DataError, match=r"05\.png"):
        evaluate_cases(cases, make_accumulator("medical"), spacing=(0.7, 0.7), strict=True)
