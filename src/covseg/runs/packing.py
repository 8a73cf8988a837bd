"""Packed run folders: a trained run reduced to what prediction needs, for shipping (the model zoo).

A packed folder holds ``model.json`` (the run description), ``weights.safetensors`` (the model's
weights in fp16, and a trained text encoder's under ``text_encoder.``; safetensors loads no
code) and ``card.json`` (the model card). :class:`~covseg.engine.segmenter.Segmenter` loads a
packed folder wherever it takes a run folder, and a zoo name wherever it takes a path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from covseg.errors import CovsegError
from covseg.zoo import describe_model as describe_model  # re-exported

WEIGHTS = "weights.safetensors"
TEXT_PREFIX = "text_encoder."


def resolve_run_dir(run_dir: str | Path) -> Path:
    """The folder of a shipped model named ``run_dir`` (``covid-ct-infection``), else the run folder path.

    A shipped model's name wins over a local folder of the same name, so a folder that happens to
    be called ``covid-ct-infection`` never silently replaces the shipped model: written as a path
    (``./covid-ct-infection``, ``runs/x``, an absolute path) it is the folder. (A ``Path`` object
    has lost a leading ``./``: the command line passes the text as typed.)"""
    from covseg import zoo

    shipped = zoo.resolve(str(run_dir))
    return shipped if shipped is not None else Path(run_dir)


def is_packed(folder: Path) -> bool:
    return (Path(folder) / WEIGHTS).is_file()


def load_packed(folder: Path, description: Any) -> dict[str, Any]:
    """A packed folder's weights as a checkpoint dict (float32 tensors, model spec from the description)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CovsegError(f"unreadable packed weights ({type(exc).__name__})", path) from None
    model_state = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items() if not k.startswith(TEXT_PREFIX)}
    ckpt: dict[str, Any] = {
        "model_spec": {"name": description.name, "init_args": description.init_args},
        "model_state": model_state,
    }
    text = {k[len(TEXT_PREFIX) :]: v.float() if v.is_floating_point() else v for k, v in tensors.items() if k.startswith(TEXT_PREFIX)}
    if text:
        ckpt["text_encoder_state"] = text
    return ckpt


def pack_run(run_dir: str | Path, out_dir: str | Path, card: dict[str, Any], checkpoint: str = "last", half: bool = True) -> Path:
    """Write a packed copy of a trained run into ``out_dir`` (fp16 weights unless ``half=False``)."""
    from safetensors.torch import save_file

    from covseg.runs.checkpoint import load_checkpoint
    from covseg.runs.description import RunDescription
    from covseg.runs.folder import RunFolder
    from covseg.utils.atomic import write_json, write_with

    run = RunFolder(run_dir)
    description = run.description()
    ckpt = load_checkpoint(run.resolve_checkpoint(checkpoint))

    def small(v):
        return v.detach().half().contiguous() if half and v.is_floating_point() else v.detach().contiguous()

    tensors = {k: small(v) for k, v in ckpt["model_state"].items()}
    tensors.update({TEXT_PREFIX + k: small(v) for k, v in (ckpt.get("text_encoder_state") or {}).items()})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    desc = description.to_dict()
    if desc.get("text"):
        desc["text"]["cache_file"] = None  # features are recomputed; the cache stays with the run
    RunDescription.from_dict(desc, out / "model.json").write(out)
    write_with(out / WEIGHTS, lambda p: save_file(tensors, str(p), metadata={"format": "covseg-pack/1", "model": description.name}))
    write_json(out / "card.json", card)
    return out
