"""Equivalence of ``covseg weights import`` with the authors' own model code.

For each format: extract the authors' model files from a fetched snapshot of their repository
(a git directory, read with ``git show HEAD:path``; nothing is downloaded), build their model
with random weights (batch-norm statistics calibrated on random inputs, affine parameters
randomised, so no layer is an identity), save its ``state_dict`` as they do (``torch.save``),
import that file with ``covseg weights import`` (the CLI, in a subprocess), rebuild the run's
model from its checkpoint and compare every output on the same input. Pass: max |diff| ≤ 1e-4.

    python bench/bench_weights_equivalence.py --infnet-repo /work/.mirror/DengPingFan+Inf-Net/repo

Writes ``bench/results/weights/results.json`` and, with ``--write-keys``, the authors' key and
shape list the test suite checks the mapping against (``tests/assets/weights/*.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4
INFNET_FILES = (
    "Code/__init__.py",
    "Code/model_lung_infection/__init__.py",
    "Code/model_lung_infection/InfNet_Res2Net.py",
    "Code/model_lung_infection/InfNet_ResNet.py",
    "Code/model_lung_infection/backbone/__init__.py",
    "Code/model_lung_infection/backbone/Res2Net.py",
    "Code/model_lung_infection/backbone/ResNet.py",
    "Code/model_lung_infection/InfNet_VGGNet.py",
    "Code/model_lung_infection/backbone/VGGNet.py",
    "Code/model_lung_infection/InfNet_UNet.py",
    "Code/model_lung_infection/module/__init__.py",
    "Code/model_lung_infection/module/unet_parts.py",
)
#: covseg format → (the authors' module, the key list the tests read)
INFNET_VARIANTS = {
    "infnet": ("InfNet_Res2Net", "infnet_res2net50_keys.json"),
    "infnet-resnet50": ("InfNet_ResNet", "infnet_resnet50_keys.json"),
    "infnet-vgg16": ("InfNet_VGGNet", "infnet_vgg16_keys.json"),
}


def extract(git_dir: Path, files: tuple[str, ...], dest: Path) -> str:
    """Write ``files`` of the snapshot's HEAD under ``dest``; returns the commit id."""
    for name in files:
        text = subprocess.run(["git", "--git-dir", str(git_dir), "show", f"HEAD:{name}"], check=True, capture_output=True).stdout
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(text)
    return subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


def randomise(model: torch.nn.Module, size: int, channels: int, seed: int) -> None:
    """Randomise the batch-norm affine parameters, then calibrate their statistics on random inputs
    (so activations keep a moderate scale through the whole network in eval mode)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(2):
            model(torch.randn(2, channels, size, size))
    model.eval()


def import_with_cli(fmt: str, file: Path, run_dir: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "covseg", "weights", "import", "--format", fmt, "--output", str(run_dir), str(file)], check=True)
    return time.perf_counter() - start


def authors_infnet(fmt: str) -> torch.nn.Module:
    """The authors' ``Inf_Net`` of a variant, with the ImageNet loading of its constructor shimmed away."""
    import importlib
    import types

    # InfNet_ResNet.py imports torchvision only to copy ImageNet ResNet-50 weights in; nothing is loaded here
    stub = types.ModuleType("torchvision")
    stub.models = types.ModuleType("torchvision.models")  # type: ignore[attr-defined]
    sys.modules.setdefault("torchvision", stub)
    sys.modules.setdefault("torchvision.models", stub.models)  # type: ignore[attr-defined]
    authors = importlib.import_module(f"Code.model_lung_infection.{INFNET_VARIANTS[fmt][0]}")
    if fmt == "infnet":  # their constructor reads ./Snapshots/pre_trained/res2net50...pth
        from Code.model_lung_infection.backbone import Res2Net as backbone

        authors.res2net50_v1b_26w_4s = lambda pretrained=False: backbone.res2net50_v1b_26w_4s(pretrained=False)
    elif fmt == "infnet-resnet50":  # their constructor copies torchvision's ImageNet ResNet-50 in while training
        authors.Inf_Net.initialize_weights = lambda self: None
    else:  # B2_VGG's constructor reads ./Snapshots/pre_trained/vgg16-397923af.pth and copies it in
        authors.B2_VGG._initialize_weights = lambda self, pre_train: None
        load, torch.load = torch.load, lambda *args, **kwargs: {}
        try:
            torch.manual_seed(0)
            return authors.Inf_Net(channel=32, n_class=1)
        finally:
            torch.load = load
    torch.manual_seed(0)
    return authors.Inf_Net(channel=32, n_class=1)


