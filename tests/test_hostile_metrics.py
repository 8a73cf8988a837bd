"""Issue 25, metrics: ``covseg evaluate --toolbox matlab`` against what Inf-Net's MATLAB toolbox does
with the same files, and ``per_case.csv`` keeping numbers as numbers.

* ground truth: ``main.m`` reads a mask file as ``gt(:,:,1) > 128``, so a 0/1 mask is empty to it;
  the matlab modes follow it (and say which cases it changed), the default variant does not;
* versions: ``matlab`` is ``main.m`` at fb3a03b (the published numbers), ``matlab-2020-11`` at
  e723632 (E-measure at ``>=``);
* ``per_case.csv``: a negative number is a number, not text behind the formula guard.
"""

from __future__ import annotations

import csv
import math

import numpy as np

SIZE = 32


def run_cli(args: list) -> int:
    from covseg.cli.main import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def test_negative_metric_reads_back_as_a_number(tmp_path):
    """per_case.csv: a negative metric is written as a number; only text gets the formula guard."""
    from covseg.metrics.base import MetricAccumulator
    from covseg.metrics.evaluation import Case, EvaluationRun, write_outputs

    class SignedError(MetricAccumulator):
        protocol = "signed"
        metric_names = ("volume_error",)
        primary_metric = "volume_error"

        def update(self, pred, gt, spacing=None, case_id=None):
            record = {"case_id": self._next_case_id(case_id), "volume_error": float(np.sum(pred) - np.sum(gt)) / 100}
            self._records.append(record)
            return dict(record)

    acc = SignedError()
    acc.update(np.zeros(13), np.ones(13), case_id="-2+3")  # a name that looks like a formula
    acc.update(np.ones(2), np.zeros(2), case_id="b")
    acc.update(np.zeros(1), np.zeros(1), case_id="c")
    acc._records[2]["volume_error"] = np.float64("nan")
    run = EvaluationRun(accumulator=acc, cases=[Case(c, None, tmp_path / f"{c}.png") for c in ("-2+3", "b", "c")])
    write_outputs(run, tmp_path / "out")
    with (tmp_path / "out" / "per_case.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["volume_error"] for r in rows] == ["-0.13", "0.02", "nan"]
    assert float(rows[0]["volume_error"]) == -0.13 and math.isnan(float(rows[2]["volume_error"]))
    assert rows[0]["case_id"] == "'-2+3"  # text is still neutralised
