"""Equivalence of ``covseg weights import --format jcs`` with the JCS authors' own model code.

Extract ``Models/{joint_model,vgg,res2net,resnet,utils}.py`` from a fetched snapshot of
yuhuan-wu/JCS (a git directory, read with ``git show HEAD:path``; nothing is downloaded), build
their ``JCS()`` with random weights (every batch norm, frozen or not, given random affine terms and
statistics calibrated on the input it sees, so no layer is an identity; every convolution rescaled
to unit output root mean square, so the side outputs are not vanishingly small), save its ``state_dict``
as their training script saves ``joint.pth``, import that file with the CLI (a subprocess),
rebuild the run's model from its checkpoint and compare on the same input, in eval mode:

- the five side outputs ``cls1``–``cls5`` (logits, before their resize) and the five probability
  maps their ``forward`` returns (``sigmoid(cat(...))``) with covseg's ``logits`` and ``aux``;
- the image-level probability of the run (``class_logits``, softmax) with the maximum of their
  first map, the rule the format documents.

Pass: max |diff| ≤ 1e-4. Control: covseg's model with ``gpd1`` at the dilations of ``gpd``
(1, 3, 6, 9 instead of 1, 2, 3, 4) must fail. The one patch of their code: ``res2net101_v1b``
opens ``res2net101_v1b_26w_4s-0812c246.pth`` in the working directory (and never uses it); the
script builds the same ``Res2Net(Bottle2neck, [3, 4, 23, 3])`` without reading the file.

    python bench/bench_weights_equivalence_jcs.py --jcs-repo /work/.mirror/yuhuan-wu+JCS/repo --write-keys

Writes ``bench/results/weights/jcs.json`` and, with ``--write-keys``, the authors' key and shape
list the tests check the map against (``tests/assets/weights/jcs_joint_keys.json``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_weights_equivalence import ROOT, TOLERANCE, extract, import_with_cli

JCS_FILES = (
    "Models/joint_model.py",
    "Models/vgg.py",
    "Models/res2net.py",
    "Models/resnet.py",
    "Models/utils.py",
)
KEYS_FILE = ROOT / "tests/assets/weights/jcs_joint_keys.json"


def authors_jcs(work: Path) -> tuple[torch.nn.Module, str]:
    """Their ``JCS()`` with the unused ImageNet file read of ``res2net101_v1b`` patched out; and the commit."""
    if str(work) not in sys.path:
        sys.path.insert(0, str(work))
    joint = importlib.import_module("Models.joint_model")
    res2net = importlib.import_module("Models.res2net")

    def res2net101_v1b(pretrained=None, **kwargs):  # theirs: the same, after torch.load of a file it drops
        return res2net.Res2Net(res2net.Bottle2neck, [3, 4, 23, 3], baseWidth=26, scale=4, **kwargs)

    joint.res2net101_v1b = res2net101_v1b
    torch.manual_seed(0)
    return joint.JCS().eval()


def write_keys(state: dict[str, torch.Tensor], commit: str) -> None:
    """The authors' key → shape list the tests check the map against."""
    lines = ",\n".join(f"  {json.dumps(k)}: {json.dumps(list(v.shape))}" for k, v in state.items())
    KEYS_FILE.write_text(
        f'{{"source": "yuhuan-wu/JCS@{commit} Models/joint_model.py JCS()",\n "keys": {{\n{lines}\n}}}}\n'
    )


