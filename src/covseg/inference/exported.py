"""``covseg export``: a run folder as one self-contained model file plus a model card, and the
predictor that runs it with onnxruntime or TorchScript (``covseg predict --engine onnx``).

The export folder holds ``model.onnx`` (or ``model.ts``) and ``model_card.json`` (MONAI-bundle
style: the network's input and output format, the intensity window and normalisation, classes,
threshold, the inferer, what it was trained on and its validation scores, versions). Prediction
from it goes through the same :class:`~covseg.engine.segmenter.Segmenter` as a run folder, so
preprocessing, restoration to the input's size and thresholds are identical; only the network
call differs. A text-guided run's export adds ``text_inputs.npz`` (its prompts' text inputs,
:mod:`covseg.inference.exported_text`); a cascade's export holds its first stage's export in
``prior/`` or ``coarse/``; ``--format bundle`` writes a MONAI bundle (:mod:`covseg.inference.bundle`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covseg import __version__
from covseg.engine.runtime import Runtime
from covseg.errors import CovsegError
from covseg.inference.exported_text import (
    TEXT_FILE,
    ExportedTextAdapter,
    export_prompts,
    precompute_text_inputs,
    text_example,
)
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


def _load_run_model(run, checkpoint: str):
    """The run's model in eval mode, its checkpoint dict and the checkpoint's name (``packed`` for a zoo model)."""
    from covseg.runs.checkpoint import load_checkpoint, model_from_checkpoint
    from covseg.runs.packing import WEIGHTS, is_packed, load_packed

    description = run.description()
    if is_packed(run.path):  # a shipped (zoo) model: its fp16 weights, read back as float32
        path, checkpoint = run.path / WEIGHTS, "packed"
        ckpt = load_packed(run.path, description)
    else:
        path = run.resolve_checkpoint(checkpoint)
        if path.exists() and not path.resolve().is_relative_to(run.path.resolve()):  # a path, or a link leaving the run
            raise CovsegError(f"checkpoint {checkpoint!r} is {path.resolve()}, outside this run folder: its card and "
                              "model.json would describe another run's weights (export that run instead)", run.path)  # fmt: skip
        ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt, path=path).eval(), ckpt, checkpoint


def export_run(
    run_dir: str | Path, fmt: str, out_dir: str | Path, checkpoint: str = "best", prompts: Sequence[str] = (), _seen: tuple[Path, ...] = ()
) -> Path:
    """Write the run's model as ``fmt`` (``onnx`` | ``torchscript`` | ``bundle``) with its card into ``out_dir``.

    A text-guided run exports to ONNX with its text inputs and ``prompts``' precomputed text features
    (:mod:`covseg.inference.exported_text`); ``bundle`` writes a MONAI bundle (:mod:`covseg.inference.bundle`)."""
    from covseg.models.export import export_onnx, export_text_onnx, has_class_output
    from covseg.runs.folder import RunFolder
    from covseg.runs.packing import resolve_run_dir
    from covseg.utils.atomic import write_json, write_with

    if fmt not in (*FILES, "bundle"):
        raise CovsegError(f"--format must be onnx, torchscript or bundle, got {fmt!r}")
    run = RunFolder(resolve_run_dir(run_dir))  # a shipped model's name, or a run or packed folder
    description = run.description()
    if fmt == "bundle":
        from covseg.inference.bundle import export_bundle

        return export_bundle(run, _load_run_model(run, checkpoint)[0], out_dir)
    if prompts and description.text is None:
        raise CovsegError("export: --prompt applies to text-guided runs; this run reads the image only", run.path)
    if description.text is not None and fmt != "onnx":
        raise CovsegError("export: a text-guided run exports to onnx (its text inputs beside it); use --format onnx", run.path)
    if run.path.resolve() in _seen:
        raise CovsegError("the cascade's stages form a loop (a run is its own prior or coarse run)", run.path / "model.json")
    stages = _stages(run, description)  # a cascade's first stage: the prior run, or the coarse run
    text_files = (TEXT_FILE,) if description.text is not None else ()
    folder = OutputFolder(out_dir, "export", [run.path], owned=(*FILES.values(), CARD, *text_files, *stages))
    folder.validate()
    model, ckpt, checkpoint = _load_run_model(run, checkpoint)
    text_card = None
    if description.text is not None:
        text_card, arrays = _text_inputs_of(run, description, model, ckpt, prompts)
    out = folder.prepare()
    for sub, (stage_dir, stage_checkpoint, _) in stages.items():  # each stage exported whole into its subfolder
        export_run(stage_dir, fmt, out / sub, stage_checkpoint, _seen=(*_seen, run.path.resolve()))
    target = out / FILES[fmt]
    if text_card is not None:
        write_with(out / TEXT_FILE, lambda p: _save_npz(p, arrays))
        write_with(target, lambda p: export_text_onnx(model, p, text_example(arrays)))
    elif fmt == "onnx":
        write_with(target, lambda p: export_onnx(model, p, method="torchscript", class_output=True))
    else:
        write_with(target, lambda p: torch.jit.save(trace_network(model), str(p)))
    classes = None
    if has_class_output(model):  # the joint model's second output: its class count, read off one forward pass
        with torch.no_grad():
            probe = torch.zeros(1, model.input_channels, *((32,) * int(getattr(model, "spatial_dims", 2))))
            classes = int(model.forward_heads(probe)["class_logits"].shape[1])
    card = model_card(run, description, fmt, checkpoint, ckpt.get("epoch"), classes)
    if stages:
        card["stages"] = {sub: {"folder": sub, **extra} for sub, (_, _, extra) in stages.items()}
    if text_card is not None:
        card["text"] = text_card
        card["network_data_format"]["inputs"].update(
            {name: {"type": "text", "file": TEXT_FILE, "dtype": str(arrays[f"{name}__0"].dtype)} for name in text_card["inputs"]}
        )
    write_json(out / CARD, card)
    return target


def _stages(run, description: RunDescription) -> dict[str, tuple[Path, str, dict[str, Any]]]:
    """The first stage of a cascade run: ``{"prior": (run, checkpoint, {})}`` (its map is an input channel) or
    ``{"coarse": (run, checkpoint, {margin_mm, threshold})}`` (its map gives the region of interest); ``{}``."""
    stages: dict[str, tuple[Path, str, dict[str, Any]]] = {}
    for sub, spec in (("prior", description.prior), ("coarse", description.cascade)):
        if spec is None:
            continue
        path = Path(spec.run).expanduser()
        path = path if path.is_absolute() else run.path / path  # a relative stage lies inside or beside the run folder
        if path.resolve() == run.path.resolve():
            raise CovsegError(f"model.json {sub} run points at this run folder itself", run.path / "model.json")
        extra = {"margin_mm": spec.margin_mm, "threshold": spec.threshold} if sub == "coarse" else {}
        stages[sub] = (path, spec.checkpoint, extra)
    return stages


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:  # a file object: np.savez would add ".npz" to the temporary name
        np.savez(fh, **arrays)


def trace_network(model: torch.nn.Module) -> torch.jit.ScriptModule:
    """The model traced for TorchScript (a joint model with its second output, ``class_logits``)."""
    from covseg.models.export import WithClassOutput, has_class_output

    dims = int(getattr(model, "spatial_dims", 2))
    example = torch.zeros(1, model.input_channels, *((32,) * 3 if dims == 3 else (64, 64)))
    network = WithClassOutput(model).eval() if has_class_output(model) else model
    with torch.no_grad():
        return torch.jit.trace(network, example, check_trace=False)


def _text_inputs_of(run, description: RunDescription, model, ckpt: dict, prompts: Sequence[str]):
    """The card's ``text`` entry and the exported prompts' text inputs of a text-guided run."""
    from covseg.engine.adapters import TextAdapter

    covered = export_prompts(description.text.prompt, prompts)
    if not covered:
        raise CovsegError("export: a text-guided run needs the prompts it will be asked with: --prompt TEXT (repeat it)", run.path)
    adapter = TextAdapter.from_description(description, model=model, checkpoint=ckpt, run_dir=run.path)
    arrays = precompute_text_inputs(model, adapter.encoder, covered)
    names = sorted({key.split("__")[0] for key in arrays}, key=lambda n: ("mask" in n, n))  # features/ids first, then the mask
    return {"file": TEXT_FILE, "inputs": names, "prompts": covered, "input_kind": description.text.input}, arrays


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
    adapters, cascade = _exported_stages(folder, card, engine, runtime)
    if card.get("text"):
        adapters.append(ExportedTextAdapter.load(folder, card))
    segmenter = Segmenter(
        network, pre, description.num_classes, adapters, inferer, description.threshold, False, description, folder, runtime,  # type: ignore[arg-type]
        volume_plan=plan, cascade=cascade,
    )
    return Predictor(segmenter)


def _exported_stages(folder: Path, card: dict[str, Any], engine: str, runtime: Runtime) -> tuple[list, Any]:
    """A cascade export's first stage from its subfolder: the prior adapter, or the coarse stage."""
    from covseg.engine.adapters import PriorAdapter
    from covseg.engine.cascade import CoarseStage

    stages = card.get("stages") or {}
    if not isinstance(stages, dict) or not set(stages) <= {"prior", "coarse"}:
        raise CovsegError("model card's stages name neither a prior nor a coarse stage", folder / CARD)
    adapters: list = []
    cascade = None
    for sub, spec in stages.items():
        stage_dir = folder / sub
        if not (isinstance(spec, dict) and spec.get("folder") == sub and stage_dir.is_dir() and not stage_dir.is_symlink()):
            raise CovsegError(f"the export's {sub} stage is missing (its folder {sub}/)", folder)
        segmenter = load_exported(stage_dir, engine, runtime).segmenter
        if sub == "prior":
            adapters.append(PriorAdapter(segmenter, sub))
        else:
            cascade = CoarseStage(segmenter, float(spec.get("margin_mm", 20.0)), float(spec.get("threshold", 0.5)), stage_dir)
    return adapters, cascade
