"""Zero-shot CLIPSeg as a covseg run folder, so ``covseg predict --text`` uses it without training.

    python -m covseg.inference.zero_shot /path/to/clipseg-rd64-refined runs/clipseg_zero_shot
    covseg predict --model runs/clipseg_zero_shot --input cxr.png --text "lung opacity"

The run folder holds ``model.json`` (model ``clipseg`` from the weights folder, CLIP's
preprocessing at ``size``², the threshold, a ``"text"`` entry saying the model tokenizes its own
prompts) and ``checkpoints/best.pt`` with the weights the folder gave (the decoder; the frozen
CLIP is re-read from the weights folder, which must stay where it is).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from covseg import __version__
from covseg.runs.folder import RunFolder


def make_clipseg_run(
    weights_dir: str | Path,
    run_dir: str | Path,
    size: int = 352,
    threshold: float = 0.5,
    channels: int = 3,
    class_name: str = "target",
) -> Path:
    """Write a predict-ready run folder for a CLIPSeg weights folder; returns the run path."""
    import torch

    from covseg.models import build_model
    from covseg.models.clipseg import CLIP_MEAN, CLIP_STD
    from covseg.runs.checkpoint import save_checkpoint
    from covseg.runs.description import DESCRIPTION_FORMAT
    from covseg.transforms.preprocess import Preprocessing

    model = build_model("clipseg", pretrained_dir=str(weights_dir), in_channels=channels, out_channels=1)
    mean = list(CLIP_MEAN) if channels == 3 else [sum(CLIP_MEAN) / 3]
    std = list(CLIP_STD) if channels == 3 else [sum(CLIP_STD) / 3]
    pre = Preprocessing(channels=channels, size=(size, size), scale=255.0, mean=mean, std=std)
    run = RunFolder(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    spec = {"name": "clipseg", "init_args": model.init_args}
    run.write_description(
        {
            "format": DESCRIPTION_FORMAT,
            **spec,
            "preprocessing": pre.to_dict(),
            "num_classes": 1,
            "class_names": [class_name],
            "threshold": float(threshold),
            "trainer": "zero-shot",
            "covseg_version": __version__,
            "text": {"input": "ids", "encoder": None, "max_length": model.max_length, "prompt": None, "missing": "error"},
        },
    )
    save_checkpoint(
        run.checkpoint("best"),
        {
            "model_spec": spec,
            "model_state": model.state_dict(),
            "epoch": -1,
            "preprocessing": pre.to_dict(),
            "num_classes": 1,
            "covseg_version": __version__,
            "torch_version": str(torch.__version__),
        },
    )
    return run.path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Make a zero-shot CLIPSeg run folder for covseg predict.")
    parser.add_argument("weights", help="local folder with CLIPSeg config.json, weights and tokenizer files")
    parser.add_argument("run", help="run folder to write")
    parser.add_argument("--size", type=int, default=352)
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args(argv)
    from covseg.errors import CovsegError

    try:
        path = make_clipseg_run(args.weights, args.run, size=args.size, threshold=args.threshold)
    except CovsegError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"zero-shot CLIPSeg run folder: {path}")


if __name__ == "__main__":
    main()
