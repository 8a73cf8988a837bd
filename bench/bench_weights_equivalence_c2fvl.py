"""Equivalence of ``covseg weights import --format c2fvl`` with the authors' C2FVL code.

Extracts ``nets/C2FVL.py``, ``nets/VLAB.py`` and ``nets/Vit.py`` from a fetched snapshot of
HUANGLIZI/C2FVL (a git directory, ``git show HEAD:path``; nothing is downloaded) into a temporary
folder, builds their ``C2FVL(config, n_channels=3, n_classes=1)`` with random weights, saves a
checkpoint as their ``train_model.py`` does (``{"epoch", "best_model", "model", "state_dict",
"val_loss", "optimizer"}``), imports it with the CLI in a subprocess and compares:

1. network: their output (after their sigmoid), their final ``outc`` logits and their four side
   outputs (``plamy1..4``) against covseg's run model on the same image (RGB; theirs BGR, as
   OpenCV reads it) and the same 8 attributes;
2. predictor, on real QaTa-COV19 rows (``$COVSEG_DATA/qata_cov19_sgseg/valid``, skipped when
   absent): ``Predictor.predict_array(image, text=caption)`` (the attributes read from the caption)
   against their model fed the image and the attributes built as their loader builds them from
   the spreadsheet columns (``read_attr``'s order bilateral, number, lupper..rlower, unscaled),
   here from ``captions.csv``'s ``pulmonary_infection``, ``infected_area`` and ``pseudo_label``;
3. the caption reader on every row of QaTa's ``captions.csv`` (train and valid): the attributes
   read from the caption against those of the CSV's structured fields.

Pass: max |diff| ≤ 1e-4 and every caption read as its fields say. Controls: no BGR reversal; the
attributes with left and right swapped. Patches to their code, only what cannot run here:
``nets/__init__.py`` is added, ``timm`` (not installed; ``DropPath`` is built only for a
drop-path rate > 0, never here) is a stub, and their config is an object holding the one field
the network reads, ``base_channel = 64``.

    python bench/bench_weights_equivalence_c2fvl.py --c2fvl-repo /work/.mirror/HUANGLIZI+C2FVL/repo --write-keys

Writes ``bench/results/weights/c2fvl.json`` and, with ``--write-keys``, ``tests/assets/weights/c2fvl_keys.json``.
"""

from __future__ import annotations

import argparse
import csv
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

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4
FILES = ("nets/C2FVL.py", "nets/VLAB.py", "nets/Vit.py")


