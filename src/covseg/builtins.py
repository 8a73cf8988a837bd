"""The one list of covseg's built-in registry entries, by module, per kind.

A registry imports the modules of its kind the first time it is read (``MODELS.get``,
``"unet" in MODELS``, ``LAYOUTS.ordered()``), so the lower layers never import a higher one to
register something, and reading dataset layouts never imports torch. The order within a kind
is the registration order (dataset layouts are detected in it). Plugins register their own
entries with ``REGISTRY.register`` after importing :mod:`covseg.registry`.
"""

from __future__ import annotations

import importlib

BUILTIN_MODULES: dict[str, tuple[str, ...]] = {
    "layout": (
        "covseg.data.layouts.lvit",
        "covseg.data.layouts.qata",
        "covseg.data.layouts.cris",
        "covseg.data.layouts.csv_pairs",
        "covseg.data.layouts.jcs",
        "covseg.data.layouts.infnet",
        "covseg.data.layouts.cosup",
        "covseg.data.layouts.nifti",
        "covseg.data.layouts.flare",
        "covseg.data.layouts.dicom",
        "covseg.data.layouts.folder",
    ),
    "encoder": ("covseg.models.encoders", "covseg.models.clip_encoder", "covseg.models.clip_resnet", "covseg.models.res2net", "covseg.models.resnet50", "covseg.models.vgg16"),
    "model": (
        "covseg.models.unet",
        "covseg.models.resunet",
        "covseg.models.infnet",
        "covseg.models.lvit",
        "covseg.models.lvit_published",
        "covseg.models.c2fvl",
        "covseg.models.c2fvl_published",
        "covseg.models.clipseg",
        "covseg.models.monai_nets",
        "covseg.models.monai_baselines",
        "covseg.models.cris",
        "covseg.models.jcs",
        "covseg.models.jcs_published",
    ),
    "head": ("covseg.models.heads",),
    "loss": ("covseg.losses.elementary",),
    "trainer": (
        "covseg.training.trainer",
        "covseg.training.semi.pseudo",
        "covseg.training.semi.cps",
        "covseg.training.semi.semi_infnet",
        "covseg.training.semi.mean_teacher",
    ),
    "inferer": ("covseg.engine.inferers",),
    "input adapter": ("covseg.engine.adapters",),
    "sampler": ("covseg.training.sampling",),
    "checkpoint format": ("covseg.runs.importers", "covseg.runs.formats_lvit", "covseg.runs.formats_clip", "covseg.runs.formats_jcs", "covseg.runs.formats_c2fvl"),
    "optimiser": ("covseg.training.optim",),
    "schedule": ("covseg.training.schedule",),
    "file format": ("covseg.data.imageio",),
}


def load(kind: str) -> None:
    """Import every module that registers built-in entries of ``kind``."""
    for module in BUILTIN_MODULES.get(kind, ()):
        importlib.import_module(module)


def load_all() -> None:
    """Import every built-in (``covseg models`` lists them all)."""
    for kind in BUILTIN_MODULES:
        load(kind)
