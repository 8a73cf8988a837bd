"""Inference speed of Inf-Net on CPU at 352² (slices/s), against a MONAI U-Net of similar size.

Measured in one run, on the same threads and inputs:

- ``infnet`` default (light residual encoder, random init) and ``infnet`` with the
  ImageNet-pretrained ``efficientnet-lite0`` encoder, in PyTorch (eval, ``torch.inference_mode``);
- the same two models exported to ONNX (``covseg.models.export``, dynamo exporter) and run by
  onnxruntime (CPU provider, same thread count);
- the baseline ``monai.networks.nets.UNet(spatial_dims=2, in_channels=1, out_channels=1,
  channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=3)`` — 2.41 M parameters
  against Inf-Net's 2.45 M.

Timing: batch sizes 1 and 8, one warm-up call per runner, then ``--rounds`` rounds in which
every runner does ``--iters`` timed calls (runner order rotates per round, so a burst of load
from other processes on a shared machine hits all of them alike); the median time per call is
reported (slices/s = batch / median) with the 10th–90th percentile range. The 1-minute load
average before and after is saved with the results: a busy machine shows up there.

Usage: ``python bench/bench_inference_speed.py [--threads 2] [--rounds 5] [--iters 3]``.
Writes ``bench/results/inference_speed.json`` and ``inference_speed.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
import torch

from covseg.models import build_model
from covseg.models.export import ONNX_INPUT, export_onnx
from cv_common import cpu_name

TARGET_SLICES_PER_S = 20.0
RESULTS = Path(__file__).resolve().parent / "results"
MONAI_UNET_CONFIG = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 1,
    "channels": (16, 32, 64, 128, 256),
    "strides": (2, 2, 2, 2),
    "num_res_units": 3,
}
INFNET_VARIANTS = {
    "infnet": {"in_channels": 1},
    "infnet-lite0": {"in_channels": 1, "encoder": "efficientnet-lite0", "pretrained": True},
}


def torch_runner(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return run


def ort_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {ONNX_INPUT: x})[0]

    return run


def time_runners(
    runners: dict[str, Callable[[np.ndarray], np.ndarray]], batch: np.ndarray, rounds: int, iters: int
) -> dict[str, list[float]]:
    """Seconds per call for every runner, interleaved round by round."""
    for run in runners.values():
        run(batch)  # warm-up (allocator, ORT arena, oneDNN primitive caches)
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            for _ in range(iters):
                start = time.perf_counter()
                runners[name](batch)
                times[name].append(time.perf_counter() - start)
    return times


def summarise(seconds: list[float], batch_size: int) -> dict[str, float]:
    q = np.percentile(seconds, [10, 50, 90])
    return {
        "median_s_per_call": float(statistics.median(seconds)),
        "slices_per_s": batch_size / float(statistics.median(seconds)),
        "slices_per_s_p10_p90": [batch_size / float(q[2]), batch_size / float(q[0])],
        "calls": len(seconds),
    }


def plot(results: list[dict], path: Path, subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runtime_order = {"torch": 0, "onnxruntime": 1}
    model_order = {name: i for i, name in enumerate(dict.fromkeys(r["model"] for r in results))}
    labels = sorted(
        {(r["model"], r["runtime"]) for r in results}, key=lambda k: (model_order[k[0]], runtime_order[k[1]])
    )
    batch_sizes = sorted({r["batch_size"] for r in results})
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(batch_sizes)
    for i, bs in enumerate(batch_sizes):
        values = [
            next(
                r["slices_per_s"]
                for r in results
                if (r["model"], r["runtime"]) == lab and r["batch_size"] == bs
            )
            for lab in labels
        ]
        xs = np.arange(len(labels)) + (i - (len(batch_sizes) - 1) / 2) * width
        bars = ax.bar(xs, values, width, label=f"batch {bs}")
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.axhline(
        TARGET_SLICES_PER_S, color="k", linestyle="--", linewidth=1, label=f"target {TARGET_SLICES_PER_S:g}/s"
    )
    ax.set_xticks(np.arange(len(labels)), [f"{m}\n{rt}" for m, rt in labels], fontsize=8)
    ax.set_ylabel("slices / s (352², CPU)")
    ax.set_title(
        f"Inference speed, {torch.get_num_threads()} torch / onnxruntime threads\n{subtitle}", fontsize=10
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=352)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--onnx-method", choices=["dynamo", "torchscript"], default="dynamo")
    parser.add_argument("--skip-onnx", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_start = os.getloadavg()[0]

    from monai.networks.nets import UNet as MonaiUNet

    models: dict[str, torch.nn.Module] = {
        name: build_model("infnet", **kw) for name, kw in INFNET_VARIANTS.items()
    }
    models["monai-unet"] = MonaiUNet(**MONAI_UNET_CONFIG)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    runners: dict[tuple[str, str], Callable[[np.ndarray], np.ndarray]] = {
        (name, "torch"): torch_runner(m) for name, m in models.items()
    }

    onnx_diff: dict[str, float] = {}
    export_seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_onnx:
            probe = np.random.default_rng(0).standard_normal((1, 1, args.size, args.size)).astype(np.float32)
            for name in INFNET_VARIANTS:
                start = time.perf_counter()
                path = export_onnx(models[name], Path(tmp) / f"{name}.onnx", method=args.onnx_method)
                export_seconds[name] = time.perf_counter() - start
                runners[(name, "onnxruntime")] = ort_runner(path, args.threads)
                diff = np.abs(runners[(name, "onnxruntime")](probe) - runners[(name, "torch")](probe)).max()
                onnx_diff[name] = float(diff)

        results = []
        rng = np.random.default_rng(1)
        for bs in args.batch_sizes:
            batch = rng.standard_normal((bs, 1, args.size, args.size)).astype(np.float32)
            named = {f"{m}|{rt}": fn for (m, rt), fn in runners.items()}
            times = time_runners(named, batch, args.rounds, args.iters)
            for key, seconds in times.items():
                model, runtime = key.split("|")
                results.append(
                    {"model": model, "runtime": runtime, "batch_size": bs, **summarise(seconds, bs)}
                )
    load_end = os.getloadavg()[0]

    def speed(model: str, runtime: str, bs: int) -> float:
        return next(
            r["slices_per_s"]
            for r in results
            if r["model"] == model and r["runtime"] == runtime and r["batch_size"] == bs
        )

    ratios = {
        f"{name}/monai-unet (torch, batch {bs})": speed(name, "torch", bs) / speed("monai-unet", "torch", bs)
        for name in INFNET_VARIANTS
        for bs in args.batch_sizes
    }
    if not args.skip_onnx:
        ratios.update(
            {
                f"{name} onnxruntime/torch (batch {bs})": speed(name, "onnxruntime", bs)
                / speed(name, "torch", bs)
                for name in INFNET_VARIANTS
                for bs in args.batch_sizes
            }
        )
    target = {
        f"{name} {runtime} batch {bs}": speed(name, runtime, bs) >= TARGET_SLICES_PER_S
        for name in INFNET_VARIANTS
        for runtime in (["torch"] if args.skip_onnx else ["torch", "onnxruntime"])
        for bs in args.batch_sizes
    }

    print(f"\nCPU: {cpu_name()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}")
    print(f"input 1×{args.size}×{args.size}, load average (1 min) {load_start:.2f} → {load_end:.2f}\n")
    print(
        f"{'model':<14}{'runtime':<13}{'params':>11}{'batch':>7}{'slices/s':>11}{'p10–p90':>16}{'ms/slice':>10}"
    )
    for r in results:
        lo, hi = r["slices_per_s_p10_p90"]
        print(
            f"{r['model']:<14}{r['runtime']:<13}{params[r['model']]:>11,}{r['batch_size']:>7}"
            f"{r['slices_per_s']:>11.1f}{f'{lo:.1f}–{hi:.1f}':>16}{1000 / r['slices_per_s']:>10.1f}"
        )
    print()
    for k, v in ratios.items():
        print(f"ratio {k}: {v:.2f}")
    for k, v in onnx_diff.items():
        print(f"onnxruntime vs torch max |Δlogit| {k}: {v:.2e} (export {export_seconds[k]:.0f} s)")
    for k, ok in target.items():
        print(f"target ≥ {TARGET_SLICES_PER_S:g} slices/s, {k}: {'met' if ok else 'MISSED'}")

    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_name(),
            "logical_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_1min_start": load_start,
            "load_average_1min_end": load_end,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": __import__("onnxruntime").__version__,
        },
        "setup": {
            "input": [1, args.size, args.size],
            "batch_sizes": args.batch_sizes,
            "rounds": args.rounds,
            "iters_per_round": args.iters,
            "statistic": "median seconds per call; slices/s = batch / median",
            "onnx_method": None if args.skip_onnx else args.onnx_method,
        },
        "models": {
            **{
                name: {"covseg": "infnet", "init_args": kw, "parameters": params[name]}
                for name, kw in INFNET_VARIANTS.items()
            },
            "monai-unet": {
                "monai": "monai.networks.nets.UNet",
                "config": {k: list(v) if isinstance(v, tuple) else v for k, v in MONAI_UNET_CONFIG.items()},
                "parameters": params["monai-unet"],
            },
        },
        "results": results,
        "ratios": ratios,
        "onnx_max_abs_logit_difference": onnx_diff,
        "onnx_export_seconds": export_seconds,
        "target_slices_per_s": TARGET_SLICES_PER_S,
        "target_met": target,
    }
    (args.out / "inference_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(
        results,
        args.out / "inference_speed.png",
        f"{cpu_name()}, load average {load_start:.2f} → {load_end:.2f}",
    )
    print(f"\nwrote {args.out / 'inference_speed.json'} and {args.out / 'inference_speed.png'}")


if __name__ == "__main__":
    main()
