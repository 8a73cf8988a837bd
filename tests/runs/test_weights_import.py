"""The published Inf-Net (Res2Net-50 encoder) and ``covseg weights import``.

The authors' key names and shapes come from their own model (``tests/assets/weights/``, written by
``bench/bench_weights_equivalence.py --write-keys`` from a snapshot of their repository); the
equivalence of outputs with their code is measured by that script, not here (no author code or
weights are downloaded in the suite).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from covseg.errors import CovsegError
from covseg.models import build_model
from covseg.runs.importers import INFNET_INIT_ARGS, get_format, import_weights, infnet_key

from tests.helpers import phantom_dataset, run_cli, tiny_config

DATA = Path(__file__).resolve().parents[1] / "assets" / "weights"


KEY_FILES = {
    "infnet": "infnet_res2net50_keys.json",
    "infnet-resnet50": "infnet_resnet50_keys.json",
    "infnet-vgg16": "infnet_vgg16_keys.json",
    "infnet-multiclass": "infnet_unet_keys.json",
}


def author_keys(fmt: str = "infnet") -> dict[str, list[int]]:
    return json.loads((DATA / KEY_FILES[fmt]).read_text())["keys"]


def synthetic_author_state(seed: int = 0, fmt: str = "infnet") -> dict[str, torch.Tensor]:
    """A state dict with the authors' key names and shapes and random values (variances positive)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in author_keys(fmt).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.05
    return state


@pytest.fixture(scope="module")
def author_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("authors") / "Inf-Net-100.pth"
    torch.save(synthetic_author_state(), path)
    return path


@pytest.fixture(scope="module")
def imported(author_file, tmp_path_factory) -> Path:
    return import_weights("infnet", author_file, tmp_path_factory.mktemp("runs") / "infnet")


def test_res2net_encoder_features_and_published_infnet_outputs():
    torch.manual_seed(0)
    encoder = build_model("infnet", **INFNET_INIT_ARGS).encoder.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = encoder(x)
    assert [tuple(f.shape[1:]) for f in features] == [
        (64, 32, 32), (256, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2),
    ]  # fmt: skip
    assert sum(p.numel() for n, p in encoder.named_parameters()) == 23_669_352  # Res2Net-50 v1b without fc
    model = build_model("infnet", **INFNET_INIT_ARGS).train()
    out = model.forward_train(torch.randn(2, 3, 64, 64))
    assert out["logits"].shape == (2, 1, 64, 64)
    assert [tuple(a.shape[2:]) for a in out["aux"]] == [(8, 8), (2, 2), (4, 4)]
    assert out["edge"].shape == (2, 1, 16, 16)


@pytest.mark.parametrize(
    ("fmt", "unused"),
    [
        ("infnet", ("resnet.fc.",)),  # the backbone's ImageNet classifier
        ("infnet-resnet50", ()),
        ("infnet-vgg16", ("vgg.conv4_2.", "vgg.conv5_2.")),  # B2_VGG's second branch, never run
        ("infnet-multiclass", ()),
    ],
)
def test_author_keys_map_one_to_one_onto_the_published_model(fmt, unused):
    keys = author_keys(fmt)
    spec = get_format(fmt)
    expected = build_model(spec.model, **spec.init_args).state_dict()
    mapped = {spec.rename(k): shape for k, shape in keys.items()}
    dropped = sorted(k for k in keys if spec.rename(k) is None)
    assert dropped == sorted(k for k in keys if k.startswith(unused)) and len(dropped) == {0: 0, 1: 2, 2: 12}[len(unused)]
    mapped.pop(None, None)
    assert len(mapped) == len(keys) - len(dropped)  # no two author keys meet in one covseg key
    assert set(mapped) == set(expected)
    assert all(list(expected[k].shape) == shape for k, shape in mapped.items())


def test_import_writes_a_run_folder_with_the_authors_tensors(author_file, imported):
    from covseg.runs.checkpoint import load_checkpoint, model_from_checkpoint
    from covseg.runs.folder import RunFolder

    description = RunFolder(imported).description()
    assert description.name == "infnet" and description.init_args["published"] is True
    assert description.preprocessing.channels == 3
    assert description.preprocessing.mean == [0.485, 0.456, 0.406]
    provenance = json.loads((imported / "provenance.json").read_text())
    assert provenance["sha256"] == hashlib.sha256(author_file.read_bytes()).hexdigest()
    assert provenance["source_file"] == "Inf-Net-100.pth" and provenance["format"] == "infnet"
    assert description.model_dump()["provenance"] == provenance
    model = model_from_checkpoint(load_checkpoint(imported / "checkpoints" / "best.pt"))
    ours = model.state_dict()
    for key, value in synthetic_author_state().items():
        target = infnet_key(key)
        if target is not None:
            assert torch.equal(ours[target], value.to(ours[target].dtype)), key


