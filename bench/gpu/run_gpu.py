"""The shipped recipes at the papers' scale on one GPU, in about ten minutes, as one prepared script.

On a CUDA machine it runs, one after the other, each step a subprocess of the CPU benchmarks with
device and precision overrides, writing the same result files as they do (with a ``gpu`` tag):

- CT, 5-fold cross-validation (``bench_covid_semiseg.py --tag gpu``): the ResUNet with the pretrained
  EfficientNet-Lite0 and Lite2 encoders and with random init, and the multi-class model, each at
  100 epochs and Inf-Net's 352² (the CPU tables use 256²), bf16 autocast, three folds at a time;
- X-ray (``bench_qata_text.py --tag gpu``): the image-only U-Net and text-guided C2FVL trained on the
  1,000 QaTa train images for 40 epochs (the CPU recipe: 10), scored on all 1,429 valid images.

``--toy`` runs the same steps on the CPU at toy size (64², one epoch, one fold, 16 QaTa images) so
the script is checked end to end where no GPU is lent; its results go to ``*_gputoy`` files that git
ignores. Each step is bounded by ``--step-timeout``; a step that fails or times out is recorded and
the next one runs. ``bench/results/gpu/summary[_toy].json`` lists the steps, their exit codes and
wall times, and the device.

Usage::

    python bench/gpu/run_gpu.py            # on a machine with a CUDA GPU
    python bench/gpu/run_gpu.py --toy      # CPU smoke run of the same steps
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
OUT = BENCH / "results" / "gpu"

CT_VARIANTS = "resunet_all_effl0_e100,resunet_all_effl2_e100,resunet_all_e100,multiclass_e100"


def steps(toy: bool) -> list[tuple[str, list[str]]]:
    """(name, argv) of each step; toy mode swaps the device and the sizes, nothing else."""
    py = sys.executable
    if toy:
        tag = "gputoy"
        device = ["runtime.device=cpu", "runtime.amp=bf16"]
        ct = [*device, "preprocess.size=[64,64]", "train.epochs=1", "train.val_every=1"]
        ct_args = ["--folds", "0", "--parallel", "1"]
        qata = ["--epochs", "1", "--limit", "16", "--val-limit", "16", "--threads", "1"]
    else:
        tag = "gpu"
        device = ["runtime.device=cuda", "runtime.amp=bf16", "runtime.workers=4"]
        ct = [*device, "preprocess.size=[352,352]"]
        ct_args = ["--folds", "0,1,2,3,4", "--parallel", "3"]
        qata = ["--epochs", "40", "--threads", "4"]
    return [
        ("ct_cv", [py, str(BENCH / "bench_covid_semiseg.py"), "--variants", CT_VARIANTS, "--tag", tag, *ct_args,
                   *(f"--override={o}" for o in ct)]),
        ("qata", [py, str(BENCH / "bench_qata_text.py"), "--models", "unet,c2fvl", "--tag", tag, "--quiet", *qata,
                  *(f"--override={o}" for o in device)]),
    ]  # fmt: skip


def device_name(toy: bool) -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    if not toy:
        raise SystemExit("no CUDA device here; use --toy for the CPU smoke run")
    return "cpu"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--toy", action="store_true", help="CPU, toy size: check the script end to end")
    ap.add_argument("--only", default="", help="comma list of step names to run (default: all)")
    ap.add_argument("--step-timeout", type=float, default=540.0, help="seconds a step may take")
    args = ap.parse_args()
    record = {"date": dt.datetime.now().isoformat(timespec="seconds"), "device": device_name(args.toy), "toy": args.toy, "steps": []}
    wanted = set(filter(None, args.only.split(",")))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    OUT.mkdir(parents=True, exist_ok=True)
    for name, argv in steps(args.toy):
        if wanted and name not in wanted:
            continue
        print(f"== {name}: {' '.join(argv[1:])}", flush=True)
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(argv, cwd=ROOT, env=env, timeout=args.step_timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        record["steps"].append({"name": name, "argv": argv[1:], "exit": rc, "wall_seconds": round(time.perf_counter() - t0, 1)})
        (OUT / f"summary{'_toy' if args.toy else ''}.json").write_text(json.dumps(record, indent=1))
        print(f"== {name}: exit {rc} in {record['steps'][-1]['wall_seconds']} s", flush=True)
    if any(s["exit"] != 0 for s in record["steps"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
