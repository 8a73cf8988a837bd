"""Published checkpoints in, covseg run folders out (``covseg weights import``).

A checkpoint format is a registry entry (``CHECKPOINT_FORMATS``): the covseg model that has the
authors' architecture, its init args and preprocessing, and a key map from the authors' state
dict names to covseg's. Importing reads the file with ``torch.load(weights_only=True)`` (a file
that needs unpickling is refused in one line), accepts a plain state dict or one wrapped as
``{"state_dict": ...}`` / ``{"model": ...}`` (``module.`` prefixes of ``DataParallel`` are
dropped), maps every key, checks every shape against the covseg model, and writes a run folder
(``model.json``, ``checkpoints/best.pt``, ``provenance.json``) that ``predict``, ``evaluate``,
``explain`` and ``export`` read like any trained run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from covseg.errors import CovsegError
from covseg.registry import CHECKPOINT_FORMATS
from covseg.utils.state_dicts import read_state_dict, state_dict_problem

IMPORT_FILES = ("model.json", "provenance.json", "checkpoints")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass(frozen=True)
class CheckpointFormat:
    """How one family of released checkpoints becomes a covseg model.

    ``rename`` maps an author key to a covseg key, ``None`` for a tensor covseg does not use
    (an ImageNet classifier), or raises ``KeyError`` for a key it does not know.
    """

    name: str
    model: str
    init_args: dict[str, Any]
    rename: Callable[[str], str | None]
    preprocessing: dict[str, Any]
    class_names: list[str]
    num_classes: int = 1
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: the model reads a binary run's infection map (``--prior RUN_DIR``)
    needs_prior: bool = False
    #: maps a key of the authors' separate classifier file (``--classifier FILE``) to the model's
    #: (``None`` drops it, ``KeyError`` refuses it); the model is then built with ``classifier=True``
    classifier_key: Callable[[str], str | None] | None = None


def register_format(fmt: CheckpointFormat, help: str) -> CheckpointFormat:
    """Add a format to ``CHECKPOINT_FORMATS`` (its docstring line is ``help``)."""

    def build() -> CheckpointFormat:
        return fmt

    build.__doc__ = help
    CHECKPOINT_FORMATS.register(fmt.name, build)
    return fmt


def get_format(name: str) -> CheckpointFormat:
    """The registered format ``name``; one line listing the known ones otherwise."""
    if name not in CHECKPOINT_FORMATS:
        raise CovsegError(f"unknown checkpoint format {name!r}; choose one of {', '.join(CHECKPOINT_FORMATS.names())}")
    return CHECKPOINT_FORMATS.build(name)


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_state(fmt: CheckpointFormat, state: dict[str, Any], source: str | Path | None = None) -> tuple[Any, dict[str, Any]]:
    """The covseg model of ``fmt`` and the state dict mapped into it (every key and shape checked)."""
    from covseg.models import build_model

    model = build_model(fmt.model, **fmt.init_args)
    expected = model.state_dict()
    mapped: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in state.items():
        try:
            target = fmt.rename(key)
        except KeyError:
            unknown.append(key)
            continue
        if target is not None:
            mapped[target] = value
    what = f"not a {fmt.name} checkpoint ({fmt.source or fmt.model})"
    stray = [k for k in mapped if k not in expected]
    if unknown or stray:  # names the format cannot map count as unknown too
        bad = (unknown + stray)[:3]
        raise CovsegError(f"{what}: {len(unknown) + len(stray)} unknown tensor(s), e.g. {', '.join(bad)}", source)
    problem = state_dict_problem(expected, mapped)
    if problem:
        raise CovsegError(f"{what}: {problem}", source)
    mapped = {k: v.to(expected[k].dtype) for k, v in mapped.items()}
    model.load_state_dict(mapped, strict=True)
    model.eval()
    return model, mapped


def _prior_spec(fmt: CheckpointFormat, prior: str | Path | None) -> dict[str, Any]:
    """``{"prior": ...}`` for ``model.json``: the binary run a cascade format reads its infection map from."""
    from covseg.runs.folder import RunFolder

    if not fmt.needs_prior:
        if prior is not None:
            raise CovsegError(f"format {fmt.name} takes no prior run (--prior is for a cascade format)")
        return {}
    if prior is None:
        raise CovsegError(f"format {fmt.name} needs --prior RUN_DIR: the binary run (e.g. an imported Semi-Inf-Net) whose map it reads")
    description = RunFolder(prior).description()
    if description.num_classes != 1:
        raise CovsegError(f"the prior run must be binary, it has {description.num_classes} classes", prior)
    return {"prior": {"run": str(Path(prior).resolve()), "checkpoint": "best"}}


def _text_spec(fmt: CheckpointFormat, text_encoder: str | Path | None) -> dict[str, Any]:
    """``{"text": ...}`` for ``model.json`` of a text-guided format (its ``extra["text"]``) read with the
    local Hugging Face folder ``text_encoder``, whose feature width must be the format's; ``{}`` keeps
    the format's own entry (an encoder name that is no folder: predicting then asks for one)."""
    text = fmt.extra.get("text")
    if text is None:
        if text_encoder is not None:
            raise CovsegError(f"format {fmt.name} reads no text (--text-encoder is for a text-guided format)")
        return {}
    if text.get("input", "features") != "features":
        if text_encoder is not None:
            raise CovsegError(f"format {fmt.name} reads its caption without a text encoder (--text-encoder is for token features)")
        return {}
    if text_encoder is None:
        return {}
    from covseg.text.encoder import build_text_encoder

    encoder = build_text_encoder({**text["encoder"], "name": str(text_encoder)})
    if encoder.dim != text["encoder"]["dim"]:
        raise CovsegError(f"format {fmt.name} reads {text['encoder']['dim']}-d token features, this encoder gives {encoder.dim}-d", text_encoder)
    return {"text": {**text, "encoder": encoder.spec.to_dict()}}


