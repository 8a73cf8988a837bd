"""Equivalence of ``covseg weights import --format jcs --classifier FILE`` with the JCS authors' classifier.

Their classification demo (``tools/gen_results.py`` of yuhuan-wu/JCS) builds
``res2net101_v1b_26w_4s(pretrained=False)``, replaces ``fc`` by ``Linear(2048, 2, bias=False)`` and
loads ``res2net_cls.pth``; its ``ModelOutputs`` runs the modules up to ``avgpool``, flattens and
applies ``fc`` (class 1: COVID-19). This script extracts ``Models/res2net.py`` and
``tools/gen_results.py`` from a fetched snapshot (``git show``; nothing is downloaded), builds that
classifier with random weights (batch norms given random affine terms and calibrated statistics,
convolutions rescaled to unit output RMS, as for ``joint.pth``, on random inputs and the real slices;
``fc`` rescaled to logits of unit spread), saves its ``state_dict`` as
``res2net_cls.pth``, and imports it with the CLI beside a ``joint.pth`` of random weights under the
authors' names (the segmentation network's own equivalence is ``bench_weights_equivalence_jcs.py``).

1. network: their ``ModelOutputs`` logits against the run model's classifier on the same
   ``randn(2, 3, 224, 224)``; pass: max |diff| ≤ 1e-4;
2. preprocessing, on real CT slices (``$COVSEG_DATA/covid19_ct100_jcs``, 512² PNG; skipped when
   absent): their demo's input (PIL ``Resize(256)`` bilinear, ``CenterCrop(224)``, ``ToTensor``,
   ImageNet ``Normalize``: torchvision's transforms on a PIL image, re-implemented with PIL since
   torchvision is not installed here) against covseg's (the run's 512² normalised input, resized
   to 256 by antialiased bilinear interpolation, centre 224²): the two inputs, and the logits and class
   probabilities of both (their PIL resize rounds to 8 bits, so the inputs differ by up to a grey level).

Control: the run's view without the centre crop (the whole image resized to 224²).
Stubs: ``cv2`` and ``torchvision`` (imported by ``gen_results.py`` for drawing and transforms, not
used by ``ModelOutputs``); ``res2net101_v1b_26w_4s(pretrained=False)`` reads no file.

    python bench/bench_weights_equivalence_jcs_classifier.py --jcs-repo /work/.mirror/yuhuan-wu+JCS/repo --write-keys

Writes ``bench/results/weights/jcs_classifier.json`` and, with ``--write-keys``,
``tests/assets/weights/jcs_classifier_keys.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_weights_equivalence import ROOT, TOLERANCE, extract
from bench_weights_equivalence_jcs import randomise

FILES = ("Models/res2net.py", "tools/gen_results.py")
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def authors_classifier(work: Path) -> tuple[torch.nn.Module, object]:
    """Their classifier as ``gen_results.py``'s main builds it, and their ``ModelOutputs`` class."""
    for name in ("cv2", "torchvision", "torchvision.transforms"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["torchvision"].models = sys.modules["torchvision"].utils = None  # type: ignore[attr-defined]
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]  # type: ignore[attr-defined]
    sys.path.insert(0, str(work))
    res2net = importlib.import_module("Models.res2net")
    gen = importlib.import_module("tools.gen_results")
    torch.manual_seed(0)
    model = res2net.res2net101_v1b_26w_4s(pretrained=False)
    model.fc = torch.nn.Linear(2048, 2, bias=False)
    return model.eval(), gen.ModelOutputs


