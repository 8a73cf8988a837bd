"""covseg imports MONAI without transformers (covseg.utils.monai_import): ~2.7 CPU s of every 3D prediction."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import sys
from covseg.models import build_model
net = build_model("monai_unet", in_channels=1, out_channels=1, spatial_dims=3, channels=[4, 8], strides=[2], num_res_units=1)
import torch
assert net(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 1, 16, 16, 16)
print("monai" in sys.modules, "transformers" in sys.modules)
import transformers  # imports normally afterwards (the text models need it)
from transformers import BertConfig
print(BertConfig().hidden_size)
"""

FIRST = r"""
import sys
import transformers
from covseg.utils.monai_import import import_monai
import_monai()
import monai.networks.nets.transchex as transchex  # transformers was there first: nothing was hidden
print("monai" in sys.modules, transchex.BertEmbeddings.__module__)
"""


def _run(script: str, **env: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_a_3d_monai_network_builds_without_importing_transformers():
    assert _run(SCRIPT) == ["True", "False", "768"]


@pytest.mark.slow  # a second process importing transformers and MONAI: ~7 CPU s
def test_transformers_imported_first_stays_as_it_is():
    assert _run(FIRST) == ["True", "transformers.models.bert.modeling_bert"]


@pytest.mark.slow  # imports transformers with MONAI: ~7 CPU s
def test_the_full_import_can_be_asked_for():
    script = SCRIPT.split("import transformers")[0]
    assert _run(script, COVSEG_MONAI_FULL_IMPORT="1") == ["True", "True"]  # MONAI imported transformers for TransChex
