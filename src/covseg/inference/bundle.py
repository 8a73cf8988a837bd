"""``covseg export --format bundle``: a run as a MONAI bundle (``configs/metadata.json``,
``configs/inference.json``, ``models/model.ts``, ``docs/README.md``).

The bundle runs without covseg: ``python -m monai.bundle run --config_file configs/inference.json
--meta_file configs/metadata.json --bundle_root BUNDLE --dataset_dir IN --output_dir OUT`` reads every
image of ``IN`` (PNG/JPG for a 2D run, NIfTI for a 3D run) and writes ``OUT/<name>_seg.nii.gz``.

- **2D runs** (``resize`` inferer): ``model.ts`` is the network with covseg's resize inferer scripted
  around it (antialiased bilinear to the network size, logits back to the image's size), so the
  bundle's plain transforms (load, channel first, ``(x / scale - mean) / std``) give the masks of
  ``covseg predict``. A 2D run with a ``sliding_window`` inferer gets MONAI's ``SlidingWindowInferer``.
- **3D runs**: RAS orientation, the HU window to 0..1, the plan's spacing (MONAI ``Spacingd``), its
  body crop (``CropForegroundd`` above the plan's threshold: no opening or largest component), its
  normalisation, MONAI's ``SlidingWindowInferer`` with the run's window size, and ``Invertd`` back to
  the input grid. MONAI resamples on its own grid and crops without covseg's morphology, so masks
  agree closely, not voxel for voxel.

Text-guided, cascade, 2.5D runs and 2D runs on HU slices are refused (no bundle transform here for
their extra inputs or intensities); 2D bundles read 8-bit images (PNG/JPG) as ``covseg predict`` does.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from covseg import __version__
from covseg.errors import CovsegError
from covseg.utils.monai_import import import_monai
from covseg.utils.outputs import OutputFolder

#: where verify_metadata's schema lives (a local copy can be passed as ``filepath``)
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
ENTRIES = ("configs", "models", "docs")


class ResizeForward(torch.nn.Module):
    """covseg's ``resize`` inferer around a traced network: the input resized to ``size`` (bilinear,
    antialiased, as :func:`covseg.transforms.preprocess.resize_tensor`), logits resized back (bilinear)."""

    def __init__(self, network: torch.nn.Module, size: list[int]) -> None:
        super().__init__()
        self.network = network
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        if len(self.size) == 2 and (h != self.size[0] or w != self.size[1]):
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        y = self.network(x)
        if y.shape[-2] != h or y.shape[-1] != w:
            y = F.interpolate(y, size=[h, w], mode="bilinear", align_corners=False)
        return y


def _refuse(description: Any, run_path: Path) -> None:
    if description.text is not None:
        raise CovsegError("export --format bundle: a text-guided run needs its text input; export it with --format onnx --prompt", run_path)
    if description.prior is not None or description.cascade is not None:
        raise CovsegError("export --format bundle: a cascade run needs its other stage as an input; export the stages separately", run_path)
    if description.volume is None and description.preprocessing.window is not None:
        raise CovsegError("export --format bundle: a 2D run reading HU slices (preprocess.window) has no bundle transform here; use --format onnx", run_path)
    if description.volume is not None and int(description.init_args.get("spatial_dims", 2)) == 2:
        raise CovsegError("export --format bundle: 2.5D runs (neighbouring slices as channels) have no bundle transform; use --format onnx", run_path)


def _network(model: torch.nn.Module, description: Any, dims: int) -> torch.jit.ScriptModule:
    """The bundle's TorchScript network: traced, with the resize inferer scripted around it for 2D runs."""
    example = torch.zeros(1, int(model.input_channels), *((32,) * 3 if dims == 3 else (64, 64)))
    with torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
    size = description.preprocessing.size
    if dims == 2 and description.inferer.model_dump(mode="json").get("name", "resize") == "resize":
        return torch.jit.script(ResizeForward(traced, [int(s) for s in size] if size else []))
    return traced


def _intensity_2d(pre: Any) -> list[dict[str, Any]]:
    mean = [float(m) for m in pre.mean]
    std = [float(s) for s in pre.std]
    one = "$lambda x: x[:3].mean(0, keepdim=True) if x.shape[0] > 1 else x" if pre.channels == 1 else None
    steps: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": "image", "reader": "PILReader", "reverse_indexing": False, "image_only": False},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
    ]
    if one:
        steps.append({"_target_": "Lambdad", "keys": "image", "func": one})
    steps.append({
        "_target_": "Lambdad", "keys": "image",
        "func": f"$lambda x: (x / {float(pre.scale)!r} - torch.tensor({mean}).view(-1, 1, 1)) / torch.tensor({std}).view(-1, 1, 1)",
    })  # fmt: skip
    return steps


