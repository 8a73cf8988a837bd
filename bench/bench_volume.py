"""3D CT volumes: time and peak memory per case through ``covseg predict``, beside plain MONAI.

Measured in one run, the runners interleaved (covseg, MONAI, covseg, MONAI, ...) and the load
average recorded around each, because the development machine is shared:

- **covseg**: ``covseg predict -m RUN -i CASE.nii.gz -o OUT`` in a fresh process: read, reorient,
  window, resample, body crop, z-score, sliding window, restore to the input's geometry, threshold,
  write the mask and probability NIfTI and the overlay. Per-case seconds and peak memory are
  ``predictions.csv``'s; the process's wall time and peak RSS (``wait4``) include Python's start.
- **MONAI**: the same volume through a plain MONAI script in a fresh process: ``LoadImaged``,
  ``Orientationd``, ``Spacingd``, ``ScaleIntensityRanged``, ``sliding_window_inference`` with
  ``monai.networks.nets.UNet`` of the same size (same ROI, overlap, Gaussian weighting),
  ``Invertd`` back to the input, ``SaveImage``.

The run folder holds the default 3D model of ``configs/unet3d_phantoms.yaml`` (MONAI residual
UNet 16-32-64-128, batch norm) with a CPU plan for CT at 0.7 × 0.7 × 2.5 mm: the volume
resampled to 1.5 × 1.5 × 2.5 mm (``preprocess.volume.spacing``; nnU-Net's low-resolution idea),
patch 96 × 96 × 48, overlap 0.25. Its weights are untrained: time and memory do not depend on
them (accuracy is the phantom tests'). The volumes are 3D CT phantoms (``covseg.data.synthetic3d``)
of 512 × 512 × {50, 100, 200} at 0.7 × 0.7 × 2.5 mm, in HU, written once under
``$COVSEG_CACHE/bench_volume``.

With ``--picture-only`` it draws ``bench/results/volume/predicted_volume.png`` instead: a held-out
phantom predicted by a 3D run trained on phantoms (``--train-epochs``, or ``--run`` a trained one),
axial slices with prediction and reference; and, where the real data are present,
``predicted_ct3d_totalseg.png`` (real data: not versioned) with ``pictures.json``.

    python bench/bench_volume.py --train-epochs 0 --monai-slices 50,100,200   # CPU timing (the README table)
    python bench/bench_volume.py --picture-only --run RUN                      # the pictures
    python bench/bench_volume.py --device cuda --amp bf16 --rounds 3 --tag gpu
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "volume"
SPACING = (0.7, 0.7, 2.5)
PLAN_SPACING = (1.5, 1.5, 2.5)
PATCH = (96, 96, 48)
CHANNELS = (16, 32, 64, 128)
STRIDES = (2, 2, 2)
OVERLAP = 0.25


def cache_dir() -> Path:
    from covseg.training.cache import default_cache_root

    path = default_cache_root() / "bench_volume"
    path.mkdir(parents=True, exist_ok=True)
    return path


def phantom_file(slices: int) -> Path:
    """A 512 × 512 × ``slices`` CT phantom (HU), written once: made at 128 × 128 in-plane (2.8 mm) and
    upsampled four times in-plane (linear) with fresh 20 HU noise, since making it at 512² takes minutes."""
    from scipy.ndimage import zoom

    from covseg.data.imageio import write_volume
    from covseg.data.synthetic3d import make_phantom_volume, phantom_affine

    path = cache_dir() / "volumes" / f"ct_512x512x{slices}.nii.gz"
    if not path.exists():
        ph = make_phantom_volume(1000 + slices, (128, 128, slices), (4 * SPACING[0], 4 * SPACING[1], SPACING[2]))
        hu = zoom(ph.image.astype(np.float32), (4, 4, 1), order=1, grid_mode=True, mode="nearest")
        hu += np.random.default_rng(slices).normal(0, 20.0, size=hu.shape).astype(np.float32)
        write_volume(path, np.clip(np.rint(hu), -1024, 3071), phantom_affine(SPACING, hu.shape), dtype="int16")
    return path


def make_run(folder: Path) -> Path:
    """The default 3D model's run folder with the CT plan (untrained weights; see the module docstring)."""
    import torch

    from covseg.models import build_model
    from covseg.runs.checkpoint import save_checkpoint
    from covseg.runs.description import DESCRIPTION_FORMAT
    from covseg.transforms.volume import VolumePlan
    from covseg.utils.atomic import write_json

    if (folder / "model.json").exists():
        return folder
    torch.manual_seed(0)
    params = {"spatial_dims": 3, "channels": list(CHANNELS), "strides": list(STRIDES), "num_res_units": 2, "norm": "batch"}
    model = build_model("monai_unet", in_channels=1, out_channels=1, **params)
    plan = VolumePlan(spacing=PLAN_SPACING, mean=0.42, std=0.3, patch_size=PATCH)  # the phantom set's z-score statistics
    inferer = {"name": "sliding_window", "params": {"roi_size": list(PATCH), "overlap": OVERLAP, "mode": "gaussian", "sw_batch_size": 4}}
    desc = {
        "format": DESCRIPTION_FORMAT,
        "name": "monai_unet",
        "init_args": model.init_args,
        "preprocessing": {"channels": 1, "size": None},
        "num_classes": 1,
        "class_names": ["infection"],
        "threshold": 0.5,
        "inferer": inferer,
        "volume": plan.to_dict(),
    }
    write_json(folder / "model.json", desc)
    save_checkpoint(folder / "checkpoints" / "best.pt", {"model_spec": {"name": "monai_unet", "init_args": model.init_args}, "model_state": model.state_dict()})
    return folder


