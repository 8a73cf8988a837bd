"""Issue 29 in one run: every speed goal, covseg beside its plain-MONAI (or bare-PyTorch) peer.

All runners of a goal are measured in this one process (or its children), interleaved round by
round, on ``--threads`` torch threads (``OMP_NUM_THREADS`` for children), with the load average
recorded: on a shared machine the ratios are what counts, absolute times are upper bounds.

- **2D slices** (``ct``: the 50 labelled Inf-Net slices; ``cxr``: the first ``--cxr-images`` QaTa
  ``valid`` images): slices/s of read → preprocess → network → restore to the original size →
  threshold, through ``Predictor.from_run(NAME).predict_image(array)`` (default engine, i.e.
  onnxruntime where installed, and ``engine="torch"``), through ``covseg predict`` as a process
  (its start included), and through a plain MONAI pipeline (``LoadImage``, ``ScaleIntensity``,
  ``Resize``, ``monai.networks.nets.UNet`` 16-32-64-128-256 with 2 residual units at the zoo model's
  size, sigmoid, ``Resize`` back, threshold). The network alone is timed too (what is left is the
  time spent outside the network). Dice@0.5 of the CT masks against the ground truth, per engine.
- **volume**: a 512×512×``--slices`` CT phantom through ``covseg predict`` and through MONAI's
  plain sliding-window script, each a fresh process (``bench_volume.py``'s runners and 3D run).
- **evaluate**: ``covseg evaluate`` as a process on ``--cases`` 512² cases (all eight medical
  metrics, ``bench_evaluate.py``'s cases), and the scoring alone in this process.
- **training**: images/s of ``covseg train`` (U-Net of ``unet_covid_semiseg`` at 256², batch 8)
  against a bare PyTorch + MONAI loop (``CacheDataset``, MONAI augmentation, ``DiceCELoss``,
  AdamW) on the same model (built from the run's ``model.json``) and images.
- **start-up**: ``covseg --help``; a first prediction of ``covid-ct-infection`` on one slice
  (process wall time, with the ONNX export cached, which runs without torch, checked by
  ``-X importtime``; the same on the torch path, ``COVSEG_TORCH_FREE=0``; and with an empty cache).

    python bench/bench_speed.py                 # writes bench/results/speed/<date>.md and .json
    python bench/bench_speed.py --quick --out /tmp/speed   # tiny sizes: a smoke test
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import numpy as np  # noqa: E402

from covseg.utils.atomic import write_json, write_text  # noqa: E402
from covseg.utils.paths import data_root  # noqa: E402

GOALS = {  # key: (comparison, target, what)
    "ct_api_ratio": (">=", 2.0, "CT zoo model, predict_image vs MONAI (slices/s ratio)"),
    "ct_cli_ratio": (">=", 2.0, "CT zoo model, covseg predict process vs MONAI (slices/s ratio)"),
    "cxr_api_ratio": (">=", 2.0, "X-ray zoo model, predict_image vs MONAI (slices/s ratio)"),
    "cxr_cli_ratio": (">=", 2.0, "X-ray zoo model, covseg predict process vs MONAI (slices/s ratio)"),
    "volume_process_s": ("<=", 10.0, "512x512xN volume, covseg predict process (s)"),
    "volume_peak_gb": ("<=", 2.0, "512x512xN volume, covseg predict peak RSS (GB)"),
    "volume_ratio": (">=", 1.5, "512x512xN volume, MONAI process s / covseg process s"),
    "evaluate_s": ("<=", 8.0, "covseg evaluate process, all eight medical metrics (s)"),
    "train_ratio": (">=", 1.3, "covseg train images/s / bare PyTorch+MONAI images/s"),
    "help_s": ("<=", 0.5, "covseg --help process (s)"),
    "first_prediction_s": ("<=", 3.0, "covseg predict -m covid-ct-infection on one slice, cached export (s)"),
}


def env_for(threads: int, **extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.update(extra)
    return env


CPU_TIMES: dict[str, list[float]] = {}  # CPU seconds (user + system) of every child, by its first argument after the interpreter


def child(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``cmd``; (wall seconds, peak RSS MB), its CPU seconds kept in ``CPU_TIMES``. A failure raises
    with the child's last words."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd[:5])} failed: {proc.stderr.read()[-1500:]}")  # type: ignore[union-attr]
    CPU_TIMES.setdefault(" ".join(cmd[1:4]), []).append(usage.ru_utime + usage.ru_stime)
    return wall, usage.ru_maxrss / 1024.0


def cpu_of(cmd_start: str) -> float | None:
    """Median CPU seconds of the children whose command began with ``cmd_start``."""
    hits = [t for k, ts in CPU_TIMES.items() if k.startswith(cmd_start) for t in ts]
    return statistics.median(hits) if hits else None


def covseg_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "covseg.cli.main", *args]


def machine() -> dict:
    flags = set()
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    return {"cpu": model, "cores": os.cpu_count(), "avx2": "avx2" in flags, "avx512f": "avx512f" in flags, "python": sys.version.split()[0]}


# ----------------------------------------------------------------------------- 2D slices
def monai_pipeline(size: tuple[int, int]):
    """The plain MONAI job on one file: read, scale, resize, network, sigmoid, resize back, threshold."""
    import torch
    from monai.data import PILReader
    from monai.networks.nets import UNet
    from monai.transforms import Compose, LoadImage, Resize, ScaleIntensity

    torch.manual_seed(0)
    net = UNet(2, 1, 1, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2).eval()
    pre = Compose([LoadImage(reader=PILReader(converter=lambda im: im.convert("L")), image_only=True, ensure_channel_first=True),
                   ScaleIntensity(), Resize(size)])  # fmt: skip

    def run(path: Path) -> np.ndarray:
        x = pre(str(path))
        with torch.inference_mode():
            p = torch.sigmoid(net(x[None].as_tensor()))[0]
        return (Resize(x.meta["spatial_shape"].tolist(), mode="bilinear")(p) >= 0.5).numpy()[0]

    return run, net


def covseg_runner(name: str, engine: str, texts: dict[str, str] | None):
    from covseg.data.imageio import read_image
    from covseg.inference.predictor import Predictor

    predictor = Predictor.from_run(name, device="cpu", engine=engine)

    def run(path: Path) -> np.ndarray:
        extra = {"text": texts[path.name]} if texts else {}
        return predictor.predict_image(read_image(path), **extra).labels

    return run, predictor


def network_only(call, size: tuple[int, int], reps: int) -> float:
    """Seconds per slice of the network alone (batch 1, input already at the network size)."""
    import torch

    x = torch.randn(1, 1, *size)
    with torch.inference_mode():
        call(x)
        t0 = time.perf_counter()
        for _ in range(reps):
            call(x)
    return (time.perf_counter() - t0) / reps


def slices_2d(tag: str, name: str, paths: list[Path], masks: dict[str, Path], texts, threads: int, rounds: int, work: Path) -> dict:
    import json as _json

    import torch

    from covseg.metrics.overlap import dice
    from covseg.zoo import ZOO_DIR

    size = tuple(_json.loads((ZOO_DIR / name / "model.json").read_text())["preprocessing"]["size"])
    monai_run, monai_net = monai_pipeline(size)
    runners = {"covseg": covseg_runner(name, "auto", texts), "covseg-torch": covseg_runner(name, "torch", texts)}
    engines = {k: type(v[1].model).__name__ for k, v in runners.items()}
    calls = {k: v[0] for k, v in runners.items()} | {"monai": monai_run}
    times: dict[str, list[float]] = {k: [] for k in calls}
    outputs: dict[str, dict[str, np.ndarray]] = {k: {} for k in calls}
    for r in range(rounds):
        order = list(calls)[r % len(calls) :] + list(calls)[: r % len(calls)]
        for k in order:
            t0 = time.perf_counter()
            for p in paths:
                outputs[k][p.name] = calls[k](p)
            times[k].append(time.perf_counter() - t0)
    rate = {k: len(paths) / statistics.median(v) for k, v in times.items()}
    # covseg predict as a process (start-up included), engine as installed
    out = work / f"pred_{tag}"
    folder = work / f"in_{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        shutil.copy(p, folder / p.name)
    cli = []
    for _ in range(max(1, rounds // 2)):
        shutil.rmtree(out, ignore_errors=True)
        cmd = covseg_cmd("predict", "-m", name, "-i", str(folder), "-o", str(out), "-q", "--no-probs", "--no-overlays", "--device", "cpu")
        cli.append(child(cmd, env_for(threads))[0])
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    net = {"monai": network_only(monai_net, size, 5)}
    for k, (_, predictor) in runners.items():
        seg = predictor.segmenter
        net[k] = network_only(lambda x, s=seg: s.forward(x, [{"text": next(iter(texts.values()))}] if texts else [{}]), size, 5)
    result = {
        "model": name, "images": len(paths), "engines": engines, "slices_per_s": rate,
        "cli_process_s": statistics.median(cli), "cli_slices_per_s": len(paths) / statistics.median(cli),
        "cli_in_process_slices_per_s": len(rows) / sum(float(r["seconds"]) for r in rows),
        "network_s_per_slice": net,
        "outside_network_s_per_slice": {k: 1.0 / rate[k] - net[k] for k in rate},
        "threads": torch.get_num_threads(),
    }
    result["api_ratio"] = rate["covseg"] / rate["monai"]
    result["cli_ratio"] = result["cli_slices_per_s"] / rate["monai"]
    a, b = outputs["covseg"], outputs["covseg-torch"]
    result["mask_agreement_dice_engine_vs_torch"] = float(np.mean([dice(a[k], b[k]) if b[k].any() else float(not a[k].any()) for k in a]))
    if masks:
        from PIL import Image

        for k in ("covseg", "covseg-torch"):
            gts = {p: np.asarray(Image.open(masks[p]).convert("L")) > 0 for p in outputs[k]}
            result[f"dice_vs_gt_{k}"] = float(np.mean([dice(outputs[k][p], gts[p]) for p in gts]))
    return result


# ----------------------------------------------------------------------------- volume, evaluate
def volume(slices: int, threads: int, rounds: int, work: Path) -> dict:
    import bench_volume as bv

    src = bv.phantom_file(slices)
    run = bv.make_run(work / "volume_run")
    rows = []
    for _ in range(rounds):
        rows.append(bv.covseg_case(run, src, work / "vol_covseg", env_for(threads), "cpu", "off"))
        rows.append(bv.monai_case(src, work / "vol_monai", env_for(threads), "cpu", "off"))

    def med(runner: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["runner"] == runner)

    return {
        "shape": [512, 512, slices],
        "covseg": {k: med("covseg", k) for k in ("process_s", "case_s", "peak_rss_mb")},
        "monai": {k: med("monai", k) for k in ("process_s", "case_s", "peak_rss_mb")},
        "rows": rows,
    }


def evaluate(cases: int, threads: int, work: Path) -> dict:
    import bench_evaluate as be

    rng = np.random.default_rng(0)
    bases, source = be.base_masks(512)
    made = [be.make_case(bases[i % len(bases)], rng) for i in range(cases)]
    pred_dir, gt_dir = be.write_cases(work / "eval", made)
    cmd = covseg_cmd("evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(work / "eval_out"),
                     "--spacing", ",".join(map(str, be.SPACING)), "--tolerance", "1.0")  # fmt: skip
    CPU_TIMES.clear()
    wall, rss = child(cmd, env_for(threads))
    c0 = time.process_time()
    scoring, _ = be.time_scoring(made)
    return {"cases": cases, "masks": source, "process_s": wall, "process_cpu_s": cpu_of("-m covseg.cli.main evaluate"), "peak_rss_mb": rss,
            "scoring_in_process_s": scoring, "scoring_cpu_s": time.process_time() - c0}  # fmt: skip


# ----------------------------------------------------------------------------- training
def bare_loop(run: Path, files: list[tuple[Path, Path]], size: int, epochs: int, batch: int) -> list[float]:
    """Seconds per epoch of a bare PyTorch + MONAI loop on the run's model and the same images."""
    import torch
    from monai.data import CacheDataset, DataLoader, PILReader
    from monai.losses import DiceCELoss
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        Resized,  # fmt: skip
        ScaleIntensityd,
    )

    from covseg.models import build_model

    desc = json.loads((run / "model.json").read_text())
    torch.manual_seed(0)
    model = build_model(desc["name"], **desc["init_args"]).train()
    reader = PILReader(converter=lambda im: im.convert("L"))
    det = Compose([LoadImaged(["image", "label"], reader=reader), EnsureChannelFirstd(["image", "label"]),
                   ScaleIntensityd(["image", "label"]), Resized(["image", "label"], (size, size), mode=("bilinear", "nearest"))])  # fmt: skip
    rand = Compose([RandFlipd(["image", "label"], prob=0.5, spatial_axis=1),
                    RandAffined(["image", "label"], prob=0.8, rotate_range=0.26, scale_range=0.15, mode=("bilinear", "nearest")),
                    RandAdjustContrastd("image", prob=0.5, gamma=(0.85, 1.15))])  # fmt: skip
    data = CacheDataset([{"image": str(i), "label": str(m)} for i, m in files], Compose([det, rand]), progress=False)
    loader = DataLoader(data, batch_size=batch, shuffle=True, num_workers=0)
    loss_fn = DiceCELoss(sigmoid=True)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    seconds = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for b in loader:
            opt.zero_grad()
            out = model(b["image"].as_tensor())
            loss = loss_fn(out, (b["label"].as_tensor() > 0.5).float())
            loss.backward()
            opt.step()
        seconds.append(time.perf_counter() - t0)
    return seconds