def with_classifier_file(
    fmt: CheckpointFormat, path: Path
) -> tuple[CheckpointFormat, dict[str, Any], dict[str, Any]]:
    """The format with its classifier built in, the classifier file's tensors under the model's names,
    and their provenance; an unknown tensor is refused in one line naming the classifier file."""
    if fmt.classifier_key is None:
        raise CovsegError(f"format {fmt.name} takes no classifier file (--classifier is for jcs)")
    mapped: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in read_state_dict(path).items():
        try:
            target = fmt.classifier_key(key)
        except KeyError:
            unknown.append(key)
            continue
        if target is not None:
            mapped[target] = value
    if unknown or not mapped:
        found = (
            f"{len(unknown)} unknown tensor(s), e.g. {', '.join(unknown[:3])}" if unknown else "no tensors"
        )
        raise CovsegError(f"not a {fmt.name} classifier checkpoint: {found}", path)
    base, own = fmt.rename, frozenset(mapped)
    with_classifier = replace(
        fmt,
        init_args={**fmt.init_args, "classifier": True},
        rename=lambda key: key if key in own else base(key),
    )
    provenance = {
        "classifier_file": path.name,
        "classifier_sha256": sha256(path),
        "classifier_tensors": len(mapped),
    }
    return with_classifier, mapped, provenance