MONAI_SCRIPT = r'''
import json, resource, sys, time
t0 = time.perf_counter()
import torch
from monai.data import decollate_batch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet
from monai.transforms import (Activationsd, AsDiscreted, Compose, EnsureChannelFirstd, Invertd, LoadImaged,
                              Orientationd, SaveImage, ScaleIntensityRanged, Spacingd)
src, out, device, amp = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
cfg = json.loads(sys.argv[5])
torch.manual_seed(0)
net = UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=cfg["channels"], strides=cfg["strides"],
           num_res_units=2, norm="batch").to(device).eval()
pre = Compose([LoadImaged("image"), EnsureChannelFirstd("image"), Orientationd("image", axcodes="RAS"),
               Spacingd("image", pixdim=cfg["spacing"], mode="bilinear"),
               ScaleIntensityRanged("image", a_min=-1250, a_max=250, b_min=0, b_max=1, clip=True)])
post = Compose([Activationsd("pred", sigmoid=True),
                Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False),
                AsDiscreted("pred", threshold=0.5)])
t1, c1 = time.perf_counter(), time.process_time()
if device.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
data = pre({"image": src})
with torch.inference_mode(), torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=amp == "bf16"):
    x = data["image"].unsqueeze(0).to(device)
    data["pred"] = sliding_window_inference(x, cfg["patch"], 4, net, overlap=cfg["overlap"], mode="gaussian")[0].float().cpu()
data = post(data)
SaveImage(output_dir=out, output_postfix="mask", separate_folder=False, output_dtype="uint8", print_log=False)(data["pred"])
t2, c2 = time.perf_counter(), time.process_time()
gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
print(json.dumps({"case_s": t2 - t1, "case_cpu_s": c2 - c1, "startup_s": t1 - t0, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "gpu_mb": gpu, "grid": list(x.shape[2:])}))
'''


def run_child(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``cmd``; (wall seconds, peak RSS MB of that process, stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}): {err[-2000:]}")
    return wall, usage.ru_maxrss / 1024.0, out


def covseg_case(run: Path, volume: Path, out: Path, env, device: str, amp: str) -> dict:
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "covseg.cli.main", "predict", "-m", str(run), "-i", str(volume), "-o", str(out), "-q", "--no-probs",
           "--device", device, "--amp", amp]
    load0 = os.getloadavg()[0]
    wall, rss, _ = run_child(cmd, env)
    row = next(csv.DictReader((out / "predictions.csv").open()))
    return {
        "runner": "covseg",
        "case_s": float(row["seconds"]),
        "case_cpu_s": float(row["cpu_seconds"]),
        "process_s": wall,
        "peak_rss_mb": rss,
        "peak_memory_mb": float(row["peak_memory_mb"]),
        "load_before": load0,
        "load_after": os.getloadavg()[0],
    }