def training(size: int, epochs: int, threads: int, work: Path) -> dict:
    root = data_root() / "covid_semiseg_infnet" / "train"
    run = work / "train_run"
    shutil.rmtree(run, ignore_errors=True)
    cmd = covseg_cmd("train", "-c", "unet_covid_semiseg", "-o", str(run), f"data.root={root}", f"train.threads={threads}",
                     f"preprocess.size=[{size},{size}]", f"train.epochs={epochs}", "train.val_every=1000")  # fmt: skip
    wall, _ = child(cmd, env_for(threads))
    history = list(csv.DictReader((run / "history.csv").open()))
    n_train = 40  # 5 folds of 50: fold 0 trains on 40
    covseg_s = [float(r["time_s"]) for r in history][1:-1] or [float(history[-1]["time_s"])]  # warm-up and validation epochs left out
    images = sorted((root / "images").iterdir())[:n_train]
    files = [(p, root / "masks" / f"{p.stem}.png") for p in images]
    bare_s = bare_loop(run, files, size, epochs - 1 if epochs > 2 else epochs, 8)
    bare_s = bare_s[1:] or bare_s
    covseg_rate, bare_rate = n_train / statistics.median(covseg_s), n_train / statistics.median(bare_s)
    return {"size": size, "epochs": epochs, "images_per_epoch": n_train, "covseg_images_per_s": covseg_rate,
            "bare_images_per_s": bare_rate, "ratio": covseg_rate / bare_rate, "covseg_process_s": wall}  # fmt: skip