def import_weights(
    format: str,
    file: str | Path,
    output: str | Path,
    prior: str | Path | None = None,
    text_encoder: str | Path | None = None,
    tokenizer: str | Path | None = None,
    classifier: str | Path | None = None,
) -> Path:
    """Turn a released checkpoint ``file`` of ``format`` into the run folder ``output``; returns its path.

    The folder records where the weights came from (``provenance.json`` and ``model.json``'s
    ``provenance``: file name, SHA-256, format, the authors' code it matches). A cascade format
    (``infnet-multiclass``) needs ``prior``, the binary run whose infection map it reads; a
    text-guided format (``lvit``) reads captions with ``text_encoder``, a local Hugging Face folder.
    An encoder format (``clip``) writes its own model folder (``import_folder``), with ``tokenizer``.
    ``classifier`` is the authors' separate classification checkpoint of a format that has one
    (``jcs``: ``res2net_cls.pth``); the run's class probability then comes from it.
    """
    import torch

    from covseg import __version__
    from covseg.runs.checkpoint import save_checkpoint
    from covseg.runs.description import DESCRIPTION_FORMAT, RunDescription
    from covseg.runs.folder import RunFolder
    from covseg.utils.outputs import OutputFolder

    fmt = get_format(format)
    if hasattr(fmt, "import_folder"):  # an encoder, not a segmentation model (covseg.runs.formats_clip)
        if prior is not None:
            raise CovsegError(f"format {format} takes no prior run (--prior is for a cascade format)")
        if text_encoder is not None:
            raise CovsegError(f"format {format} takes no text encoder (--text-encoder is for a text-guided format)")
        if classifier is not None:
            raise CovsegError(f"format {format} takes no classifier file (--classifier is for jcs)")
        return fmt.import_folder(file, output, tokenizer=tokenizer)
    if tokenizer is not None:
        raise CovsegError(f"format {fmt.name} takes no tokenizer (--tokenizer is for the clip format)")
    file = Path(file)
    prior_spec = _prior_spec(fmt, prior)
    text_spec = _text_spec(fmt, text_encoder)
    state = read_state_dict(file)
    classifier_provenance: dict[str, Any] = {}
    if classifier is not None:
        fmt, classifier_state, classifier_provenance = with_classifier_file(fmt, Path(classifier))
        state = {**state, **classifier_state}
    inputs = [file, *([Path(classifier)] if classifier is not None else [])]
    folder = OutputFolder(output, "weights import", inputs, owned=IMPORT_FILES)
    folder.validate()
    model, mapped = convert_state(fmt, state, file)
    provenance = {
        "source_file": file.name,
        "sha256": sha256(file),
        "format": fmt.name,
        "architecture": fmt.source,
        "tensors": len(state),
        **classifier_provenance,
        "covseg_version": __version__,
    }
    spec = {"name": fmt.model, "init_args": model.init_args}
    description = RunDescription.from_dict(
        {
            "format": DESCRIPTION_FORMAT,
            **spec,
            "preprocessing": fmt.preprocessing,
            "num_classes": fmt.num_classes,
            "class_names": fmt.class_names,
            "trainer": "imported",
            "covseg_version": __version__,
            "provenance": provenance,
            **prior_spec,
            **fmt.extra,
            **text_spec,
        }
    )
    folder.prepare()
    run = RunFolder(output)
    save_checkpoint(
        run.checkpoint("best"),
        {
            "model_spec": spec,
            "model_state": mapped,
            "epoch": -1,
            "preprocessing": dict(fmt.preprocessing),
            "num_classes": fmt.num_classes,
            "provenance": provenance,
            "covseg_version": __version__,
            "torch_version": str(torch.__version__),
        },
    )
    run.write_json("provenance.json", provenance)
    run.write_description(description.to_dict())
    return run.path


# -- the formats ---------------------------------------------------------------------------------


def _basic_conv(prefixes: dict[str, str], key: str) -> str:
    """Map ``PREFIX.conv.P`` / ``PREFIX.bn.P`` (the authors' conv + BN block) to ``NEW.0.P`` / ``NEW.1.P``."""
    for part, index in ((".conv.", ".0."), (".bn.", ".1.")):
        head, sep, tail = key.partition(part)
        if sep and head in prefixes:
            return prefixes[head] + index + tail
    raise KeyError(key)


def _infnet_prefixes() -> dict[str, str]:
    table: dict[str, str] = {}
    for n in (2, 3, 4):
        author, ours = f"rfb{n}_1", f"rfb{n}"
        table[f"{author}.branch0.0"] = f"{ours}.branches.0"
        for branch in (1, 2, 3):
            for j in range(4):
                table[f"{author}.branch{branch}.{j}"] = f"{ours}.branches.{branch}.{j}"
        table[f"{author}.conv_cat"], table[f"{author}.conv_res"] = f"{ours}.fuse", f"{ours}.shortcut"
    ppd = ("up_deep_to_mid", "up_deep_to_low", "up_mid_to_low", "up_deep_for_concat", "up_mid_concat")
    for i, name in enumerate(ppd, 1):
        table[f"ParDec.conv_upsample{i}"] = f"ppd.{name}"
    table.update({"ParDec.conv_concat2": "ppd.concat_mid", "ParDec.conv_concat3": "ppd.concat_low", "ParDec.conv4": "ppd.refine"})
    for stage, convs in ((4, 3), (3, 2), (2, 2)):
        table[f"ra{stage}_conv1"] = f"ra{stage}.reduce"
        for j in range(convs):
            table[f"ra{stage}_conv{j + 2}"] = f"ra{stage}.body.{j}"
        table[f"ra{stage}_conv{convs + 2}"] = f"ra{stage}.classifier"
    for j in range(3):
        table[f"edge_conv{j + 1}"] = f"edge.body.{j}"
    table["edge_conv4"] = "edge.edge_head"
    return table


