"""Equivalence of ``covseg weights import --format lvit`` with the authors' LViT code.

Extracts ``nets/LViT.py``, ``nets/Vit.py`` and ``nets/pixlevel.py`` from a fetched snapshot of
HUANGLIZI/LViT (a git directory, ``git show HEAD:path``; nothing is downloaded) into a temporary
folder, builds their ``LViT(config, n_channels=3, n_classes=1)`` with random weights, saves a
checkpoint as their ``train_model.py`` does (``{"epoch", "best_model", "model", "state_dict",
"val_loss", "optimizer"}`` → ``best_model-LViT.pth.tar``), imports it with the CLI in a
subprocess and compares on the same image and text tensor:

1. network: their output (after their sigmoid) and their ``outc`` logits against covseg's run
   model fed the same image (RGB; theirs gets it BGR, as OpenCV reads it) and the same 10 token
   features (covseg's after a leading [CLS] row it skips);
2. predictor: a tiny random 768-d BERT folder (1 layer, a made-up vocabulary) as the run's text
   encoder (``--text-encoder``), ``Predictor.predict_array`` on a 224² grey image and a caption
   against their model fed the same image and that encoder's token features 1..10.

Pass: max |diff| ≤ 1e-4. Two controls show the check can fail (no BGR reversal; text tokens
shifted by one). Patches to their code, only what cannot run here: ``nets/__init__.py`` is
added (their package has none), ``timm`` (not installed; ``DropPath`` is built only for a
drop-path rate > 0, never in LViT) is a stub module, and ``Config.get_CTranS_config`` (it needs
``ml_collections`` and sets CUDA variables) is replaced by an object holding the one field LViT
reads, ``base_channel = 64``.

    python bench/bench_weights_equivalence_lvit.py --lvit-repo /work/.mirror/HUANGLIZI+LViT/repo --write-keys

Writes ``bench/results/weights/lvit.json`` and, with ``--write-keys``, ``tests/assets/weights/lvit_keys.json``.
"""

from __future__ import annotations

import argparse
import json
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
FILES = ("nets/LViT.py", "nets/Vit.py", "nets/pixlevel.py")
WORDS = [
    *("the", "a", "and", "of", "in", "on", "with", "left", "right", "lung", "lungs", "lower", "upper"),
    *("middle", "zone", "zones", "bilateral", "infection", "infected", "opacity"),
]


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


def authors_lvit(folder: Path) -> torch.nn.Module:
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
    from nets.LViT import LViT

    torch.manual_seed(0)
    return LViT(types.SimpleNamespace(base_channel=64), n_channels=3, n_classes=1, img_size=224)


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Random position embeddings, norm affines and biases (their init leaves them 0 / 1 / ~1e-6),
    then batch-norm statistics calibrated on two random batches, so no layer is an identity."""
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
            model(torch.rand(2, 3, 224, 224), torch.randn(2, 10, 768))
    model.eval()


def save_as_they_do(model: torch.nn.Module, path: Path) -> None:
    """``train_model.save_checkpoint``'s dict, with an Adam state (one step at lr 0: weights unchanged)."""
    optimiser = torch.optim.Adam(model.parameters(), lr=0.0)
    model.train()
    model(torch.rand(1, 3, 224, 224), torch.randn(1, 10, 768)).mean().backward()
    optimiser.step()
    model.zero_grad()
    model.eval()
    state = {"epoch": 41, "best_model": True, "model": "LViT", "state_dict": model.state_dict(),
             "val_loss": torch.tensor(0.2931), "optimizer": optimiser.state_dict()}  # fmt: skip
    torch.save(state, path)