def monai_case(volume: Path, out: Path, env, device: str, amp: str) -> dict:
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    cfg = {"channels": list(CHANNELS), "strides": list(STRIDES), "spacing": list(PLAN_SPACING), "patch": list(PATCH), "overlap": OVERLAP}
    load0 = os.getloadavg()[0]
    wall, rss, stdout = run_child([sys.executable, "-c", MONAI_SCRIPT, str(volume), str(out), device, amp, json.dumps(cfg)], env)
    got = json.loads(stdout.strip().splitlines()[-1])
    return {
        "runner": "monai",
        "case_s": got["case_s"],
        "case_cpu_s": got["case_cpu_s"],
        "process_s": wall,
        "peak_rss_mb": rss,
        "peak_memory_mb": got["gpu_mb"] if got["gpu_mb"] is not None else got["rss_mb"],
        "grid": got["grid"],
        "load_before": load0,
        "load_after": os.getloadavg()[0],
    }


def train_phantom_run(folder: Path, epochs: int) -> Path:
    """A 3D run trained on 24 phantoms (the unet3d_phantoms config) for the README picture."""
    from covseg.api import fit
    from covseg.data.synthetic3d import write_phantom_volumes
    from covseg.training.config import load_config

    data = cache_dir() / "phantoms3d"
    if not (data / "images").exists():
        write_phantom_volumes(data, 24)
    history = folder / "history.csv"
    if history.exists() and len(history.read_text().splitlines()) > epochs:  # a finished run (header + one row per epoch)
        return folder
    cfg = load_config("unet3d_phantoms", [f"data.root={data}", f"train.epochs={epochs}", f"sampler.cache_dir={cache_dir() / 'cache'}"])
    fit(cfg, folder, quiet=True)
    return folder


