"""The released JCS network (``jcs_published``) and ``covseg weights import --format jcs``.

The authors' key names and shapes come from their own ``JCS()`` (``tests/assets/weights/jcs_joint_keys.json``,
written by ``bench/bench_weights_equivalence_jcs.py --write-keys`` from a snapshot of yuhuan-wu/JCS);
output equivalence with their code is measured by that script (``bench/results/weights/jcs.json``).
The imported run is checked here at 64² (its ``model.json`` says 512², the authors' size; the test
rewrites that one field so prediction stays fast on CPU).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from covseg.errors import CovsegError
from covseg.models import build_model
from covseg.runs.importers import get_format, import_weights

from tests.helpers import phantom_dataset, run_cli

KEYS = Path(__file__).parents[1] / "assets" / "weights" / "jcs_joint_keys.json"


def author_keys() -> dict[str, list[int]]:
    return json.loads(KEYS.read_text())["keys"]


def synthetic_author_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The authors' key names and shapes with random values (variances positive)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in author_keys().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(11)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.02
    return state


def light_author_state() -> dict[str, torch.Tensor]:
    """The authors' key names and shapes as broadcast views of one number: the file is a few hundred kB."""
    one = torch.ones(())
    return {key: one.expand(shape) for key, shape in author_keys().items()}


@pytest.fixture(scope="module")
def author_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("jcs_authors") / "joint.pth"
    torch.save(synthetic_author_state(), path)
    return path


@pytest.fixture(scope="module")
def imported(author_file, tmp_path_factory) -> Path:
    from covseg.api import import_weights as api_import_weights

    run = api_import_weights("jcs", author_file, tmp_path_factory.mktemp("jcs_runs") / "jcs")
    description = json.loads((run / "model.json").read_text())
    description["preprocessing"]["size"] = [64, 64]  # the authors' 512² is slow on CPU; the network takes any
    (run / "model.json").write_text(json.dumps(description))
    return run


def test_author_keys_map_one_to_one_onto_the_published_jcs():
    keys = author_keys()
    spec = get_format("jcs")
    expected = build_model(spec.model, **spec.init_args).state_dict()
    mapped = {spec.rename(k): shape for k, shape in keys.items()}
    assert len(keys) == 1183 and len(mapped) == len(keys)
    assert set(mapped) == set(expected)
    assert all(list(expected[k].shape) == shape for k, shape in mapped.items())
    # the frozen batch norms of both backbones are buffers without a batch counter, FuseNet's are plain BN
    assert "vgg16.conv1_1.bn.running_var" in keys and "vgg16.conv1_1.bn.num_batches_tracked" not in keys
    assert "res2net.layer3.22.bn3.running_mean" in keys and "res2net.bn1.num_batches_tracked" not in keys
    assert "fuse.cat_modules.0.bn.num_batches_tracked" in keys


def test_published_jcs_outputs_at_the_authors_strides():
    torch.manual_seed(0)
    model = build_model("jcs_published").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert [tuple(f.shape[1:]) for f in model.vgg16(x)] == [
            (64, 64, 64),
            (128, 32, 32),
            (256, 16, 16),
            (512, 8, 8),
            (512, 8, 8),
        ]
        out = model.forward_train(x)
        heads = model.forward_heads(x)
        plain = model(x)
    assert out["logits"].shape == plain.shape == (1, 1, 64, 64) and len(out["aux"]) == 4
    assert torch.equal(out["logits"], plain) and torch.equal(heads["logits"], plain)
    # the class probability is the highest pixel probability of the map
    p_class = torch.softmax(heads["class_logits"], dim=1)[0, 1]
    assert torch.allclose(p_class, torch.sigmoid(plain).max(), atol=1e-6)
    # frozen batch norm: x · w / √var + (b − mean · w / √var), no epsilon, and no training of its terms
    bn = model.vgg16.conv1_1.bn
    bn.weight.fill_(2.0), bn.bias.fill_(1.0), bn.running_mean.fill_(0.5), bn.running_var.fill_(4.0)
    z = torch.randn(1, 64, 4, 4)
    assert float((bn(z) - (z + 0.5)).abs().max()) < 1e-6, float((bn(z) - (z + 0.5)).abs().max())
    assert not any(n.startswith(("vgg16.conv1_1.bn", "res2net.bn1")) for n, _ in model.named_parameters())
    with pytest.raises(ValueError, match="out_channels must be 1"):
        build_model("jcs_published", out_channels=2)


