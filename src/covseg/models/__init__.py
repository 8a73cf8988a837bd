"""Segmentation models, registered by name (see ``covseg.models.registry``).

Importing this package registers ``unet``, ``unet_multiclass``, ``resunet`` and ``infnet``.
"""

from covseg.models import infnet, resunet, unet  # noqa: F401  (registration side effects)
from covseg.models.base import SegmentationModel
from covseg.models.encoders import ENCODERS, build_encoder
from covseg.models.registry import MODELS, build_model

__all__ = ["ENCODERS", "MODELS", "SegmentationModel", "build_encoder", "build_model"]
from covseg.models import c2fvl, clipseg, lvit  # noqa: F401  (text-guided models: lvit, c2fvl, clipseg)
