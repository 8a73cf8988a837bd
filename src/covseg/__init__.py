"""covseg: COVID-19 lung-infection segmentation on CT and chest X-ray.

The package is split by job: ``data`` (readers, records, checks), ``transforms``,
``models``, ``losses``, ``training``, ``inference``, ``metrics``, ``text``, ``viz`` and
``cli``. Importing ``covseg`` itself is cheap; heavy libraries (torch, monai,
transformers) are imported by the submodules that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