def test_imported_run_predicts_like_a_trained_one(imported):
    from covseg.inference.predictor import Predictor

    predictor = Predictor.from_run(imported)
    image = (np.random.default_rng(0).random((48, 40)) * 255).astype(np.uint8)
    probs = predictor.predict_image(image).probs
    assert probs.shape[-2:] == (48, 40)
    assert np.isfinite(probs).all() and 0.0 <= probs.min() <= probs.max() <= 1.0
    again = Predictor.from_run(imported).predict_image(image).probs
    np.testing.assert_array_equal(probs, again)


def test_wrapped_and_data_parallel_state_dicts_import_the_same(tmp_path, imported):
    from covseg.runs.checkpoint import load_checkpoint

    state = synthetic_author_state()
    wrapped = tmp_path / "best_model.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    run = import_weights("infnet", wrapped, tmp_path / "run")
    a = load_checkpoint(run / "checkpoints" / "best.pt")["model_state"]
    b = load_checkpoint(imported / "checkpoints" / "best.pt")["model_state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _Unsafe:
    pass


def test_bad_checkpoints_are_refused_in_one_line(tmp_path):
    state = synthetic_author_state()
    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": state, "opt": _Unsafe()}, pickled)
    with pytest.raises(CovsegError, match="unpickling"):
        import_weights("infnet", pickled, tmp_path / "a")
    missing = tmp_path / "missing.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("ra2_conv4")}, missing)
    with pytest.raises(CovsegError, match=r"tensor\(s\) missing, e\.g\. ra2\.classifier"):
        import_weights("infnet", missing, tmp_path / "b")
    shaped = tmp_path / "shaped.pth"
    torch.save({**state, "edge_conv4.conv.weight": torch.zeros(1, 32, 3, 3)}, shaped)
    with pytest.raises(CovsegError, match=r"edge\.edge_head\.0\.weight has shape \[1, 32, 3, 3\]"):
        import_weights("infnet", shaped, tmp_path / "c")
    stray = tmp_path / "stray.pth"
    torch.save({**state, "decoder.extra.weight": torch.zeros(1)}, stray)
    with pytest.raises(CovsegError, match="unknown tensor"):
        import_weights("infnet", stray, tmp_path / "d")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CovsegError, match="unreadable"):
        import_weights("infnet", junk, tmp_path / "e")
    with pytest.raises(CovsegError, match=r"unknown checkpoint format 'nope'; choose one of .*infnet"):
        get_format("nope")
    assert not any((tmp_path / n).exists() for n in "abcde")  # nothing written for a refused file


