"""Behaviour before and after a refactoring: predictions of run folders and tiny training runs.

Issue 26 asks that the renovation leave behaviour unchanged. This script records, under whichever
``covseg`` is first on ``PYTHONPATH``:

- **prediction**: for each run folder in ``--zoo`` (``covid-ct-infection``, ``covid-ct-multiclass``,
  ``covid-cxr``) on the first real slices (torch engine, CPU, one thread): the soft map's shape and
  sum, its values on a 5×5 grid, and the label counts;
- **training**: tiny runs on phantoms (a U-Net; CPS with the uncertainty filter; the mean teacher),
  two epochs each: the history (losses, learning rate, validation Dice) and a SHA-256 of each
  checkpoint's model weights.

Run it once per source tree and compare the JSON files (``--compare A B``). ``--write-assets``
writes the tolerance-checked subset that ``tests/*/test_golden_*.py`` compare against (digests are
left out there: other CPUs take other oneDNN paths, so bit equality holds per machine only).

    PYTHONPATH=OLD/src python bench/golden_behaviour.py --tests-root OLD --zoo OLD/src/covseg/zoo --out old.json
    PYTHONPATH=src python bench/golden_behaviour.py --zoo OLD/src/covseg/zoo --out new.json
    python bench/golden_behaviour.py --compare old.json new.json
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREDICTION_MODELS = ("covid-ct-infection", "covid-ct-multiclass", "covid-cxr")


def _read_image(path: Path):
    try:
        from covseg.data.image_files import read_image
    except ImportError:  # the module's name before the renovation
        from covseg.data.imageio import read_image
    return read_image(path)


def prediction_values(zoo: Path, data: Path) -> dict:
    import numpy as np

    from covseg.inference.predictor import Predictor

    ct = sorted((data / "covid_semiseg_infnet" / "train" / "images").iterdir())[:3]
    cxr = sorted((data / "qata_cov19_sgseg" / "train" / "images").iterdir())[:2]
    out = {}
    for name in PREDICTION_MODELS:
        try:
            predictor = Predictor.from_run(zoo / name, device="cpu", engine="torch")
        except TypeError:  # before engines existed
            predictor = Predictor.from_run(zoo / name, device="cpu")
        rows = []
        for path in cxr if name == "covid-cxr" else ct:
            result = predictor.predict_image(_read_image(path))
            probs = np.asarray(result.probs, dtype=np.float64)
            h, w = probs.shape[-2:]
            ys, xs = np.linspace(0, h - 1, 5).astype(int), np.linspace(0, w - 1, 5).astype(int)
            rows.append({
                "file": path.name, "shape": list(probs.shape), "sum": float(probs.sum()),
                "labels": np.bincount(np.asarray(result.labels).ravel()).tolist(),
                "grid": probs[..., ys[:, None], xs[None, :]].round(6).tolist(),
            })  # fmt: skip
        out[name] = rows
    return out


def _weights_digest(path: Path) -> str:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model_state", state)
    digest = hashlib.sha256()
    for key in sorted(state):
        if torch.is_tensor(state[key]):
            digest.update(key.encode())
            digest.update(state[key].float().numpy().tobytes())
    return digest.hexdigest()[:16]


def training_values(tests_root: Path, work: Path) -> dict:
    sys.path.insert(0, str(tests_root))
    from covseg.training.config import load_config
    from covseg.training.trainer import build_trainer

    from tests.helpers import phantom_dataset, tiny_config

    labelled = phantom_dataset(work / "data" / "labelled", n=16, size=48, seed=5)
    unlabelled = phantom_dataset(work / "data" / "unlabelled", n=20, size=48, seed=6) / "images"
    configs = {"unet": tiny_config(labelled, size=48, epochs=2)}
    semi = {
        "cps": {"weight": 1.0, "rampup_epochs": 0, "uif": {"enabled": True, "keep_fraction": 0.25, "rescore_every": 1}},
        "mean_teacher": {"rampup_epochs": 0},
    }
    for trainer, section in semi.items():
        config = tiny_config(labelled, size=48, epochs=2, optim__lr=5e-3)
        config["trainer"] = trainer
        config["semi"] = {"unlabeled": {"root": str(unlabelled.parent), "split": None}, trainer: section}
        configs[trainer] = config
    out: dict = {}
    for name, config in configs.items():
        run = work / name
        try:
            build_trainer(load_config(raw=config), run, quiet=True).fit()
        except Exception as exc:  # a trainer this tree does not have
            out[name] = f"not run: {type(exc).__name__}"
            continue
        with (run / "history.csv").open() as f:
            history = [{k: v for k, v in row.items() if "time" not in k and "cpu" not in k} for row in csv.DictReader(f)]
        digests = {str(p.relative_to(run)): _weights_digest(p) for p in sorted(run.glob("checkpoints/*.pt"))}
        out[name] = {"history": history, "digests": digests}
    return out


def compare(a_path: Path, b_path: Path) -> int:
    import numpy as np

    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    differences = 0
    for name, rows in a["prediction"].items():
        for ra, rb in zip(rows, b["prediction"][name], strict=True):
            grid = float(np.abs(np.array(ra["grid"]) - np.array(rb["grid"])).max())
            same = ra["shape"] == rb["shape"] and ra["labels"] == rb["labels"] and ra["sum"] == rb["sum"] and grid == 0.0
            differences += not same
            verdict = "identical" if same else f"DIFFERENT (sum {ra['sum']} vs {rb['sum']}, grid {grid:.2e})"
            print(f"prediction {name} {ra['file']}: {verdict}")
    for name, ta in a["training"].items():
        tb = b["training"].get(name)
        if isinstance(ta, str) or isinstance(tb, str):
            print(f"training {name}: {ta if isinstance(ta, str) else 'run'} / {tb if isinstance(tb, str) else 'run'} (not compared)")
            continue
        same = ta == tb
        differences += not same
        print(f"training {name}: {'identical (history and weight digests)' if same else 'DIFFERENT'}")
    return 1 if differences else 0


def write_assets(result: dict, path: Path) -> None:
    """The subset the golden tests check with tolerances (no digests: they are per machine)."""
    assets = {
        "prediction": result["prediction"],
        "training": {k: v["history"] for k, v in result["training"].items() if not isinstance(v, str)},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(assets, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=ROOT / "src" / "covseg" / "zoo")
    parser.add_argument("--tests-root", type=Path, default=ROOT)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("COVSEG_DATA", ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--write-assets", type=Path, help="also write the golden tests' file here")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("A", "B"))
    args = parser.parse_args()
    if args.compare:
        raise SystemExit(compare(*args.compare))
    import torch

    torch.set_num_threads(1)
    os.environ["COVSEG_ENGINE"] = "torch"
    with tempfile.TemporaryDirectory() as tmp:
        result = {"prediction": prediction_values(args.zoo, args.data), "training": training_values(args.tests_root, Path(tmp))}
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)
    if args.write_assets:
        write_assets(result, args.write_assets)


if __name__ == "__main__":
    main()