def _intensity_3d(plan: Any) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": False},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
    ]
    if plan.window is not None:
        lo, hi = (float(v) for v in plan.window)
        steps.append({"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": lo, "a_max": hi, "b_min": 0.0, "b_max": 1.0, "clip": True})
    if plan.spacing is not None:
        steps.append({"_target_": "Spacingd", "keys": "image", "pixdim": [float(s) for s in plan.spacing], "mode": "bilinear"})
    if plan.crop == "body":  # covseg's body box, as the bounding box of voxels above the threshold (no morphology)
        spacing = plan.spacing or (1.0, 1.0, 1.0)
        margin = [math.ceil(float(plan.crop_margin_mm) / float(s)) for s in spacing]
        steps.append({
            "_target_": "CropForegroundd", "keys": "image", "source_key": "image", "margin": margin, "allow_smaller": True,
            "select_fn": f"$lambda x: x > {float(plan.crop_threshold)!r}",
        })  # fmt: skip
    if plan.normalise == "zscore":
        steps.append({"_target_": "NormalizeIntensityd", "keys": "image", "subtrahend": float(plan.mean), "divisor": float(plan.std)})
    elif plan.normalise == "percentile":
        lo, hi = (float(v) for v in plan.percentiles)
        steps.append({"_target_": "ScaleIntensityRangePercentilesd", "keys": "image", "lower": lo, "upper": hi, "b_min": 0.0, "b_max": 1.0, "clip": True})
    return steps


def inference_config(description: Any, dims: int) -> dict[str, Any]:
    """``configs/inference.json``: preprocessing, network, inferer, postprocessing and a ``run`` loop over
    ``@dataset_dir`` (plain expressions: no pytorch-ignite needed)."""
    k = int(description.num_classes)
    described = description.inferer.model_dump(mode="json")
    inferer = dict(described.get("params") or {}, name=described.get("name"))
    if dims == 3 or inferer.get("name") == "sliding_window":
        roi = inferer.get("roi_size") or (description.volume.patch_size if description.volume is not None else None)
        if not roi:
            raise CovsegError("export --format bundle: the run names no sliding-window size (inferer.roi_size)")
        infer = {
            "_target_": "SlidingWindowInferer", "roi_size": [int(s) for s in roi], "overlap": float(inferer.get("overlap", 0.5)),
            "mode": inferer.get("mode", "gaussian"), "sw_batch_size": int(inferer.get("sw_batch_size", 4)),
            "sigma_scale": float(inferer.get("sigma_scale", 0.125)),
        }  # fmt: skip
    else:
        infer = {"_target_": "SimpleInferer"}
    if dims == 3:
        from covseg.transforms.volume import VolumePlan

        pre_steps = _intensity_3d(VolumePlan.from_dict(description.volume.model_dump()))
        pattern = "/*.nii*"
    else:
        pre_steps = _intensity_2d(description.preprocessing)
        pattern = "/*.*"
    post: list[dict[str, Any]] = [{"_target_": "Activationsd", "keys": "pred", "sigmoid": k == 1, "softmax": k > 1}]
    if dims == 3:
        post.append({"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image", "nearest_interp": False})
    post.append({"_target_": "AsDiscreted", "keys": "pred", **({"threshold": float(description.threshold)} if k == 1 else {"argmax": True})})
    post.append({
        "_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg", "output_ext": ".nii.gz",
        "output_dtype": "$numpy.uint8", "resample": False, "separate_folder": False, "print_log": False,
    })  # fmt: skip
    return {
        "imports": ["$import glob", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "dataset_dir": "input",
        "output_dir": "$@bundle_root + '/eval'",
        "datalist": f"$[{{'image': f}} for f in sorted(glob.glob(@dataset_dir + '{pattern}'))]",
        "network_def": "$torch.jit.load(@bundle_root + '/models/model.ts', map_location=@device)",
        "network": "$@network_def.to(@device).eval()",
        "preprocessing": {"_target_": "Compose", "transforms": pre_steps},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "inferer": infer,
        "postprocessing": {"_target_": "Compose", "transforms": post},
        "predict": "$lambda d: @postprocessing(dict(d, pred=@inferer(d['image'][None].to(@device), @network)[0].cpu()))",
        "initialize": ["$torch.set_grad_enabled(False)"],
        "run": ["$[@predict(d) for d in @dataset]"],
        "finalize": ["$torch.set_grad_enabled(True)"],
    }


def metadata(run: Any, description: Any, dims: int) -> dict[str, Any]:
    """``configs/metadata.json`` in the MONAI bundle schema (``meta_schema_20240725``)."""
    import_monai()
    import monai

    pre = description.preprocessing
    k = int(description.num_classes)
    names = list(description.class_names or [])
    if k == 1:
        labels = {"0": "background", "1": names[0] if names else "infection"}
    else:
        labels = {str(i): n for i, n in enumerate(["background", *names][-k:])}
    plan = description.volume
    spatial = [int(s) for s in plan.patch_size] if dims == 3 and plan is not None and plan.patch_size else ["*"] * dims
    value_range = [0.0, 1.0] if dims == 3 else [0.0, float(pre.scale)]
    return {
        "schema": SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by covseg {__version__} from {run.path.name}"},
        "monai_version": str(monai.__version__),
        "pytorch_version": str(torch.__version__).split("+")[0],
        "numpy_version": str(np.__version__),
        "required_packages_version": {},
        "task": f"COVID-19 lung infection segmentation ({'3D CT volumes' if dims == 3 else '2D slices / X-rays'})",
        "description": f"covseg run {run.path.name}: model {description.name}, {k} output channel(s); see docs/README.md",
        "authors": "covseg export",
        "copyright": "see the training data's licence",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data_type": "nibabel" if dims == 3 else "png",
        "image_classes": f"{pre.channels}-channel {'CT in HU' if dims == 3 else 'image, 0..' + format(pre.scale, 'g')}",
        "pred_classes": ", ".join(f"{i}: {n}" for i, n in labels.items()),
        "intended_use": "research only, not for clinical use",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image", "format": "hounsfield" if dims == 3 else "magnitude", "modality": "CT",
                    "num_channels": int(pre.channels), "spatial_shape": spatial, "dtype": "float32",
                    "value_range": value_range, "is_patch_data": dims == 3, "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image", "format": "segmentation", "num_channels": k, "spatial_shape": spatial,
                    "dtype": "float32", "value_range": [0.0, 1.0], "is_patch_data": dims == 3, "channel_def": labels,
                }
            },
        },
    }


