"""How much better the cascade's binary prior is on the slices it trained on than on held-out ones.

For each fold's ``resunet_all`` run of ``bench_covid_semiseg.py`` (the prior of the
``multiclass_prior`` variant), medical Dice@0.5 of its last checkpoint on the fold's 40 training
slices and on its 10 held-out slices. A large gap explains why the in-fold cascade hurts: the
multi-class model trains on a prior far better than the one it gets at test time.

Usage::

    python bench/bench_prior_overlap.py          # needs runs/bench/covid_semiseg/resunet_all/fold*

Results: ``bench/results/covid_semiseg/prior_train_vs_heldout.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cv_common import ROOT, machine

RUNS = ROOT / "runs" / "bench" / "covid_semiseg" / "resunet_all"
OUT = ROOT / "bench" / "results" / "covid_semiseg" / "prior_train_vs_heldout.json"


def fold_dice(run_dir: Path) -> dict[str, float]:
    import numpy as np
    import torch

    from covseg.data import load_sample
    from covseg.inference.predictor import Predictor
    from covseg.metrics.medical import MedicalMetrics
    from covseg.training.config import load_config
    from covseg.training.data import open_records

    torch.set_num_threads(1)
    cfg = load_config(run_dir / "config.yaml")
    splits = json.loads((run_dir / "splits.json").read_text())
    records = {r.case_id: r for r in open_records(cfg.data.root, cfg.data.layout, cfg.data.split)}
    predictor = Predictor.from_run(run_dir, checkpoint="last")
    out = {}
    for part in ("train", "val"):
        metrics = MedicalMetrics(num_classes=1, empty="one")
        for case_id in splits[part]:
            sample = load_sample(records[case_id])
            metrics.update(predictor.predict_image(sample.image).probs, (sample.mask > 0).astype(np.uint8), case_id=case_id)
        out[part] = float(np.mean([r["dice"] for r in metrics.per_case()]))
    return out


def main() -> None:
    folds = {}
    for k in range(5):
        run_dir = RUNS / f"fold{k}"
        if (run_dir / "checkpoints" / "last.pt").exists():
            folds[k] = fold_dice(run_dir)
            print(f"fold {k}: Dice {folds[k]['train']:.3f} on its training slices, {folds[k]['val']:.3f} held out", flush=True)
    summary = {"date": dt.date.today().isoformat(), "machine": machine(), "folds": folds}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