# ----------------------------------------------------------------------------- start-up
def startup(threads: int, slice_path: Path, work: Path) -> dict:
    CPU_TIMES.clear()
    helps = [child(covseg_cmd("--help"), env_for(threads))[0] for _ in range(3)]
    help_cpu = cpu_of("-m covseg.cli.main --help")
    helps_entry = [child([str(Path(sys.executable).parent / "covseg"), "--help"], env_for(threads))[0] for _ in range(3)]

    def first(cache: Path | None, env: dict[str, str] | None = None) -> float:
        out = work / "first"
        shutil.rmtree(out, ignore_errors=True)
        extra = {"COVSEG_CACHE": str(cache)} if cache else {}
        extra.update(env or {})
        cmd = covseg_cmd("predict", "-m", "covid-ct-infection", "-i", str(slice_path), "-o", str(out), "-q", "--no-probs", "--no-overlays", "--device", "cpu")
        return child(cmd, env_for(threads, **extra))[0]

    first(None)  # makes sure the cached export exists
    CPU_TIMES.clear()
    warm = [first(None) for _ in range(3)]
    warm_cpu = cpu_of("-m covseg.cli.main predict")
    CPU_TIMES.clear()  # the same command on the torch path (COVSEG_TORCH_FREE=0: the path before the torch-free one)
    torch_path = [first(None, {"COVSEG_TORCH_FREE": "0"}) for _ in range(3)]
    torch_path_cpu = cpu_of("-m covseg.cli.main predict")
    cold = first(work / "empty_cache")
    return {"help_s": statistics.median(helps), "help_cpu_s": help_cpu, "help_entry_point_s": statistics.median(helps_entry),
            "first_prediction_s": statistics.median(warm), "first_prediction_cpu_s": warm_cpu, "first_prediction_cold_cache_s": cold,
            "first_prediction_torch_free": torch_free(slice_path, work, threads),
            "first_prediction_torch_path_s": statistics.median(torch_path), "first_prediction_torch_path_cpu_s": torch_path_cpu}  # fmt: skip