def bench_infnet(fmt: str, repo: Path, work: Path, size: int, write_keys: bool) -> dict:
    commit = extract(repo, INFNET_FILES, work / "infnet")
    if str(work / "infnet") not in sys.path:
        sys.path.insert(0, str(work / "infnet"))
    module, keys_file = INFNET_VARIANTS[fmt]
    theirs = authors_infnet(fmt)
    randomise(theirs, size, 3, seed=0)
    state = theirs.state_dict()
    file = work / f"{fmt}-random.pth"
    torch.save(state, file)
    if write_keys:
        keys = {k: list(v.shape) for k, v in state.items()}
        out = ROOT / "tests/assets/weights" / keys_file
        out.parent.mkdir(parents=True, exist_ok=True)
        lines = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in keys.items())
        source = f"DengPingFan/Inf-Net@{commit} {module}.Inf_Net(channel=32, n_class=1)"
        out.write_text(f'{{"source": {json.dumps(source)},\n "keys": {{\n{lines}\n}}}}\n')
    run_dir = work / f"{fmt}_run"
    seconds = import_with_cli(fmt, file, run_dir)

    from covseg.runs.checkpoint import load_checkpoint, model_from_checkpoint

    ours = model_from_checkpoint(load_checkpoint(run_dir / "checkpoints/best.pt"))
    torch.manual_seed(1)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        map5, map4, map3, map2, edge = theirs(x)
        out = ours.forward_train(x)
        plain = ours(x)

    def up(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, size=(size, size), mode="bilinear")

    pairs = {
        "lateral_map_2 (logits)": (map2, out["logits"]),
        "lateral_map_2 (forward)": (map2, plain),
        "lateral_map_5 (global map)": (map5, up(out["aux"][0])),
        "lateral_map_4 (RA-4)": (map4, up(out["aux"][1])),
        "lateral_map_3 (RA-3)": (map3, up(out["aux"][2])),
        "lateral_edge (edge)": (edge, up(out["edge"])),
    }
    diffs = {name: float((a - b).abs().max()) for name, a, b in ((n, *p) for n, p in pairs.items())}
    scale = {name: float(a.abs().max()) for name, (a, _) in pairs.items()}
    ours.ppd.published = False  # negative control: the PPD upsampling of covseg's own variant
    with torch.no_grad():
        control = float((map2 - ours(x)).abs().max())
    prob_diff = float((torch.sigmoid(map2) - torch.sigmoid(plain)).abs().max())
    undecided = float(((torch.sigmoid(map2) > 0.05) & (torch.sigmoid(map2) < 0.95)).float().mean())
    return {
        "format": fmt,
        "authors": f"DengPingFan/Inf-Net@{commit}",
        "model": f"{module}.Inf_Net(channel=32, n_class=1)",
        "tensors": len(state),
        "input": [2, 3, size, size],
        "max_abs_diff": diffs,
        "max_abs_output": scale,
        "max_abs_diff_probability": prob_diff,
        "control_max_abs_diff_with_align_corners_false_ppd": control,
        "share_of_pixels_with_probability_in_0.05_0.95": undecided,
        "import_seconds": round(seconds, 2),
        "pass": all(d <= TOLERANCE for d in diffs.values()),
    }


def bench_multiclass(work: Path, size: int, write_keys: bool, prior_run: Path) -> dict:
    """Semi-Inf-Net's multi-class U-Net: their 6-channel input against covseg's image + one prior channel."""
    from Code.model_lung_infection.InfNet_UNet import Inf_Net_UNet

    torch.manual_seed(0)
    theirs = Inf_Net_UNet(6, 3)
    randomise(theirs, size, 6, seed=0)
    state = theirs.state_dict()
    file = work / "unet_model_random.pkl"
    torch.save(state, file)
    if write_keys:
        lines = ",\n".join(f"  {json.dumps(k)}: {json.dumps(list(v.shape))}" for k, v in state.items())
        (ROOT / "tests/assets/weights/infnet_unet_keys.json").write_text(
            f'{{"source": "DengPingFan/Inf-Net InfNet_UNet.Inf_Net_UNet(6, 3)",\n "keys": {{\n{lines}\n}}}}\n'
        )
    run_dir = work / "infnet-multiclass_run"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "covseg", "weights", "import", "--format", "infnet-multiclass", "--prior", str(prior_run),
                    "--output", str(run_dir), str(file)], check=True)  # fmt: skip
    seconds = time.perf_counter() - start
    from covseg.runs.checkpoint import load_checkpoint, model_from_checkpoint

    ours = model_from_checkpoint(load_checkpoint(run_dir / "checkpoints/best.pt"))
    torch.manual_seed(1)
    image = torch.randn(2, 3, size, size)
    prior = torch.rand(2, 1, size, size)  # an infection probability map
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    picture = (prior.expand(-1, 3, -1, -1) - mean) / std  # their loader: the saved map, ToTensor, Normalize
    with torch.no_grad():
        a = theirs(torch.cat([image, picture], dim=1))
        b = ours(torch.cat([image, prior], dim=1))
    return {
        "format": "infnet-multiclass",
        "authors": "DengPingFan/Inf-Net (same snapshot)",
        "model": "InfNet_UNet.Inf_Net_UNet(6, 3)",
        "tensors": len(state),
        "input": [2, 6, size, size],
        "max_abs_diff": {"logits": float((a - b).abs().max())},
        "max_abs_output": {"logits": float(a.abs().max())},
        "argmax_agreement": float((a.argmax(1) == b.argmax(1)).float().mean()),
        "import_seconds": round(seconds, 2),
        "pass": float((a - b).abs().max()) <= TOLERANCE,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--infnet-repo", type=Path, required=True, help="git dir of a DengPingFan/Inf-Net snapshot")
    parser.add_argument("--work", type=Path, default=Path("/tmp/covseg_weights_bench"))
    parser.add_argument("--size", type=int, default=352)
    parser.add_argument("--write-keys", action="store_true", help="also write the authors' key list for the tests")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/weights/results.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    results = [bench_infnet(fmt, args.infnet_repo, args.work, args.size, args.write_keys) for fmt in INFNET_VARIANTS]
    results.append(bench_multiclass(args.work, args.size, args.write_keys, prior_run=args.work / "infnet_run"))
    record = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
        "tolerance": TOLERANCE,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    for r in results:
        worst = max(r["max_abs_diff"].values())
        print(f"{r['format']}: {'PASS' if r['pass'] else 'FAIL'} max |diff| {worst:.3g} over {len(r['max_abs_diff'])} outputs ({r['authors']})")
    return 0 if all(r["pass"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
