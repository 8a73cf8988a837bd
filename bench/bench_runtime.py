"""Runtime benchmark suite: trainer overhead, inference engines, cost against input size (CPU; CUDA when present).

One command, every table measured side by side in the same run:

1. **Training throughput** (images/s) of ``covseg train`` against a bare PyTorch loop, both training
   MONAI's ``UNet`` (``monai_unet``, 2.41 M parameters: channels 16–256, 3 residual units) on the
   same in-memory COVID-SemiSeg slices (fold 0's 40 training slices at 256², batch 8, AdamW,
   Dice+BCE, same threads). covseg runs twice: with its default augmentation and with
   augmentation off (the bare loop has none); the overhead is covseg's time over the bare loop's.
   Rounds alternate the runners so a burst of load from other processes hits them alike.
2. **2D inference** at 352², batch 1 and 8: ``infnet`` in PyTorch and in onnxruntime (``covseg
   export``), against the MONAI U-Net in PyTorch; "equal Dice" is checked on fold 0's 10 held-out
   slices with models trained 40 epochs at 256² (the ONNX model must give the torch model's masks).
3. **Cost against size**: ``infnet`` forward time at 256², 352², 512², batch 1 and 8, torch and onnxruntime.
4. On a CUDA machine, the same training and inference on the GPU with AMP off / bf16 and peak memory.

Usage: ``python bench/bench_runtime.py [--threads 2] [--rounds 3]``; writes
``bench/results/runtime/runtime.json`` and ``runtime.md`` (the README tables).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_inference_speed import (
    MONAI_UNET_CONFIG,
    cpu_name,
    ort_runner,
    summarise,
    time_runners,
    torch_runner,
)
from covseg.utils.paths import data_root

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "runtime"
RUNS = ROOT / "runs" / "bench" / "runtime"
SEMISEG = "covid_semiseg_infnet/train"
TRAIN_SIZE = 256
MONAI_PARAMS = {"channels": list(MONAI_UNET_CONFIG["channels"]), "strides": list(MONAI_UNET_CONFIG["strides"]), "num_res_units": 3}
NO_AUGMENT = {"hflip": 0.0, "rotate_deg": 0.0, "scale": [1.0, 1.0], "brightness": 0.0, "contrast": 0.0, "p_spatial": 0.0}


def base_config(model: str, params: dict, epochs: int, augment: dict | None = None, device: str = "cpu", amp: str = "off") -> dict:
    cfg = {
        "name": f"runtime_{model}",
        "data": {"root": str(data_root() / SEMISEG), "folds": 5, "fold": 0},
        "preprocess": {"size": [TRAIN_SIZE, TRAIN_SIZE]},
        "model": {"name": model, "params": params},
        "loss": {"main": "dice_bce"},
        "optim": {"name": "adamw", "lr": 1e-3},
        "train": {"epochs": epochs, "batch_size": 8, "val_every": 10_000, "threads": torch.get_num_threads()},
        "runtime": {"device": device, "amp": amp},
    }
    if augment is not None:
        cfg["augment"] = augment
    return cfg


# ---------------------------------------------------------------------------------------- training


def covseg_epoch_runner(augment: dict | None, device: str = "cpu", amp: str = "off"):
    """A function training one more epoch with covseg's Trainer; returns (seconds, images)."""
    from covseg.training.config import load_config
    from covseg.training.trainer import build_trainer

    cfg = load_config(raw=base_config("monai_unet", MONAI_PARAMS, epochs=10_000, augment=augment, device=device, amp=amp))
    run = RUNS / f"throughput_{'aug' if augment is None else 'noaug'}_{device.replace(':', '')}_{amp}"
    import shutil

    shutil.rmtree(run, ignore_errors=True)
    trainer = build_trainer(cfg, run, quiet=True)
    trainer.setup()
    state = {"epoch": 0}

    def run_epoch() -> tuple[float, int]:
        sync(device)
        t0 = time.perf_counter()
        trainer.train_epoch(state["epoch"], lambda info: None)
        sync(device)
        state["epoch"] += 1
        return time.perf_counter() - t0, len(trainer.train_data)

    return run_epoch, trainer