def extract(git_dir: Path, dest: Path) -> str:
    """Their model files under ``dest`` (plus an empty ``nets/__init__.py``); returns the commit id."""
    for name in FILES:
        text = subprocess.run(
            ["git", "--git-dir", str(git_dir), "show", f"HEAD:{name}"], check=True, capture_output=True
        ).stdout
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(text)
    (dest / "nets/__init__.py").write_text("")
    return subprocess.run(
        ["git", "--git-dir", str(git_dir), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


def authors_c2fvl(folder: Path) -> torch.nn.Module:
    timm = types.ModuleType("timm")
    timm.models = types.ModuleType("timm.models")  # type: ignore[attr-defined]
    timm.models.layers = types.ModuleType("timm.models.layers")  # type: ignore[attr-defined]
    timm.models.layers.DropPath = None  # type: ignore[attr-defined]
    for name, module in (
        ("timm", timm),
        ("timm.models", timm.models),
        ("timm.models.layers", timm.models.layers),
    ):  # type: ignore[attr-defined]
        sys.modules.setdefault(name, module)
    sys.path.insert(0, str(folder))
    from nets.C2FVL import C2FVL

    torch.manual_seed(0)
    return C2FVL(types.SimpleNamespace(base_channel=64), n_channels=3, n_classes=1, img_size=224)


def random_attributes(n: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, 1, 8)`` as their loader batches them: laterality 1/2, a zone count, six 0/1 zones."""
    zones = (torch.rand(n, 6, generator=generator) < 0.5).float()
    zones[:, 0] = 1.0
    sides = zones[:, :3].amax(1) + zones[:, 3:].amax(1)
    return torch.cat([sides[:, None], zones.sum(1, keepdim=True), zones], dim=1)[:, None]


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Random position embeddings, norm affines and biases (their init leaves them 0 / 1 / ~1e-6),
    then batch-norm statistics calibrated on two random batches, so no layer is an identity."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "position_embeddings" in name:
                p.normal_(0.0, 0.2)
        for m in model.modules():
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.reset_running_stats()
                m.momentum = None
            if isinstance(m, torch.nn.Linear) and m.bias is not None:
                m.bias.normal_(0.0, 0.05)
        model.train()
        for _ in range(2):
            model(torch.rand(2, 3, 224, 224), random_attributes(2, g))
    model.eval()


def save_as_they_do(model: torch.nn.Module, path: Path) -> None:
    """``train_model.save_checkpoint``'s dict, with an Adam state (one step at lr 0: weights unchanged)."""
    optimiser = torch.optim.Adam(model.parameters(), lr=0.0)
    model.train()
    model(torch.rand(1, 3, 224, 224), random_attributes(1, torch.Generator().manual_seed(9)))[
        0
    ].mean().backward()
    optimiser.step()
    model.zero_grad()
    model.eval()
    state = {"epoch": 57, "best_model": True, "model": "C2FVL", "state_dict": model.state_dict(),
             "val_loss": torch.tensor(0.2471), "optimizer": optimiser.state_dict()}  # fmt: skip
    torch.save(state, path)


def cli_import(file: Path, run: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "covseg",
            "weights",
            "import",
            "--format",
            "c2fvl",
            "--output",
            str(run),
            str(file),
        ],
        check=True,
    )
    return time.perf_counter() - start


def qata_rows(root: Path) -> list[dict[str, str]]:
    rows = []
    for split in ("train", "valid"):
        with (root / split / "captions.csv").open(newline="") as f:
            rows += [{**r, "split": split} for r in csv.DictReader(f)]
    return rows


def csv_attributes(row: dict[str, str]) -> list[float]:
    """Their loader's 8 numbers from the CSV's columns: bilateral, number, then the six zones, unscaled."""
    return [
        float(row["pulmonary_infection"]),
        float(row["infected_area"]),
        *map(float, json.loads(row["pseudo_label"])),
    ]


def caption_check(rows: list[dict[str, str]]) -> dict[str, object]:
    from covseg.data.caption_fields import caption_attributes

    wrong = [r["name"] for r in rows if caption_attributes(r["caption"]) != csv_attributes(r)]
    return {"rows": len(rows), "read_as_the_csv_fields_say": len(rows) - len(wrong), "disagreeing": wrong[:5]}


def real_rows_check(
    theirs: torch.nn.Module, run: Path, root: Path, rows: list[dict[str, str]]
) -> dict[str, float]:
    from PIL import Image

    from covseg.inference.predictor import Predictor

    predictor = Predictor.from_run(run, device="cpu")
    picked = [r for r in rows if r["split"] == "valid"][:4]
    diffs = []
    for row in picked:
        image = np.asarray(Image.open(root / "valid/images" / f"{row['name']}.png").convert("L"))
        predicted = predictor.predict_array(image, text=row["caption"]).probs
        x = (
            torch.from_numpy(image).float().div(255.0)[None, None].expand(1, 3, -1, -1)
        )  # cv2.imread: 3 equal channels
        attributes = torch.tensor([csv_attributes(row)])[None]  # (1, 1, 8), as their DataLoader gives it
        with torch.no_grad():
            reference = theirs(x, attributes)[0][0, 0].numpy()
        diffs.append(float(np.abs(predicted - reference).max()))
    return {"images": len(picked), "max_abs_diff_probability": max(diffs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--c2fvl-repo",
        type=Path,
        default=Path("/work/.mirror/HUANGLIZI+C2FVL/repo"),
        help="git dir of a HUANGLIZI/C2FVL snapshot",
    )
    parser.add_argument(
        "--write-keys", action="store_true", help="also write the authors' key list for the tests"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/weights/c2fvl.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="covseg_c2fvl_bench_"))
    commit = extract(args.c2fvl_repo, work / "authors")
    theirs = authors_c2fvl(work / "authors")
    randomise(theirs, seed=0)
    file = work / "best_model-C2FVL.pth.tar"
    save_as_they_do(theirs, file)
    state = theirs.state_dict()
    if args.write_keys:
        lines = ",\n".join(f"  {json.dumps(k)}: {json.dumps(list(v.shape))}" for k, v in state.items())
        source = (
            f"HUANGLIZI/C2FVL@{commit} nets/C2FVL.C2FVL(config(base_channel=64), n_channels=3, n_classes=1)"
        )
        (ROOT / "tests/assets/weights/c2fvl_keys.json").write_text(
            f'{{"source": {json.dumps(source)},\n "keys": {{\n{lines}\n}}}}\n'
        )
    seconds = cli_import(file, work / "run")

    from covseg.runs.checkpoint import load_checkpoint, model_from_checkpoint

    ours = model_from_checkpoint(load_checkpoint(work / "run/checkpoints/best.pt")).eval()
    g = torch.Generator().manual_seed(1)
    rgb, attributes = torch.rand(2, 3, 224, 224, generator=g), random_attributes(2, g)
    logits: list[torch.Tensor] = []
    theirs.outc.register_forward_hook(lambda module, inputs, output: logits.append(output))
    swapped = attributes[..., [0, 1, 5, 6, 7, 2, 3, 4]]
    with torch.no_grad():
        probs, *sides = theirs(rgb.flip(1), attributes)
        mine = ours.forward_all(rgb, attributes[:, 0])
        no_bgr = float((probs - torch.sigmoid(ours(rgb.flip(1), attributes[:, 0]))).abs().max())
        sides_swapped = float((probs - torch.sigmoid(ours(rgb, swapped[:, 0]))).abs().max())
    diffs = {
        "network logits (outc)": float((logits[-1] - mine["logits"]).abs().max()),
        "network probability": float((probs - torch.sigmoid(mine["logits"])).abs().max()),
        "network side outputs (plamy1..4)": max(
            float((a - b).abs().max()) for a, b in zip(sides, mine["side"])
        ),
    }
    data = Path(os.environ.get("COVSEG_DATA", "/work/shared/data")) / "qata_cov19_sgseg"
    captions, real = None, None
    if data.is_dir():
        rows = qata_rows(data)
        captions = caption_check(rows)
        real = real_rows_check(theirs, work / "run", data, rows)
        diffs["predictor probability (real QaTa valid rows)"] = real["max_abs_diff_probability"]
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
        "tolerance": TOLERANCE,
        "format": "c2fvl",
        "authors": f"HUANGLIZI/C2FVL@{commit}",
        "model": "nets/C2FVL.C2FVL(config(base_channel=64), n_channels=3, n_classes=1, img_size=224)",
        "tensors": len(state),
        "parameters": sum(
            v.numel()
            for k, v in state.items()
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        ),
        "input": {"image": [2, 3, 224, 224], "attributes": [2, 1, 8]},
        "max_abs_diff": diffs,
        "max_abs_logit": float(logits[-1].abs().max()),
        "share_of_pixels_with_probability_in_0.05_0.95": float(
            ((probs > 0.05) & (probs < 0.95)).float().mean()
        ),
        "captions": captions,
        "real_rows": real,
        "control_max_abs_diff_probability_without_bgr": no_bgr,
        "control_max_abs_diff_probability_left_right_zones_swapped": sides_swapped,
        "import_seconds": round(seconds, 2),
        "pass": all(d <= TOLERANCE for d in diffs.values())
        and (captions is None or not captions["disagreeing"]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
