"""JCS's separate classifier (``res2net_cls.pth``) in ``covseg weights import --format jcs --classifier FILE``.

The authors' key names and shapes come from their own classifier (``tools/gen_results.py``:
``res2net101_v1b_26w_4s()`` with ``fc = Linear(2048, 2, bias=False)``), written to
``tests/assets/weights/jcs_classifier_keys.json`` by ``bench/bench_weights_equivalence_jcs_classifier.py
--write-keys``; output equivalence with their code is measured by that script. Files here are broadcast
views of one number per tensor (a few hundred kB), with a real random ``fc``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from covseg.errors import CovsegError
from covseg.models.jcs_published import classifier_view
from covseg.runs.formats_jcs import jcs_classifier_key
from covseg.runs.importers import convert_state, get_format, import_weights, with_classifier_file

ASSETS = Path(__file__).parents[1] / "assets" / "weights"
CLASSIFIER_KEYS = json.loads((ASSETS / "jcs_classifier_keys.json").read_text())["keys"]
JOINT_KEYS = json.loads((ASSETS / "jcs_joint_keys.json").read_text())["keys"]


def light(keys: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Each tensor one number broadcast to its shape: convolutions average their inputs (1 / fan-in),
    batch norms are identities, so a forward pass stays finite."""
    state = {}
    for key, shape in keys.items():
        if key.endswith(("running_var", "weight")) and len(shape) == 1:
            value = 1.0
        elif len(shape) == 4:
            value = 1.0 / float(np.prod(shape[1:]))
        else:
            value = 0.0
        state[key] = torch.full((), value).expand(shape)
    return state


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path, torch.Tensor]:
    folder = tmp_path_factory.mktemp("jcs_authors")
    torch.save(light(JOINT_KEYS), folder / "joint.pth")
    classifier = light(CLASSIFIER_KEYS)
    fc = torch.randn(2, 2048, generator=torch.Generator().manual_seed(0))
    classifier["fc.weight"] = fc
    torch.save(classifier, folder / "res2net_cls.pth")
    return folder / "joint.pth", folder / "res2net_cls.pth", fc


def test_classifier_keys_are_res2net101_with_a_two_class_fc():
    assert len(CLASSIFIER_KEYS) == 861 and CLASSIFIER_KEYS["fc.weight"] == [2, 2048]
    mapped = {jcs_classifier_key(k) for k in CLASSIFIER_KEYS}
    joint_res2net = {k.removeprefix("res2net.") for k in JOINT_KEYS if k.startswith("res2net.")}
    # their classifier's Res2Net has the joint network's own Res2Net names and shapes
    assert {k.removeprefix("classifier.") for k in mapped if k.startswith("classifier.")} == joint_res2net
    assert "classifier_fc.weight" in mapped and jcs_classifier_key("layer1.0.bn1.num_batches_tracked") is None
    with pytest.raises(KeyError):
        jcs_classifier_key("vgg16.conv1_1.conv.weight")


def test_classifier_view_is_their_resize_and_centre_crop():
    """``Resize(256)`` + ``CenterCrop(224)`` of torchvision on a PIL image, against the run's view of the float image."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for h, w in ((512, 512), (300, 420)):
        smooth = np.kron(rng.integers(0, 256, (h // 4 + 1, w // 4 + 1)), np.ones((4, 4)))[:h, :w].astype(
            np.uint8
        )
        x = torch.from_numpy(smooth).float()[None, None]
        view = classifier_view(x)[0, 0].numpy()
        short, long = min(h, w), max(h, w)
        size = (256, int(256 * long / short)) if h <= w else (int(256 * long / short), 256)
        pil = np.asarray(Image.fromarray(smooth).resize(size[::-1], Image.BILINEAR), dtype=np.float32)
        top, left = (round((s - 224) / 2) for s in size)
        reference = pil[top : top + 224, left : left + 224]
        assert view.shape == (224, 224)
        assert (
            np.abs(view - reference).mean() < 0.5 and np.abs(view - reference).max() <= 3.0
        )  # grey levels of 255


def test_classifier_file_loads_into_the_model_and_gives_the_class_logits(files):
    """Without writing a run: their file's 861 tensors under the model's names, and the class logits
    are their ``fc`` on the pooled ``layer4`` of the resized, centre-cropped input."""
    joint, classifier, fc = files
    fmt, mapped, provenance = with_classifier_file(get_format("jcs"), classifier)
    assert fmt.init_args["classifier"] is True and get_format("jcs").init_args.get("classifier") is None
    assert provenance["classifier_tensors"] == len(mapped) == 861  # FrozenBatchNorm2d: no step counters
    model, _ = convert_state(fmt, {**light(JOINT_KEYS), **mapped}, joint)
    model.eval()
    assert model.cam_layer == "classifier.layer4" and torch.equal(model.classifier_fc.weight, fc)
    x = torch.randn(1, 3, 80, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model.class_logits(x, None)
        view = classifier_view(x)
        pooled = model.classifier(view)[-1].mean(dim=(2, 3))
    assert view.shape == (1, 3, 224, 224) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, pooled @ fc.T)


@pytest.mark.slow  # writes and hashes the ~650 MB state dict: 13 s to 290 s measured, with the load of the 2 cores
def test_import_takes_the_class_probability_from_their_classifier(files, tmp_path):
    from covseg.runs.checkpoint import load_checkpoint, model_from_checkpoint
    from covseg.runs.folder import RunFolder

    joint, classifier, fc = files
    run = import_weights("jcs", joint, tmp_path / "run", classifier=classifier)
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["classifier_file"] == "res2net_cls.pth" and provenance["classifier_tensors"] == 861
    assert len(provenance["classifier_sha256"]) == 64
    description = RunFolder(run).description()
    assert (
        description.init_args["classifier"] is True
        and description.classification.class_names[1] == "infection"
    )
    model = model_from_checkpoint(load_checkpoint(run / "checkpoints" / "best.pt")).eval()
    assert model.cam_layer == "classifier.layer4" and torch.equal(model.classifier_fc.weight, fc)
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model.class_logits(x, None)
        pooled = torch.nn.functional.adaptive_avg_pool2d(model.classifier(classifier_view(x))[-1], 1).flatten(
            1
        )
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, pooled @ fc.T)


def test_bad_classifier_files_are_refused_in_one_line(files, tmp_path):
    joint, classifier, _ = files
    cases = [
        (
            {"classifier": joint},
            "jcs",
            r"not a jcs classifier checkpoint: \d+ unknown tensor\(s\), e\.g\. vgg16\.",
        ),
        ({"classifier": classifier}, "infnet", "format infnet takes no classifier file"),
    ]
    for kwargs, fmt, message in cases:
        with pytest.raises(CovsegError, match=message) as err:
            import_weights(fmt, joint, tmp_path / f"run_{fmt}", **kwargs)
        assert "\n" not in str(err.value)
    assert not any(tmp_path.glob("run_*"))