def bare_epoch_runner(trainer, device: str = "cpu", amp: str = "off"):
    """The same model, data and optimiser in a plain loop: no augmentation, schedule, clipping or hooks."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    dev = torch.device(device)
    model = UNet(**MONAI_UNET_CONFIG).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = DiceCELoss(sigmoid=True)
    images, masks = trainer.train_data.images, trainer.train_data.masks
    gen = torch.Generator().manual_seed(0)
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]

    def run_epoch() -> tuple[float, int]:
        model.train()
        sync(device)
        t0 = time.perf_counter()
        perm = torch.randperm(len(images), generator=gen)
        for start in range(0, len(perm), 8):
            idx = perm[start : start + 8]
            x, y = images[idx].to(dev), masks[idx].to(dev)
            with torch.autocast(dev.type, dtype=dtype) if dtype else torch.autocast(dev.type, enabled=False):
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(device)
        return time.perf_counter() - t0, len(images)

    return run_epoch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def training_throughput(rounds: int, device: str = "cpu", amp: str = "off") -> dict:
    covseg_aug, trainer = covseg_epoch_runner(None, device, amp)
    covseg_noaug, _ = covseg_epoch_runner(NO_AUGMENT, device, amp)
    bare = bare_epoch_runner(trainer, device, amp)
    runners = {"covseg train (augmentation on)": covseg_aug, "covseg train (augmentation off)": covseg_noaug, "bare PyTorch loop": bare}
    for run in runners.values():
        run()  # warm-up epoch (allocator, oneDNN primitives)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds, images = runners[name]()
            rates[name].append(images / seconds)
    out = {name: {"images_per_s": statistics.median(v), "rounds": v} for name, v in rates.items()}
    bare_rate = out["bare PyTorch loop"]["images_per_s"]
    for name in names[:2]:
        out[name]["overhead_vs_bare"] = bare_rate / out[name]["images_per_s"] - 1.0
    if device.startswith("cuda"):
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


# ---------------------------------------------------------------------------------------- inference


def trained_run(model: str, params: dict, epochs: int) -> Path:
    """A run trained on fold 0 (reused when finished)."""
    from covseg.api import fit
    from covseg.training.config import load_config

    run = RUNS / f"{model}_fold0_e{epochs}"
    if not (run / "checkpoints" / "last.pt").exists() or len((run / "history.csv").read_text().splitlines()) <= epochs:
        cfg = base_config(model, params, epochs)
        cfg["train"]["val_every"] = epochs
        fit(load_config(raw=cfg), run, resume=(run / "checkpoints" / "last.pt").exists(), quiet=True)
    return run


def held_out_dice(predictor, records) -> float:
    from covseg.data import load_sample

    scores = []
    for rec in records:
        sample = load_sample(rec)
        pred, gt = predictor.predict_image(sample.image).labels > 0, sample.mask > 0
        scores.append(2 * float((pred & gt).sum()) / max(float(pred.sum() + gt.sum()), 1.0))
    return float(np.mean(scores))


def inference_table(threads: int, rounds: int, iters: int, size: int = 352) -> dict:
    from covseg.inference.exported import export_run, load_exported
    from covseg.inference.predictor import Predictor
    from covseg.runs import RunFolder
    from covseg.training.data import open_records

    infnet_run = trained_run("infnet", {}, 40)
    monai_run = trained_run("monai_unet", MONAI_PARAMS, 40)
    export_dir = RUNS / "infnet_export"
    export_run(infnet_run, "onnx", export_dir, "last")
    monai_export = RUNS / "monai_unet_export"
    export_run(monai_run, "onnx", monai_export, "last")
    val_ids = set(RunFolder(infnet_run).validation_case_ids())
    records = [r for r in open_records(str(data_root() / SEMISEG)) if str(r.case_id) in val_ids]
    infnet = Predictor.from_run(infnet_run, "last", device="cpu")
    dice = {
        "infnet (torch)": held_out_dice(infnet, records),
        "infnet (onnxruntime)": held_out_dice(load_exported(export_dir, "onnx"), records),
        "MONAI UNet (torch)": held_out_dice(Predictor.from_run(monai_run, "last", device="cpu"), records),
        "MONAI UNet (onnxruntime)": held_out_dice(load_exported(monai_export, "onnx"), records),
    }
    monai_model = Predictor.from_run(monai_run, "last", device="cpu").model
    runners = {
        "infnet (torch)": torch_runner(infnet.model),
        "infnet (onnxruntime)": ort_runner(export_dir / "model.onnx", threads),
        "MONAI UNet (torch)": torch_runner(monai_model),
        "MONAI UNet (onnxruntime)": ort_runner(monai_export / "model.onnx", threads),
    }
    table = {}
    for batch in (1, 8):
        x = np.random.default_rng(0).normal(size=(batch, 1, size, size)).astype(np.float32)
        times = time_runners(runners, x, rounds, iters)
        table[f"batch{batch}"] = {name: summarise(t, batch) for name, t in times.items()}
    base = {b: table[b]["MONAI UNet (torch)"]["slices_per_s"] for b in table}
    ratios = {b: table[b]["infnet (onnxruntime)"]["slices_per_s"] / base[b] for b in table}
    same_model = {b: table[b]["MONAI UNet (onnxruntime)"]["slices_per_s"] / base[b] for b in table}
    return {
        "size": size, "held_out_dice": dice, "speed": table, "onnxruntime_over_monai": ratios,
        "monai_onnxruntime_over_monai_torch": same_model,
    }


def scaling_table(threads: int, rounds: int, iters: int) -> dict:
    from covseg.models.export import export_onnx
    from covseg.runs.checkpoint import load_checkpoint, model_from_checkpoint

    run = trained_run("infnet", {}, 40)
    model = model_from_checkpoint(load_checkpoint(run / "checkpoints" / "last.pt")).eval()
    onnx_path = RUNS / "infnet_scaling.onnx"
    export_onnx(model, onnx_path, method="torchscript")
    runners = {"torch": torch_runner(model), "onnxruntime": ort_runner(onnx_path, threads)}
    out = {}
    for size in (256, 352, 512):
        for batch in (1, 8):
            x = np.random.default_rng(1).normal(size=(batch, 1, size, size)).astype(np.float32)
            times = time_runners(runners, x, rounds, iters)
            out[f"{size}x{size} batch{batch}"] = {name: summarise(t, batch) for name, t in times.items()}
    return out


# -------------------------------------------------------------------------------------------- report


def markdown(results: dict) -> str:
    lines = [f"Measured {results['date']} on {results['machine']}; load average {results['load_before']} before, {results['load_after']} after.", ""]
    tr = results["training"]["cpu"]
    lines += ["| trainer (MONAI UNet, 256², batch 8) | images/s | overhead vs bare loop |", "|---|---|---|"]
    for name, r in tr.items():
        if isinstance(r, dict):
            over = r.get("overhead_vs_bare")
            lines.append(f"| {name} | {r['images_per_s']:.2f} | {'' if over is None else f'{100 * over:+.1f} %'} |")
    inf = results["inference"]
    if "measured" in inf:
        lines += ["", f"Inference table re-measured {inf['measured']} (load average {inf['load'][0]} before, {inf['load'][1]} after)."]
    lines += ["", f"| model at {inf['size']}² | held-out Dice (fold 0) | batch 1 slices/s | batch 8 slices/s |", "|---|---|---|---|"]
    for name, dice in inf["held_out_dice"].items():
        b1, b8 = inf["speed"]["batch1"][name]["slices_per_s"], inf["speed"]["batch8"][name]["slices_per_s"]
        lines.append(f"| {name} | {dice:.3f} | {b1:.1f} | {b8:.1f} |")
    r = inf["onnxruntime_over_monai"]
    lines += ["", f"infnet in onnxruntime / MONAI UNet in torch: {r['batch1']:.2f}× (batch 1), {r['batch8']:.2f}× (batch 8)."]
    if "monai_onnxruntime_over_monai_torch" in inf:
        r = inf["monai_onnxruntime_over_monai_torch"]
        lines += [f"MONAI UNet in onnxruntime / the same model in torch (equal Dice): {r['batch1']:.2f}× (batch 1), {r['batch8']:.2f}× (batch 8)."]
    lines += [""]
    lines += ["| infnet input | torch slices/s | onnxruntime slices/s |", "|---|---|---|"]
    for key, r in results["scaling"].items():
        lines.append(f"| {key} | {r['torch']['slices_per_s']:.1f} | {r['onnxruntime']['slices_per_s']:.1f} |")
    if "cuda" in results["training"]:
        lines += ["", "| CUDA trainer | images/s | peak MiB |", "|---|---|---|"]
        for amp, tr in results["training"]["cuda"].items():
            lines.append(f"| covseg train, amp {amp} | {tr['covseg train (augmentation on)']['images_per_s']:.1f} | {tr.get('peak_memory_mb', 0):.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--only", choices=["inference"], help="re-measure one table, keep the others from runtime.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("COVSEG_THREADS", str(args.threads))
    OUT.mkdir(parents=True, exist_ok=True)
    if args.only == "inference":
        results = json.loads((OUT / "runtime.json").read_text())
        load_before = round(os.getloadavg()[0], 2)
        results["inference"] = inference_table(args.threads, args.rounds, args.iters)
        results["inference"]["measured"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        results["inference"]["load"] = [load_before, round(os.getloadavg()[0], 2)]
        (OUT / "runtime.json").write_text(json.dumps(results, indent=1))
        (OUT / "runtime.md").write_text(markdown(results))
        print(markdown(results))
        return
    results: dict = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads",
        "load_before": round(os.getloadavg()[0], 2),
        "training": {"cpu": training_throughput(args.rounds)},
    }
    results["inference"] = inference_table(args.threads, args.rounds, args.iters)
    results["scaling"] = scaling_table(args.threads, args.rounds, args.iters)
    if torch.cuda.is_available():
        results["training"]["cuda"] = {amp: training_throughput(args.rounds, "cuda", amp) for amp in ("off", "bf16")}
    results["load_after"] = round(os.getloadavg()[0], 2)
    (OUT / "runtime.json").write_text(json.dumps(results, indent=1))
    (OUT / "runtime.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