def torch_free(slice_path: Path, work: Path, threads: int) -> bool:
    """Whether the cached-export first prediction ran without importing torch (``-X importtime`` lists every import)."""
    cmd = [sys.executable, "-X", "importtime", "-m", "covseg.cli.main", "predict", "-m", "covid-ct-infection", "-i", str(slice_path),
           "-o", str(work / "first_imports"), "-q", "--no-probs", "--no-overlays", "--device", "cpu"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env_for(threads), check=True)
    return not any(line.rstrip().endswith("| torch") for line in done.stderr.splitlines())


# ----------------------------------------------------------------------------- report
def goals(res: dict) -> dict:
    """Each goal's measured value, target, pass and gap factor (value None: that part was not run)."""
    getters = {
        "ct_api_ratio": lambda: res["ct"]["api_ratio"], "ct_cli_ratio": lambda: res["ct"]["cli_ratio"],
        "cxr_api_ratio": lambda: res["cxr"]["api_ratio"], "cxr_cli_ratio": lambda: res["cxr"]["cli_ratio"],
        "volume_process_s": lambda: res["volume"]["covseg"]["process_s"],
        "volume_peak_gb": lambda: res["volume"]["covseg"]["peak_rss_mb"] / 1024,
        "volume_ratio": lambda: res["volume"]["monai"]["process_s"] / res["volume"]["covseg"]["process_s"],
        "evaluate_s": lambda: res["evaluate"]["process_s"], "train_ratio": lambda: res["training"]["ratio"],
        "help_s": lambda: res["startup"]["help_s"], "first_prediction_s": lambda: res["startup"]["first_prediction_s"],
    }  # fmt: skip
    out = {}
    for key, get in getters.items():
        op, target, what = GOALS[key]
        try:
            value = float(get())
        except KeyError:
            out[key] = {"what": what, "value": None, "target": f"{op} {target}", "pass": None, "gap_factor": None}
            continue
        ok = value >= target if op == ">=" else value <= target
        gap = (target / value if op == ">=" else value / target) if value else float("inf")
        out[key] = {"what": what, "value": value, "target": f"{op} {target}", "pass": bool(ok), "gap_factor": None if ok else gap}
    cpu = {"evaluate_s": ("evaluate", "process_cpu_s"), "help_s": ("startup", "help_cpu_s"), "first_prediction_s": ("startup", "first_prediction_cpu_s")}
    for key, (part, field) in cpu.items():  # a process's CPU seconds: what its wall time would be on an idle core
        if out[key]["value"] is not None and res[part].get(field) is not None:
            out[key]["cpu_s"] = res[part][field]
    return out