def test_published_jcs_pads_odd_sizes_and_trains_every_parameter():
    """What tests/models/test_models.py checks of every small model, for this one's fixed size (118 M parameters)."""
    torch.manual_seed(0)
    model = build_model("jcs_published").train()
    out = model.forward_train(torch.randn(1, 3, 67, 93))
    assert out["logits"].shape == (1, 1, 67, 93) and all(a.shape == (1, 1, 67, 93) for a in out["aux"])
    assert set(out) == set(model.train_outputs) == {"logits", "aux", "class_logits"}
    loss = (
        out["logits"].square().mean()
        + sum(a.square().mean() for a in out["aux"])
        + out["class_logits"].square().mean()
    )
    loss.backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # the decoder's SE blocks squeeze to ONE hidden unit (reduction = width, as released): where its ReLU is
    # off for this input, that unit's weights get no gradient; everything else must
    one_unit = re.compile(r"fpn\.fuse\.\d\.se[12]\.linear(1\.weight|1\.bias|2\.weight)$")
    assert model.fpn.fuse[1].se2.linear1.out_features == 1
    assert not [n for n in silent if not one_unit.match(n)], silent
    assert 117_000_000 < model.num_parameters() < 118_000_000
    rebuilt = build_model("jcs_published", **json.loads(json.dumps(model.init_args)))
    assert rebuilt.init_args == model.init_args
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), rebuilt.eval()(x))


def test_import_keeps_every_tensor_and_records_provenance(author_file, imported):
    from covseg.runs.checkpoint import load_checkpoint, model_from_checkpoint
    from covseg.runs.folder import RunFolder

    description = RunFolder(imported).description()
    assert description.name == "jcs_published" and description.preprocessing.channels == 3
    assert description.classification is not None and description.classification.class_names == [
        "no_infection",
        "infection",
    ]
    provenance = json.loads((imported / "provenance.json").read_text())
    assert (
        provenance["format"] == "jcs"
        and provenance["source_file"] == "joint.pth"
        and provenance["tensors"] == 1183
    )
    model = model_from_checkpoint(load_checkpoint(imported / "checkpoints" / "best.pt"))
    ours = model.state_dict()
    for key, value in synthetic_author_state().items():
        assert torch.equal(ours[key], value.to(ours[key].dtype)), key


def test_wrong_and_truncated_jcs_checkpoints_are_refused_in_one_line(tmp_path, capsys):
    state = light_author_state()
    truncated = tmp_path / "truncated.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("fpn.")}, truncated)
    with pytest.raises(CovsegError, match=r"not a jcs checkpoint .*tensor\(s\) missing, e\.g\. fpn\."):
        import_weights("jcs", truncated, tmp_path / "a")
    shaped = tmp_path / "shaped.pth"
    torch.save({**state, "cls1.weight": torch.zeros(2, 64, 1, 1)}, shaped)
    with pytest.raises(
        CovsegError, match=r"cls1\.weight has shape \[2, 64, 1, 1\], the model needs \[1, 64, 1, 1\]"
    ):
        import_weights("jcs", shaped, tmp_path / "b")
    single = tmp_path / "single.pth"  # a state dict of another model (here: Res2Net keys without the prefix)
    torch.save({k.removeprefix("res2net."): v for k, v in state.items() if k.startswith("res2net.")}, single)
    assert single.stat().st_size < 2_000_000  # broadcast views save one number each
    with pytest.raises(CovsegError, match="unknown tensor"):
        import_weights("jcs", single, tmp_path / "c")
    assert run_cli(["weights", "import", "--format", "jcs", "--output", tmp_path / "d", truncated]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tensor(s) missing" in err and "truncated.pth" in err
    assert not any((tmp_path / n).exists() for n in "abcd")
    assert run_cli(["weights", "formats"]) == 0
    assert "jcs" in capsys.readouterr().out


@pytest.mark.slow  # the import writes and hashes the 472 MB state dict twice; then predict, explain, evaluate
def test_imported_jcs_run_predicts_a_map_and_a_class_probability(imported, tmp_path):
    from covseg.inference.predictor import Predictor

    predictor = Predictor.from_run(imported)
    image = (np.random.default_rng(0).random((48, 40)) * 255).astype(np.uint8)
    pred = predictor.predict_image(image)
    assert pred.probs.shape[-2:] == (48, 40) and np.isfinite(pred.probs).all()
    assert pred.class_probs is not None and pred.class_probs.shape == (2,)
    assert abs(float(pred.class_probs.sum()) - 1.0) < 1e-5
    # the infection probability is the map's highest pixel probability (at the network's 64², before resizing back)
    assert pred.class_probs[1] >= pred.probs.max() - 1e-3

    data = phantom_dataset(tmp_path / "phantoms", n=3, size=64)
    assert run_cli(["predict", "-m", imported, "-i", data / "images", "-o", tmp_path / "pred", "-q"]) == 0
    with (tmp_path / "pred" / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(
        abs(float(r["p_no_infection"]) + float(r["p_infection"]) - 1) < 1e-5 for r in rows
    )
    assert run_cli(["explain", "-m", imported, "-i", data / "images", "-o", tmp_path / "expl", "-q"]) == 0
    assert len(list((tmp_path / "expl" / "heatmaps").glob("*_gradcam.npy"))) == 3
    out = tmp_path / "eval"
    assert (
        run_cli(
            ["evaluate", "--pred", tmp_path / "pred" / "probs", "--gt", data, "--out", out, "--no-report"]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classification"]["num_cases"] == 3