def test_cli_imports_and_reports_errors_in_one_line(author_file, tmp_path, capsys):
    assert run_cli(["weights", "import", "--format", "infnet", "--output", tmp_path / "run", author_file]) == 0
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    capsys.readouterr()
    assert run_cli(["weights", "import", "--format", "infnet", "--output", tmp_path / "x", tmp_path / "none.pth"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint file not found" in err
    assert run_cli(["weights", "formats"]) == 0
    assert "infnet" in capsys.readouterr().out


@pytest.mark.slow
def test_infnet_with_the_res2net_encoder_trains_on_phantoms(tmp_path):
    from covseg.api import fit
    from covseg.training.config import load_config

    data = phantom_dataset(tmp_path / "phantoms", n=8, size=64)
    params = {k: v for k, v in INFNET_INIT_ARGS.items() if k not in ("in_channels", "out_channels")}
    cfg = tiny_config(
        data, epochs=2, model__name="infnet", model__params=params, preprocess__channels=3,
        loss__aux_weight=1.0, train__batch_size=2, data__folds=4,
    )  # fmt: skip
    torch.manual_seed(0)
    summary = fit(load_config(raw=cfg), tmp_path / "run", quiet=True)
    from covseg.runs.folder import RunFolder

    history = RunFolder(tmp_path / "run").read_history()
    assert len(history) == 2
    losses = [float(row["train_loss"]) for row in history]
    assert all(np.isfinite(losses)) and losses[1] < losses[0]
    assert summary is not None


def test_res2net_imagenet_file_loads_into_the_encoder_and_the_run_rebuilds_without_it(tmp_path):
    from covseg.models.res2net import Res2NetEncoder

    torch.manual_seed(0)
    source = Res2NetEncoder(3)
    state = {**source.state_dict(), "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    path = tmp_path / "res2net50_v1b_26w_4s-3cf99910.pth"
    torch.save(state, path)
    args = {**INFNET_INIT_ARGS, "in_channels": 1, "encoder_kwargs": {"weights": str(path)}}
    model = build_model("infnet", **args)
    grey = source.state_dict()["conv1.0.weight"].sum(dim=1, keepdim=True)
    assert torch.equal(model.encoder.state_dict()["conv1.0.weight"], grey)  # RGB stem summed for one channel
    assert torch.equal(model.encoder.state_dict()["layer4.2.bn3.running_var"], source.state_dict()["layer4.2.bn3.running_var"])
    assert model.init_args["encoder_kwargs"] == {}  # the checkpoint, not the file, carries the weights
    build_model("infnet", **model.init_args)
    with pytest.raises(CovsegError, match="no res2net50_v1b_26w_4s ImageNet weights ship"):
        build_model("infnet", **{**INFNET_INIT_ARGS, "pretrained": True})
    with pytest.raises(CovsegError, match="Res2Net weights file not found"):
        build_model("infnet", **{**INFNET_INIT_ARGS, "encoder_kwargs": {"weights": str(tmp_path / "none.pth")}})


def test_multiclass_unet_needs_a_binary_prior_run_and_reads_its_map(imported, tmp_path):
    from covseg.runs.checkpoint import load_checkpoint, model_from_checkpoint
    from covseg.runs.folder import RunFolder

    path = tmp_path / "unet_model_200.pkl"
    state = synthetic_author_state(fmt="infnet-multiclass")
    torch.save(state, path)
    with pytest.raises(CovsegError, match="needs --prior RUN_DIR"):
        import_weights("infnet-multiclass", path, tmp_path / "a")
    with pytest.raises(CovsegError, match="takes no prior run"):
        import_weights("infnet", path, tmp_path / "b", prior=imported)
    run = import_weights("infnet-multiclass", path, tmp_path / "run", prior=imported)
    description = RunFolder(run).description()
    assert description.prior is not None and Path(description.prior.run) == imported.resolve()
    assert description.num_classes == 3 and description.init_args["published"] is True
    with pytest.raises(CovsegError, match="the prior run must be binary"):
        import_weights("infnet-multiclass", path, tmp_path / "c", prior=run)
    model = model_from_checkpoint(load_checkpoint(run / "checkpoints" / "best.pt"))
    assert all(torch.equal(model.state_dict()["net." + k], v.to(model.state_dict()["net." + k].dtype)) for k, v in state.items())
    # the one prior channel becomes the authors' three ImageNet-normalised picture channels
    from covseg.models.infnet_unet import prior_to_picture

    image, prior = torch.randn(1, 3, 32, 32), torch.rand(1, 1, 32, 32)
    picture = prior_to_picture(torch.cat([image, prior], 1), 3)
    assert torch.equal(picture[:, :3], image)
    assert torch.allclose(picture[:, 4], (prior[:, 0] - 0.456) / 0.224)
    with torch.no_grad():
        ours = model(torch.cat([image, prior], 1))
        direct = model.net(picture)
    assert torch.equal(ours, direct)


@pytest.mark.slow
def test_imported_cascade_predicts_three_classes(imported, tmp_path):
    from covseg.inference.predictor import Predictor

    path = tmp_path / "unet_model_200.pkl"
    torch.save(synthetic_author_state(fmt="infnet-multiclass"), path)
    run = import_weights("infnet-multiclass", path, tmp_path / "run", prior=imported)
    image = (np.random.default_rng(0).random((40, 48)) * 255).astype(np.uint8)
    probs = Predictor.from_run(run).predict_image(image).probs
    assert probs.shape == (3, 40, 48)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)


def test_import_never_overwrites_a_trained_run_and_reimports_in_place(author_file, imported, tmp_path):
    foreign = tmp_path / "trained"
    (foreign / "checkpoints").mkdir(parents=True)
    (foreign / "model.json").write_text("{}")
    with pytest.raises(CovsegError, match="not written by covseg weights import"):
        import_weights("infnet", author_file, foreign)
    assert (foreign / "model.json").read_text() == "{}"
    before = json.loads((imported / "provenance.json").read_text())
    assert import_weights("infnet", author_file, imported) == imported  # its own folder: rewritten
    assert json.loads((imported / "provenance.json").read_text()) == before