def markdown(res: dict) -> str:
    m, g = res["machine"], res["goals"]
    lines = [f"# Speed goals of issue 29 — {res['date']}{' (quick smoke run: tiny sizes, not the goals)' if res['quick'] else ''}", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, AVX2 {'yes' if m['avx2'] else 'no'}, AVX-512 {'yes' if m['avx512f'] else 'no'}; "
             f"torch threads {res['threads']}; load average (1 min) {res['load_before']:.1f} before, {res['load_after']:.1f} after "
             f"(a shared machine: ratios side by side count, absolute times are upper bounds). Wall time of the run {res['wall_s']:.0f} s.", "",
             "| goal | measured | its CPU s | target | pass | gap |", "|---|---|---|---|---|---|"]  # fmt: skip
    for v in g.values():
        if v["value"] is None:
            lines.append(f"| {v['what']} | not measured in this run | – | {v['target']} | – | – |")
            continue
        gap = "" if v["pass"] else f"{v['gap_factor']:.2f}×"
        cpu = f"{v['cpu_s']:.2f}" if v.get("cpu_s") is not None else "–"
        lines.append(f"| {v['what']} | {v['value']:.3g} | {cpu} | {v['target']} | {'yes' if v['pass'] else '**no**'} | {gap} |")
    lines += ["", "| 2D model | images | covseg (engine) slices/s | covseg torch | covseg predict process (slices/s of its wall time; of its files' own seconds) | MONAI | network s/slice (covseg, torch, MONAI) | mask Dice engine vs torch |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for tag in [t for t in ("ct", "cxr") if t in res]:
        r = res[tag]
        s, n = r["slices_per_s"], r["network_s_per_slice"]
        lines.append(f"| {r['model']} | {r['images']} | {s['covseg']:.1f} ({r['engines']['covseg']}) | {s['covseg-torch']:.1f} | {r['cli_slices_per_s']:.1f} "
                     f"({r['cli_process_s']:.1f} s; per file {r['cli_in_process_slices_per_s']:.1f}) | {s['monai']:.1f} | {n['covseg']:.4f}, {n['covseg-torch']:.4f}, {n['monai']:.4f} | {r['mask_agreement_dice_engine_vs_torch']:.4f} |")  # fmt: skip
    if "dice_vs_gt_covseg" in res.get("ct", {}):
        lines += ["", f"CT Dice@0.5 against the ground truth (slices the shipped model was trained on): engine {res['ct']['dice_vs_gt_covseg']:.4f}, torch {res['ct']['dice_vs_gt_covseg-torch']:.4f}."]
    lines.append("")
    if "volume" in res:
        v = res["volume"]
        lines.append(f"Volume {v['shape']}: covseg process {v['covseg']['process_s']:.1f} s (case {v['covseg']['case_s']:.1f} s, "
                     f"{v['covseg']['peak_rss_mb']:.0f} MB); MONAI {v['monai']['process_s']:.1f} s (case {v['monai']['case_s']:.1f} s, {v['monai']['peak_rss_mb']:.0f} MB).")  # fmt: skip
    if "evaluate" in res:
        e = res["evaluate"]
        lines.append(f"Evaluate {e['cases']} cases: process {e['process_s']:.1f} s ({e['process_cpu_s']:.1f} CPU s), scoring alone "
                     f"{e['scoring_in_process_s']:.1f} s ({e['scoring_cpu_s']:.1f} CPU s); masks: {e['masks']}.")  # fmt: skip
    if "training" in res:
        t = res["training"]
        lines.append(f"Training at {t['size']}²: covseg {t['covseg_images_per_s']:.2f} images/s, bare PyTorch+MONAI {t['bare_images_per_s']:.2f} images/s.")
    if "startup" in res:
        st = res["startup"]
        lines.append(f"Start-up: `python -m covseg.cli.main --help` {st['help_s']:.2f} s ({st['help_cpu_s']:.2f} CPU s), `covseg --help` "
                     f"{st['help_entry_point_s']:.2f} s; first prediction {st['first_prediction_s']:.2f} s ({st['first_prediction_cpu_s']:.2f} CPU s, "
                     f"{'without' if st.get('first_prediction_torch_free') else 'importing'} torch; on the torch path "
                     f"{st.get('first_prediction_torch_path_s', float('nan')):.2f} s, {st.get('first_prediction_torch_path_cpu_s') or float('nan'):.2f} CPU s; "
                     f"empty ONNX cache: {st['first_prediction_cold_cache_s']:.2f} s).")  # fmt: skip
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script, not the goals")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cxr-images", type=int, default=100)
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--train-epochs", type=int, default=4)
    ap.add_argument("--volume-rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "speed")
    ap.add_argument("--only", default="ct,cxr,startup,evaluate,volume,training", help="comma-separated parts to run")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.cxr_images, args.slices, args.cases, args.train_epochs, args.volume_rounds = 1, 4, 6, 12, 2, 1
    import torch

    torch.set_num_threads(args.threads)
    data = data_root()
    ct = data / "covid_semiseg_infnet" / "train"
    cxr = data / "qata_cov19_sgseg" / "valid"
    if not ct.is_dir() or not cxr.is_dir():
        raise SystemExit(f"real data not found under {data} (set COVSEG_DATA)")
    ct_paths = sorted((ct / "images").iterdir(), key=lambda p: int(p.stem) if p.stem.isdigit() else 0)[: 6 if args.quick else None]
    cxr_paths = sorted((cxr / "images").iterdir())[: args.cxr_images]
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    res: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "quick": args.quick,
                 "machine": machine(), "threads": args.threads, "load_before": load0, "args": {k: str(v) for k, v in vars(args).items()}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench_speed_") as tmp:
        work = Path(tmp)
        masks = {p.name: ct / "masks" / f"{p.stem}.png" for p in ct_paths}
        # the volume first: Linux keeps a parent's resident-set high-water mark across fork and exec, so a child
        # started after the in-process parts reports this process's peak as its own (1.63 GB for covseg's
        # volume prediction after the training part on 2026-12-07, 0.90 GB when measured first)
        steps = [
            ("volume", lambda: volume(args.slices, args.threads, args.volume_rounds, work)),
            ("ct", lambda: slices_2d("ct", "covid-ct-infection", ct_paths, masks, None, args.threads, args.rounds, work)),
            ("evaluate", lambda: evaluate(args.cases, args.threads, work)),
            ("startup", lambda: startup(args.threads, ct_paths[0], work)),
            ("cxr", lambda: slices_2d("cxr", "covid-cxr", cxr_paths, {}, None, args.threads, args.rounds, work)),
            ("training", lambda: training(64 if args.quick else 256, args.train_epochs, args.threads, work)),
        ]
        wanted = set(args.only.split(","))
        stem = res["date"][:10] + ("-quick" if args.quick else "")
        args.out.mkdir(parents=True, exist_ok=True)
        for key, step in [(k, f) for k, f in steps if k in wanted]:
            s0 = time.perf_counter()
            res[key] = step()
            res[key]["load_after"] = os.getloadavg()[0]
            res[key]["wall_s"] = time.perf_counter() - s0
            print(f"{key}: {res[key]['wall_s']:.0f} s", flush=True)
            # the results so far, after every part: a long run cut short keeps what it measured
            res["load_after"], res["wall_s"] = os.getloadavg()[0], time.perf_counter() - t0
            res["goals"] = goals(res)
            write_json(args.out / f"{stem}.json", res)
            write_text(args.out / f"{stem}.md", markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
