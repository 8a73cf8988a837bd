"""``covseg export``: a run folder as one self-contained model file plus a model card, and the
predictor that runs it with onnxruntime or TorchScript (``covseg predict --engine onnx``).

The export folder holds ``model.onnx`` (or ``model.ts``) and ``model_card.json`` (MONAI-bundle
style: the network's input and output format, the intensity window and normalisation, classes,
threshold, the inferer, what it was trained on and its validation scores, versions). Prediction
from it goes through the same :class:`~covseg.engine.segmenter.Segmenter` as a run folder, so
preprocessing, restoration to the input's size and thresholds are identical; only the network
call differs.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import torch

from covseg import __version__
from covseg.engine.runtime import Runtime
from covseg.errors import CovsegError
from covseg.inference.network import ExportedNetwork
from covseg.runs.description import RunDescription
from covseg.utils.outputs import OutputFolder

__all__ = ["ExportedNetwork", "export_run", "load_exported", "model_card"]  # ExportedNetwork lives in covseg.inference.network

CARD = "model_card.json"
FILES = {"onnx": "model.onnx", "torchscript": "model.ts"}


def _best_row(run) -> dict[str, Any]:
    rows = run.read_history()
    best = [r for r in rows if r.get("best") == "1"]
    row = (best or rows or [{}])[-1]
    return {k: float(v) for k, v in row.items() if k.startswith("val_") and v not in ("", None)}


def model_card(
    run, description: RunDescription, engine: str, checkpoint: str, epoch: Any, class_outputs: int | None = None
) -> dict[str, Any]:
    """The model card of an exported run (what a user needs to feed it and read its output); a joint
    model's card also describes its second output, ``class_logits`` (``class_outputs`` classes)."""
    pre = description.preprocessing
    k = description.num_classes
    names = description.class_names or []
    channel_def = {"0": names[0]} if k == 1 and names else {str(i): n for i, n in enumerate(["background", *names][-k:])}
    try:
        dataset = run.read_json("dataset.json")
    except CovsegError:
        dataset = None
    return {
        "format": "covseg-export/1",
        "engine": engine,
        "file": FILES[engine],
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "covseg_version": __version__,
        "torch_version": str(torch.__version__),
        "source": {"run": str(run.path.resolve()), "checkpoint": checkpoint, "epoch": epoch},
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "num_channels": pre.channels,
                    "spatial_shape": list(pre.size) if pre.size else "any (padded inside the network)",
                    "dtype": "float32",
                    "value_range": "(x / scale - mean) / std per channel, or the window mapped to [0, 1] first",
                }
            },
            "outputs": {
                "pred": {
                    "type": "logits",
                    "num_channels": k,
                    "activation": "sigmoid" if k == 1 else "softmax",
                    "channel_def": channel_def,
                    "threshold": description.threshold,
                },
                **(
                    {
                        "class_logits": {
                            "type": "logits",
                            "num_channels": class_outputs,
                            "activation": "softmax",
                            "channel_def": {str(i): n for i, n in enumerate((description.class_names or [])[:class_outputs])},
                        }
                    }
                    if class_outputs
                    else {}
                ),
            },
        },
        "preprocessing": pre.model_dump(mode="json"),
        "inferer": description.inferer.model_dump(mode="json"),
        "training_data": dataset,
        "validation": _best_row(run),
        "description": description.to_dict(),
    }