INFNET_PREFIXES = _infnet_prefixes()


def infnet_vgg_key(key: str) -> str | None:
    """An ``InfNet_VGGNet.Inf_Net`` key as covseg ``infnet(encoder="vgg16", published=True)`` names it."""
    if key.startswith(("vgg.conv4_2.", "vgg.conv5_2.")):
        return None  # B2_VGG's second branch, built but never run by Inf-Net
    if key.startswith("vgg."):
        return "encoder." + key.removeprefix("vgg.")
    if key.startswith("resnet."):
        raise KeyError(key)
    return infnet_key(key)


def infnet_key(key: str) -> str | None:
    """An ``InfNet_Res2Net.Inf_Net`` state-dict key as covseg ``infnet(published=True)`` names it."""
    if key.startswith("resnet.fc."):
        return None  # the ImageNet classifier of the backbone, unused by Inf-Net
    if key.startswith("resnet."):
        return "encoder." + key.removeprefix("resnet.")
    if key.startswith("ParDec.conv5."):
        return "ppd.classifier." + key.removeprefix("ParDec.conv5.")
    return _basic_conv(INFNET_PREFIXES, key)


INFNET_INIT_ARGS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 1,
    "encoder": "res2net50_v1b_26w_4s",
    "channel": 32,
    "ra_channels": [256, 64, 64],
    "edge_channels": 64,
    "published": True,
}
IMAGENET_352 = {"channels": 3, "size": [352, 352], "scale": 255.0, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}

INFNET_RESNET50_INIT_ARGS = {**INFNET_INIT_ARGS, "encoder": "resnet50"}

register_format(
    CheckpointFormat(
        name="infnet",
        model="infnet",
        init_args=INFNET_INIT_ARGS,
        rename=infnet_key,
        preprocessing=IMAGENET_352,
        class_names=["infection"],
        source="DengPingFan/Inf-Net Code/model_lung_infection/InfNet_Res2Net.py (Inf_Net, Res2Net-50 v1b 26w4s)",
    ),
    "Inf-Net / Semi-Inf-Net (Res2Net-50) state dicts, e.g. Inf-Net-100.pth, Semi-Inf-Net-100.pth",
)

register_format(
    CheckpointFormat(
        name="infnet-resnet50",
        model="infnet",
        init_args=INFNET_RESNET50_INIT_ARGS,
        rename=infnet_key,
        preprocessing=IMAGENET_352,
        class_names=["infection"],
        source="DengPingFan/Inf-Net Code/model_lung_infection/InfNet_ResNet.py (Inf_Net, ResNet-50)",
    ),
    "Inf-Net with the ResNet-50 backbone (InfNet_ResNet.py) state dicts",
)

register_format(
    CheckpointFormat(
        name="infnet-multiclass",
        model="unet_multiclass",
        init_args={"in_channels": 3, "out_channels": 3, "prior_channel": True, "published": True},
        rename=lambda key: "net." + key,
        preprocessing=IMAGENET_352,
        class_names=["background", "ground_glass_opacity", "consolidation"],
        num_classes=3,
        source="DengPingFan/Inf-Net Code/model_lung_infection/InfNet_UNet.py (Inf_Net_UNet(6, 3), bilinear)",
        needs_prior=True,
    ),
    "Semi-Inf-Net + multi-class U-Net state dicts (unet_model_200.pkl); --prior names the binary run",
)

register_format(
    CheckpointFormat(
        name="infnet-vgg16",
        model="infnet",
        init_args={**INFNET_INIT_ARGS, "encoder": "vgg16"},
        rename=infnet_vgg_key,
        preprocessing=IMAGENET_352,
        class_names=["infection"],
        source="DengPingFan/Inf-Net Code/model_lung_infection/InfNet_VGGNet.py (Inf_Net, VGG-16 B2_VGG)",
    ),
    "Inf-Net with the VGG-16 backbone (InfNet_VGGNet.py) state dicts",
)