def picture(run: Path, target: Path) -> dict:
    """Axial slices of a held-out phantom: the predicted mask (red) and the reference (green) over the CT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from covseg.data.synthetic3d import make_phantom_volume
    from covseg.inference.predictor import Predictor
    from covseg.transforms.orientation import volume_to_slices
    from covseg.viz.overlay import overlay

    ph = make_phantom_volume(777, (64, 64, 32), (5.0, 5.0, 8.0))  # seed outside every training set
    pred = Predictor.from_run(run).predict_array(ph.image, ph.affine)
    ct = volume_to_slices(ph.image.astype(np.float32), ph.affine)
    gt = volume_to_slices(ph.infection, ph.affine)
    pr = volume_to_slices(pred.labels, ph.affine)
    lit = np.flatnonzero(gt.sum(axis=(1, 2)))
    zs = np.linspace(lit[0], lit[-1], 4).round().astype(int) if lit.size else np.linspace(4, 27, 4).astype(int)
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.9))
    for ax, z in zip(axes, zs):
        shown = np.clip((ct[z] + 1250.0) / 1500.0, 0, 1) * 255
        ax.imshow(overlay(shown, gt[z], pr[z]))
        ax.set_title(f"slice {z}", fontsize=9)
        ax.axis("off")
    d = 2 * float((gt & pr).sum()) / max(1, int(gt.sum() + pr.sum()))
    fig.suptitle(f"held-out 3D phantom, 64×64×32 at 5×5×8 mm: Dice {d:.3f} (green reference, red prediction, yellow both)", fontsize=9)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=90)
    plt.close(fig)
    return {"dice": d, "slices": [int(z) for z in zs]}


def real_ct_picture(run: Path, target: Path) -> dict | None:
    """The real ``ct3d_totalseg_example`` CT through the phantom-trained run: predicted "infection" (red)
    and TotalSegmentator's lung lobes (green outline) on four axial slices. It is not a COVID case and
    has no infection reference, so the picture shows geometry and false positives, not accuracy.
    Written next to the phantom picture but not versioned (real data: see .gitignore)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from covseg.data.imageio import read_label_volume, read_volume
    from covseg.inference.predictor import Predictor
    from covseg.transforms.orientation import volume_to_slices
    from covseg.utils.paths import data_root
    from covseg.viz.overlay import overlay

    src = data_root() / "ct3d_totalseg_example"
    if not (src / "images" / "example_ct_sm.nii.gz").exists():
        return None
    volume, spacing, affine = read_volume(src / "images" / "example_ct_sm.nii.gz")
    lobes = np.isin(read_label_volume(src / "masks" / "example_ct_sm.nii.gz")[0], [10, 11, 12, 13, 14])
    t0 = time.perf_counter()
    pred = Predictor.from_run(run).predict_array(volume, affine)
    seconds = time.perf_counter() - t0
    ct = volume_to_slices(volume.astype(np.float32), affine)
    lungs = volume_to_slices(lobes.astype(np.uint8), affine)
    pr = volume_to_slices(pred.labels, affine)
    lit = np.flatnonzero(lungs.sum(axis=(1, 2)))
    zs = np.linspace(lit[0], lit[-1], 4).round().astype(int) if lit.size else np.linspace(0, len(ct) - 1, 4).astype(int)
    fig, axes = plt.subplots(1, 4, figsize=(10, 3.0))
    for ax, z in zip(axes, zs):
        ax.imshow(overlay(np.clip((ct[z] + 1250.0) / 1500.0, 0, 1) * 255, lungs[z], pr[z]))
        ax.set_title(f"slice {z}", fontsize=9)
        ax.axis("off")
    ml = float(pred.labels.astype(bool).sum()) * float(np.prod(spacing)) / 1000.0
    fig.suptitle(
        f"real CT (ct3d_totalseg_example, {volume.shape[0]}×{volume.shape[1]}×{volume.shape[2]}, not COVID): phantom-trained model, "
        f"red = predicted infection ({ml:.0f} ml), green = lung lobes (model-made reference)",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(target, dpi=90)
    plt.close(fig)
    return {"predicted_ml": ml, "lung_ml": float(lobes.sum()) * float(np.prod(spacing)) / 1000.0, "seconds": seconds}


def pictures(epochs: int, run: Path | None = None) -> None:
    """Train the phantom run (cached; or take ``run``, e.g. the slow test's) and draw both pictures;
    their numbers go to pictures.json."""
    t0 = time.perf_counter()
    trained = run if run is not None else train_phantom_run(cache_dir() / "run_phantoms", epochs)
    train_s = time.perf_counter() - t0
    import torch

    history = (trained / "history.csv").read_text().splitlines()
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}, torch {torch.__version__}",
        "run": str(trained),
        "run_config_model": (trained / "model.json").exists() and json.loads((trained / "model.json").read_text())["init_args"],
        "train_s_this_call": train_s,
        "train_s_history": sum(float(r["time_s"]) for r in csv.DictReader(history)),
        "epochs_in_history": len(history) - 1,
        "phantom": picture(trained, RESULTS / "predicted_volume.png"),
        "real_ct": real_ct_picture(trained, RESULTS / "predicted_ct3d_totalseg.png"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pictures.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def learning_summary(basetemp: Path) -> None:
    """Gather what the two slow 3D learning tests measured from their run folders (``pytest -m slow
    tests/integration/test_volumes.py --basetemp=BASETEMP``) into learning_tests.json / .md."""
    import torch

    def history(run: Path) -> list[dict]:
        return list(csv.DictReader((run / "history.csv").open()))

    def best(rows: list[dict]) -> float:
        return max(float(r["val_dice"]) for r in rows if r.get("val_dice"))

    unet = next(basetemp.glob("test_3d_unet_from_the_cli_reac*")) / "run"
    cps_dir = next(basetemp.glob("test_3d_cps_from_the_cli_with*"))
    runs = {"unet3d_phantoms (16 phantoms 64×64×32, 30 epochs)": unet, "supervised, 2 labels (48×48×24, 60 epochs)": cps_dir / "sup",
            "CPS + CutMix + UIF, 2 labels + 8 unlabelled (60 epochs)": cps_dir / "cps"}
    rows = {}
    for name, run in runs.items():
        h = history(run)
        rows[name] = {"best_val_dice": best(h), "last_val_dice": float(h[-1]["val_dice"]), "epochs": len(h),
                      "train_s": sum(float(r["time_s"]) for r in h)}
    scores = list(csv.DictReader((cps_dir / "cps" / "uif_scores.csv").open()))
    result = {
        "date": datetime.date.fromtimestamp((unet / "history.csv").stat().st_mtime).isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}, torch {torch.__version__}",
        "runs": rows,
        "uif_rows": len(scores),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "learning_tests.json").write_text(json.dumps(result, indent=2))
    lines = [f"{result['date']} · {result['machine']} · one torch thread per run · the slow tests of tests/integration/test_volumes.py", "",
             "| run | val Dice (mean per held-out volume), best | last | epochs | train seconds |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['best_val_dice']:.3f} | {v['last_val_dice']:.3f} | {v['epochs']} | {v['train_s']:.0f} |" for k, v in rows.items()]
    (RESULTS / "learning_tests.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def summarise(rows: list[dict]) -> dict:
    out: dict = {}
    for row in rows:
        key = f"{row['runner']}_{row['slices']}"
        out.setdefault(key, []).append(row)
    return {
        k: {
            "median_case_s": float(np.median([r["case_s"] for r in v])),
            "min_case_s": float(np.min([r["case_s"] for r in v])),
            "median_case_cpu_s": float(np.median([r["case_cpu_s"] for r in v])),
            "median_process_s": float(np.median([r["process_s"] for r in v])),
            "max_peak_rss_mb": float(np.max([r["peak_rss_mb"] for r in v])),
            "max_peak_memory_mb": float(np.max([r["peak_memory_mb"] for r in v])),
            "load_mean": float(np.mean([(r["load_before"] + r["load_after"]) / 2 for r in v])),
            "rounds": len(v),
        }
        for k, v in out.items()
    }


def markdown(result: dict) -> str:
    s = result["summary"]
    lines = [
        f"{result['date']} · {result['machine']} · device {result['device']} amp {result['amp']} · torch threads {result['threads']}",
        "",
        "| volume | runner | seconds per case (median) | CPU seconds per case (all threads) | process wall (median) | peak RSS MB | peak memory MB (predictions.csv / CUDA) | load avg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, v in sorted(s.items(), key=lambda kv: (int(kv[0].split("_")[1]), kv[0])):
        runner, slices = key.split("_")
        lines.append(
            f"| 512×512×{slices} | {runner} | {v['median_case_s']:.1f} | {v['median_case_cpu_s']:.1f} | {v['median_process_s']:.1f} | {v['max_peak_rss_mb']:.0f} | "
            f"{v['max_peak_memory_mb']:.0f} | {v['load_mean']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slices", default="50,100,200")
    parser.add_argument("--monai-slices", default="100", help="volumes the MONAI baseline also runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="off")
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each timed process (the target: 2 cores)")
    parser.add_argument("--train-epochs", type=int, default=30, help="phantom run for the picture (0: no picture)")
    parser.add_argument("--picture-only", action="store_true", help="train (if needed) and draw the pictures, no timing")
    parser.add_argument("--run", type=Path, help="with --picture-only: a trained phantom run folder to draw instead")
    parser.add_argument("--learning-from", type=Path, help="gather the slow 3D learning tests' results from this pytest --basetemp")
    args = parser.parse_args()

    if args.learning_from:
        learning_summary(args.learning_from)
        return
    if args.picture_only:
        pictures(args.train_epochs, args.run)
        return
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(HERE.parent / "src"))
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    work = cache_dir() / f"work_{args.tag}"
    run = make_run(work / "run_ct_plan")
    slices = [int(s) for s in args.slices.split(",")]
    monai_slices = {int(s) for s in args.monai_slices.split(",") if s}
    volumes = {n: phantom_file(n) for n in slices}
    rows = []
    for r in range(args.rounds):
        for n in slices:
            row = covseg_case(run, volumes[n], work / "out_covseg", env, args.device, args.amp)
            rows.append({**row, "slices": n, "round": r})
            print(json.dumps(rows[-1]), flush=True)
            if n in monai_slices:
                row = monai_case(volumes[n], work / "out_monai", env, args.device, args.amp)
                rows.append({**row, "slices": n, "round": r})
                print(json.dumps(rows[-1]), flush=True)
    import torch

    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}, torch {torch.__version__}",
        "device": args.device,
        "amp": args.amp,
        "threads": args.threads,
        "plan": {"spacing": PLAN_SPACING, "patch": PATCH, "overlap": OVERLAP, "channels": CHANNELS, "volume_spacing": SPACING},
        "rows": rows,
        "summary": summarise(rows),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"bench_volume_{args.tag}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"bench_volume_{args.tag}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