def export_run(run_dir: str | Path, fmt: str, out_dir: str | Path, checkpoint: str = "best") -> Path:
    """Write the run's model as ``fmt`` (``onnx`` | ``torchscript``) with its card into ``out_dir``."""
    from covseg.models.export import export_onnx, has_class_output
    from covseg.runs.checkpoint import load_checkpoint, model_from_checkpoint
    from covseg.runs.folder import RunFolder
    from covseg.runs.packing import WEIGHTS, is_packed, load_packed, resolve_run_dir
    from covseg.utils.atomic import write_json, write_with

    if fmt not in FILES:
        raise CovsegError(f"--format must be onnx or torchscript, got {fmt!r}")
    run = RunFolder(resolve_run_dir(run_dir))  # a shipped model's name, or a run or packed folder
    description = run.description()
    if description.text is not None:
        raise CovsegError("export: text-guided runs read a caption beside the image; export covers image-only models", run.path)
    if description.prior is not None:
        raise CovsegError("export: a cascade run needs its prior run as a second input; export the runs separately", run.path)
    if description.cascade is not None:
        raise CovsegError("export: a coarse-to-fine run needs its coarse run too; export the coarse and fine runs separately", run.path)
    folder = OutputFolder(out_dir, "export", [run.path], owned=(*FILES.values(), CARD))
    folder.validate()
    if is_packed(run.path):  # a shipped (zoo) model: its fp16 weights, read back as float32
        path, checkpoint = run.path / WEIGHTS, "packed"
        ckpt = load_packed(run.path, description)
    else:
        path = run.resolve_checkpoint(checkpoint)
        if path.exists() and not path.resolve().is_relative_to(run.path.resolve()):  # a path, or a link leaving the run
            raise CovsegError(f"checkpoint {checkpoint!r} is {path.resolve()}, outside this run folder: its card and "
                              "model.json would describe another run's weights (export that run instead)", run.path)  # fmt: skip
        ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path=path).eval()
    out = folder.prepare()
    target = out / FILES[fmt]
    if fmt == "onnx":
        write_with(target, lambda p: export_onnx(model, p, method="torchscript", class_output=True))
    else:
        from covseg.models.export import WithClassOutput, has_class_output

        dims = int(getattr(model, "spatial_dims", 2))
        example = torch.zeros(1, model.input_channels, *((32,) * 3 if dims == 3 else (64, 64)))
        network = WithClassOutput(model).eval() if has_class_output(model) else model
        with torch.no_grad():
            traced = torch.jit.trace(network, example, check_trace=False)
        write_with(target, lambda p: torch.jit.save(traced, str(p)))
    classes = None
    if has_class_output(model):  # the joint model's second output: its class count, read off one forward pass
        with torch.no_grad():
            probe = torch.zeros(1, model.input_channels, *((32,) * int(getattr(model, "spatial_dims", 2))))
            classes = int(model.forward_heads(probe)["class_logits"].shape[1])
    write_json(out / CARD, model_card(run, description, fmt, checkpoint, ckpt.get("epoch"), classes))
    return target


def load_exported(folder: str | Path, engine: str, runtime: Runtime | None = None):
    """A :class:`~covseg.inference.predictor.Predictor` for a ``covseg export`` folder."""
    from covseg.engine.inferers import build_inferer
    from covseg.engine.segmenter import Segmenter
    from covseg.inference.predictor import Predictor
    from covseg.transforms.preprocess import Preprocessing

    folder = Path(folder)
    card_path = folder / CARD
    if not card_path.is_file():
        raise CovsegError(f"not a covseg export folder (no {CARD}; write one with covseg export)", folder)
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CovsegError(f"corrupt model card ({type(exc).__name__})", card_path) from None
    if not isinstance(card, dict) or card.get("engine") not in FILES:
        raise CovsegError("model card names no engine (onnx or torchscript)", card_path)
    if card["engine"] != engine:
        raise CovsegError(f"this folder holds a {card['engine']} model; use --engine {card['engine']}", folder)
    description = RunDescription.from_dict(card.get("description"), card_path)
    runtime = runtime or Runtime()
    dims = int(description.init_args.get("spatial_dims", 2))
    network = ExportedNetwork(folder / FILES[engine], engine, runtime, dims)
    if "class_logits" in card.get("network_data_format", {}).get("outputs", {}):
        network.head_outputs = ("class_logits",)  # a joint model: its file has the class output too
    pre = Preprocessing.from_dict(description.preprocessing.model_dump())
    inferer = build_inferer(description.inferer.model_dump(), default_size=pre.size)
    plan = None
    if description.volume is not None:  # a volume run: its plan travels in the card's description
        from covseg.transforms.volume import VolumePlan

        plan = VolumePlan.from_dict(description.volume.model_dump())
    segmenter = Segmenter(
        network, pre, description.num_classes, [], inferer, description.threshold, False, description, folder, runtime,  # type: ignore[arg-type]
        volume_plan=plan,
    )
    return Predictor(segmenter)