def tiny_bert(folder: Path) -> Path:
    """A random 768-d, 1-layer BERT with a made-up lower-case vocabulary (stands in for BERT-base)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, ",", "."]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=768,
        num_hidden_layers=1,
        num_attention_heads=12,
        intermediate_size=256,
    )
    BertModel(config).save_pretrained(str(folder))
    return folder


def cli_import(file: Path, run: Path, *extra: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "covseg",
            "weights",
            "import",
            "--format",
            "lvit",
            "--output",
            str(run),
            *extra,
            str(file),
        ],
        check=True,
    )
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lvit-repo",
        type=Path,
        default=Path("/work/.mirror/HUANGLIZI+LViT/repo"),
        help="git dir of a HUANGLIZI/LViT snapshot",
    )
    parser.add_argument(
        "--write-keys", action="store_true", help="also write the authors' key list for the tests"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/weights/lvit.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="covseg_lvit_bench_"))
    commit = extract(args.lvit_repo, work / "authors")
    theirs = authors_lvit(work / "authors")
    randomise(theirs, seed=0)
    file = work / "best_model-LViT.pth.tar"
    save_as_they_do(theirs, file)
    state = theirs.state_dict()
    if args.write_keys:
        lines = ",\n".join(f"  {json.dumps(k)}: {json.dumps(list(v.shape))}" for k, v in state.items())
        source = f"HUANGLIZI/LViT@{commit} nets/LViT.LViT(config(base_channel=64), n_channels=3, n_classes=1)"
        (ROOT / "tests/assets/weights/lvit_keys.json").write_text(
            f'{{"source": {json.dumps(source)},\n "keys": {{\n{lines}\n}}}}\n'
        )
    seconds = cli_import(file, work / "run")

    from covseg.inference.predictor import Predictor
    from covseg.runs.checkpoint import load_checkpoint, model_from_checkpoint

    ours = model_from_checkpoint(load_checkpoint(work / "run/checkpoints/best.pt")).eval()
    torch.manual_seed(1)
    rgb, text = torch.rand(2, 3, 224, 224), torch.randn(2, 10, 768)
    cls = torch.randn(2, 1, 768)  # covseg's encoder gives [CLS] first; the model skips it
    logits: list[torch.Tensor] = []
    theirs.outc.register_forward_hook(lambda module, inputs, output: logits.append(output))
    with torch.no_grad():
        probs = theirs(rgb.flip(1), text)
        mine = ours(rgb, torch.cat([cls, text], dim=1), torch.ones(2, 11))
        no_bgr = float((probs - torch.sigmoid(ours(rgb.flip(1), torch.cat([cls, text], dim=1)))).abs().max())
        shifted = float((probs - torch.sigmoid(ours(rgb, text))).abs().max())
    network = {
        "logits (outc)": float((logits[0] - mine).abs().max()),
        "probability": float((probs - torch.sigmoid(mine)).abs().max()),
    }

    # the predictor, end to end, with a 768-d BERT folder as the run's text encoder
    bert = tiny_bert(work / "tiny-bert")
    cli_import(file, work / "run_text", "--text-encoder", str(bert))
    image = (np.random.default_rng(2).random((224, 224)) * 255).astype(np.uint8)
    caption = (
        "bilateral infection in the lower left lung and the upper right lung, opacity in the middle zones"
    )
    predictor = Predictor.from_run(work / "run_text", device="cpu")
    predicted = predictor.predict_array(image, text=caption).probs
    tokens = predictor.text_encoder.encode([caption]).tokens
    x = torch.from_numpy(image).float().div(255.0)[None, None].expand(1, 3, -1, -1)
    with torch.no_grad():
        reference = theirs(x, tokens[:, 1:11])[0, 0].numpy()
    predictor_diff = float(np.abs(predicted - reference).max())

    diffs = {**{f"network {k}": v for k, v in network.items()}, "predictor probability": predictor_diff}
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
        "tolerance": TOLERANCE,
        "format": "lvit",
        "authors": f"HUANGLIZI/LViT@{commit}",
        "model": "nets/LViT.LViT(config(base_channel=64), n_channels=3, n_classes=1, img_size=224)",
        "tensors": len(state),
        "input": {"image": [2, 3, 224, 224], "text": [2, 10, 768]},
        "max_abs_diff": diffs,
        "max_abs_logit": float(logits[0].abs().max()),
        "share_of_pixels_with_probability_in_0.05_0.95": float(
            ((probs > 0.05) & (probs < 0.95)).float().mean()
        ),
        "predictor_caption_tokens": int(predictor.text_encoder.encode([caption]).mask.sum()),
        "control_max_abs_diff_probability_without_bgr": no_bgr,
        "control_max_abs_diff_probability_text_shifted_by_one_token": shifted,
        "import_seconds": round(seconds, 2),
        "pass": all(d <= TOLERANCE for d in diffs.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