README = """# {name} (covseg export)

A MONAI bundle of the covseg run `{run}` (model `{model}`, {k} output channel(s), {kind}).

    python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \\
        --bundle_root . --dataset_dir INPUT_FOLDER --output_dir OUTPUT_FOLDER

reads every {inputs} of `INPUT_FOLDER` and writes `OUTPUT_FOLDER/<name>_seg.nii.gz` (uint8 labels);
MONAI's command line needs `pip install fire`, or call `monai.bundle.run(...)` with the same arguments
(and `run_id="run", init_id="initialize", final_id="finalize"`) from Python.
The network is `models/model.ts` (TorchScript: `torch.jit.load`). Research use only.
"""


def export_bundle(run: Any, model: torch.nn.Module, out_dir: str | Path) -> Path:
    """Write the MONAI bundle of ``run`` (its ``model`` loaded) into ``out_dir``; returns the bundle folder."""
    from covseg.utils.atomic import write_json, write_text, write_with

    description = run.description()
    _refuse(description, run.path)
    dims = int(getattr(model, "spatial_dims", 2))
    folder = OutputFolder(out_dir, "export", [run.path], owned=ENTRIES)
    folder.validate()
    network = _network(model, description, dims)
    out = folder.prepare()
    for entry in ENTRIES:
        (out / entry).mkdir(exist_ok=True)
    write_with(out / "models" / "model.ts", lambda p: torch.jit.save(network, str(p)))
    write_json(out / "configs" / "inference.json", inference_config(description, dims))
    write_json(out / "configs" / "metadata.json", metadata(run, description, dims))
    kind = "3D CT volumes, NIfTI in HU" if dims == 3 else "2D images"
    write_text(out / "docs" / "README.md", README.format(
        name=run.path.name, run=run.path.name, model=description.name, k=description.num_classes, kind=kind,
        inputs="NIfTI volume" if dims == 3 else "image",
    ))  # fmt: skip
    return out