def their_input(path: Path) -> torch.Tensor:
    """``Resize(256)``, ``CenterCrop(224)``, ``ToTensor``, ``Normalize`` of the RGB image, as torchvision does for PIL."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    w, h = image.size
    short, long = min(w, h), max(w, h)
    size_long = int(256 * long / short)
    image = image.resize((256, size_long) if w <= h else (size_long, 256), Image.BILINEAR)
    w, h = image.size
    left, top = round((w - 224) / 2.0), round((h - 224) / 2.0)
    array = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
    return torch.from_numpy(((array - MEAN) / STD).astype(np.float32)).permute(2, 0, 1)[None]


def our_input(path: Path) -> torch.Tensor:
    """The run's input: RGB ÷ 255, ImageNet mean / std, at 512² (these slices are 512² already)."""
    from PIL import Image

    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    assert array.shape[:2] == (512, 512)
    return torch.from_numpy(((array - MEAN) / STD).astype(np.float32)).permute(2, 0, 1)[None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jcs-repo", type=Path, default=Path("/work/.mirror/yuhuan-wu+JCS/repo"))
    parser.add_argument("--write-keys", action="store_true")
    parser.add_argument("--slices", type=int, default=4, help="real CT slices for the preprocessing check")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/weights/jcs_classifier.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="covseg_jcs_cls_bench_"))
    commit = extract(args.jcs_repo, FILES, work / "authors")
    theirs, model_outputs = authors_classifier(work / "authors")
    data = Path(os.environ.get("COVSEG_DATA", "/work/shared/data")) / "covid19_ct100_jcs" / "images"
    files = sorted(data.glob("*.png"))[: args.slices] if data.is_dir() else []
    # calibrated on random inputs and on the real slices (when present): calibrated on noise only,
    # the real slices drive the random network to saturated logits (p = 0.0 everywhere), a check that cannot fail
    calibration = torch.cat([torch.randn(2, 3, 224, 224), *(their_input(path) for path in files)])
    randomise(theirs, calibration, seed=0)
    with torch.no_grad():  # fc rescaled to logits of about unit size on the calibration batch
        theirs.fc.weight.mul_(1.0 / float(model_outputs(theirs, [])(calibration)[1].std().clamp_min(1e-6)))
    state = theirs.state_dict()
    torch.save(state, work / "res2net_cls.pth")
    if args.write_keys:
        lines = ",\n".join(f"  {json.dumps(k)}: {json.dumps(list(v.shape))}" for k, v in state.items())
        source = f"yuhuan-wu/JCS@{commit} tools/gen_results.py: res2net101_v1b_26w_4s() with fc = Linear(2048, 2, bias=False)"
        (ROOT / "tests/assets/weights/jcs_classifier_keys.json").write_text(
            f'{{"source": {json.dumps(source)},\n "keys": {{\n{lines}\n}}}}\n'
        )
    from covseg.models import build_model

    torch.manual_seed(1)
    torch.save(
        build_model("jcs_published").state_dict(), work / "joint.pth"
    )  # the authors' names (identity map)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "covseg", "weights", "import", "--format", "jcs", "--classifier", str(work / "res2net_cls.pth"),
         "--output", str(work / "run"), str(work / "joint.pth")],
        check=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start

    from covseg.runs.checkpoint import load_checkpoint, model_from_checkpoint

    ours = model_from_checkpoint(load_checkpoint(work / "run/checkpoints/best.pt")).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        their_logits = model_outputs(theirs, [])(x)[1]
        our_logits = ours.classifier_fc(
            torch.nn.functional.adaptive_avg_pool2d(ours.classifier(x)[-1], 1).flatten(1)
        )
    diffs = {"network logits (fc)": float((their_logits - our_logits).abs().max())}
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
        "tolerance": TOLERANCE,
        "format": "jcs --classifier",
        "authors": f"yuhuan-wu/JCS@{commit}",
        "model": "tools/gen_results.py: res2net101_v1b_26w_4s(pretrained=False), fc = Linear(2048, 2, bias=False)",
        "tensors": len(state),
        "max_abs_diff": diffs,
        "max_abs_logit": float(their_logits.abs().max()),
        "import_seconds": round(seconds, 2),
    }
    if files:
        from covseg.models.jcs_published import classifier_view

        rows, inputs = [], []
        with torch.no_grad():
            for path in files:
                their_x, x512 = their_input(path), our_input(path)
                inputs.append(float((their_x - classifier_view(x512)).abs().max()))
                their_logits = model_outputs(theirs, [])(their_x)[1][0]
                our_logits = ours.class_logits(x512, None)[0]
                whole = torch.nn.functional.interpolate(
                    x512, size=(224, 224), mode="bilinear", antialias=True
                )
                whole_logits = model_outputs(theirs, [])(whole)[1][0]
                rows.append((path.name, their_logits, our_logits, whole_logits))
        p_covid = [[float(torch.softmax(r[i], 0)[1]) for r in rows] for i in (1, 2, 3)]
        result["real_slices"] = {
            "files": [r[0] for r in rows],
            "input_max_abs_diff": max(
                inputs
            ),  # normalised units; one grey level is 1 / (255 * 0.225) = 0.0174
            "their_logits": [[round(float(v), 5) for v in r[1]] for r in rows],
            "covseg_logits": [[round(float(v), 5) for v in r[2]] for r in rows],
            "their_p_covid": [round(p, 6) for p in p_covid[0]],
            "covseg_p_covid": [round(p, 6) for p in p_covid[1]],
            "max_abs_diff_logits": max(float((r[1] - r[2]).abs().max()) for r in rows),
            "max_abs_diff_probability": max(abs(a - b) for a, b in zip(p_covid[0], p_covid[1])),
            "control_max_abs_diff_logits_whole_image_no_crop": max(
                float((r[1] - r[3]).abs().max()) for r in rows
            ),
            "control_max_abs_diff_probability_whole_image_no_crop": max(
                abs(a - b) for a, b in zip(p_covid[0], p_covid[2])
            ),
        }
    result["pass"] = all(d <= TOLERANCE for d in diffs.values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
