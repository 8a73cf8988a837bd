"""Import MONAI without the Hugging Face models it loads and covseg never uses.

``import monai`` imports every MONAI module (its ``__init__`` walks the package), and
``monai.networks.nets.transchex`` pulls in ``transformers``' BERT when transformers is installed:
about 2.7 of the 6.7 CPU s that ``import torch, monai`` costs on the development machine, paid by
every 3D prediction. covseg imports MONAI through :func:`import_monai`, which hides transformers
while MONAI's package import runs, so MONAI's optional import of it records "not installed" for
TransChex (covseg has no TransChex model) and nothing else changes: transformers itself imports
normally afterwards (the text models use it), and if it was imported first, nothing is hidden.
A script that wants MONAI's TransChex in the same process imports transformers (or MONAI) before
covseg's first MONAI use, or sets ``COVSEG_MONAI_FULL_IMPORT=1``.
"""

from __future__ import annotations

import os
import sys
import threading

_LOCK = threading.Lock()


def import_monai() -> None:
    """Make sure ``monai`` is imported, without importing ``transformers`` on its behalf."""
    if "monai" in sys.modules:
        return
    with _LOCK:
        if "monai" in sys.modules:
            return
        hide = "transformers" not in sys.modules and os.environ.get("COVSEG_MONAI_FULL_IMPORT", "0") in ("", "0")
        if hide:
            sys.modules["transformers"] = None  # type: ignore[assignment]  # import transformers -> ImportError
        try:
            import monai  # noqa: F401
        finally:
            if hide and sys.modules.get("transformers", 0) is None:
                del sys.modules["transformers"]