def randomise(model: torch.nn.Module, x: torch.Tensor, seed: int) -> None:
    """Random weights at a moderate scale: every batch norm (buffers or parameters) gets random affine terms
    and the statistics of the input it sees; every convolution is rescaled so that its output on ``x``
    has unit root mean square (the default initialisation shrinks the decoder's signal ~10× per level)."""
    torch.manual_seed(seed)
    hooks = []

    def calibrate(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        y = args[0]
        module.running_mean.copy_(y.mean(dim=(0, 2, 3)))
        module.running_var.copy_(y.var(dim=(0, 2, 3)) + 1e-3)

    def unit_std(module: torch.nn.Conv2d, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        factor = 1.0 / float(out.pow(2).mean().sqrt().clamp_min(1e-6))
        module.weight.mul_(factor)
        if module.bias is not None:
            module.bias.mul_(factor)
        return out * factor

    for m in model.modules():
        if hasattr(m, "running_var") and hasattr(m, "weight"):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
            hooks.append(m.register_forward_pre_hook(calibrate))
        elif isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(unit_std))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()


def side_logits(model: torch.nn.Module, x: torch.Tensor, call) -> tuple[list[torch.Tensor], object]:
    """The outputs of ``cls1``–``cls5`` (before any resize) while ``call(x)`` runs, and its result."""
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        getattr(model, f"cls{i}").register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out))
        for i in range(1, 6)
    ]
    with torch.no_grad():
        result = call(x)
    for h in hooks:
        h.remove()
    return [seen[i] for i in range(1, 6)], result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jcs-repo", type=Path, required=True, help="git dir of a yuhuan-wu/JCS snapshot")
    parser.add_argument("--work", type=Path, default=Path("/tmp/covseg_weights_bench_jcs"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument(
        "--write-keys", action="store_true", help="also write the authors' key list for the tests"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/weights/jcs.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    commit = extract(args.jcs_repo, JCS_FILES, args.work / "jcs")
    theirs = authors_jcs(args.work / "jcs")
    torch.manual_seed(1)
    x = torch.randn(args.batch, 3, args.size, args.size)
    randomise(theirs, x, seed=0)  # scales set on the compared input: moderate outputs everywhere
    state = theirs.state_dict()
    file = args.work / "joint-random.pth"
    torch.save(state, file)
    if args.write_keys:
        write_keys(state, commit)
    run_dir = args.work / "jcs_run"
    seconds = import_with_cli("jcs", file, run_dir)

    from covseg.models.jcs_published import GPD
    from covseg.runs.checkpoint import load_checkpoint, model_from_checkpoint

    ours = model_from_checkpoint(load_checkpoint(run_dir / "checkpoints/best.pt")).eval()
    their_sides, their_maps = side_logits(theirs, x, theirs)
    our_sides, out = side_logits(ours, x, ours.forward_heads)
    with torch.no_grad():
        train_out = ours.forward_train(x)
        plain = ours(x)
    our_maps = torch.sigmoid(torch.cat([out["logits"], *train_out["aux"]], dim=1))
    diffs = {
        f"cls{i + 1} logits": float((a - b).abs().max())
        for i, (a, b) in enumerate(zip(their_sides, our_sides))
    }
    diffs.update(
        {
            f"map {i + 1} (probability)": float((their_maps[:, i] - our_maps[:, i]).abs().max())
            for i in range(5)
        }
    )
    diffs["forward (probability)"] = float((their_maps[:, 0] - torch.sigmoid(plain[:, 0])).abs().max())
    class_prob = torch.softmax(out["class_logits"], dim=1)[:, 1]
    diffs["class probability = max of map 1"] = float(
        (class_prob - their_maps[:, 0].flatten(1).amax(dim=1)).abs().max()
    )
    scale = {f"cls{i + 1} logits": float(a.abs().max()) for i, a in enumerate(their_sides)}

    control_gpd = GPD(512)  # the sixth level's GPD at the first one's dilations, same weights
    control_gpd.load_state_dict(ours.gpd1.state_dict())
    ours.gpd1 = control_gpd.eval()
    with torch.no_grad():
        control = float((their_maps[:, 0] - torch.sigmoid(ours(x)[:, 0])).abs().max())
    first = their_maps[:, 0]
    record = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
        "tolerance": TOLERANCE,
        "results": [
            {
                "format": "jcs",
                "authors": f"yuhuan-wu/JCS@{commit}",
                "model": "Models/joint_model.py JCS() (res2net101_v1b's unused ImageNet file read patched out)",
                "tensors": len(state),
                "input": list(x.shape),
                "max_abs_diff": diffs,
                "max_abs_output": scale,
                "control_max_abs_diff_probability_gpd1_dilations_1_3_6_9": control,
                "share_of_pixels_with_probability_in_0.05_0.95": float(
                    ((first > 0.05) & (first < 0.95)).float().mean()
                ),
                "class_probability": [round(float(p), 4) for p in class_prob],
                "import_seconds": round(seconds, 2),
                "pass": all(d <= TOLERANCE for d in diffs.values()),
                "control_fails": control > TOLERANCE,
            }
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    r = record["results"][0]
    worst = max(r["max_abs_diff"].values())
    print(
        f"jcs: {'PASS' if r['pass'] else 'FAIL'} max |diff| {worst:.3g} over {len(diffs)} outputs; control {control:.3g} ({r['authors']})"
    )
    return 0 if r["pass"] and r["control_fails"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
