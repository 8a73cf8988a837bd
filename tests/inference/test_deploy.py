"""Deployment exports (issue 28): a text-guided run to ONNX with its prompts' text inputs, a run as a
MONAI bundle that ``monai.bundle`` validates and runs, and the documented plain onnxruntime snippet."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from covseg.errors import CovsegError
from covseg.training.config import load_config
from covseg.training.trainer import build_trainer

from tests.helpers import phantom_dataset, run_cli, tiny_config

pytest.importorskip("onnxruntime")
SCHEMA = Path(__file__).resolve().parents[1] / "assets" / "monai_bundle_metadata_schema.json"


@pytest.fixture(scope="module")
def run2d(tmp_path_factory) -> Path:
    data = phantom_dataset(tmp_path_factory.mktemp("deploy") / "data", n=12, size=48, seed=4)
    run = data.parent / "run"
    build_trainer(load_config(raw=tiny_config(data, size=48, epochs=8, optim__lr=0.01)), run, quiet=True).fit()
    return run


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 1.0 if not a.any() and not b.any() else 2.0 * (a & b).sum() / (a.sum() + b.sum())


# ------------------------------------------------------------------------------------ text-guided ONNX


@pytest.mark.slow  # ~60 s a model on the loaded 2-core machine (training, export, four predictions)
@pytest.mark.parametrize("model", ["lvit", "c2fvl", "cris"])
def test_a_text_guided_run_exports_with_its_prompts_and_the_onnx_engine_matches_torch(tmp_path, model):
    """Text-guided runs were refused by export. Now the ONNX file takes ``image``, ``text_tokens`` and
    ``text_mask``, ``text_inputs.npz`` holds each exported prompt's features, and ``--engine onnx``
    gives torch's soft maps (batches of different prompts, flip TTA, and through the CLI)."""
    from covseg.data.imageio import read_image, read_mask
    from covseg.inference.exported import load_exported
    from covseg.inference.predictor import Predictor

    from tests.text.test_text_sources import make_folder_json, text_config

    root, _, texts = make_folder_json(tmp_path / "data")
    run = tmp_path / "run"
    raw = text_config(root, model=model)
    if model == "cris":
        raw["model"]["params"] = {"encoder": "resnet", "encoder_kwargs": {"widths": [8, 8, 8, 16, 16]}, "dim": 16, "heads": 2, "layers": 1, "proj_dim": 8}
    build_trainer(load_config(raw=raw), run, quiet=True).fit()
    prompts = [texts["c0"], texts["c3"]]
    out = tmp_path / "export"
    assert run_cli(["export", "-m", str(run), "--format", "onnx", "-o", str(out), "--prompt", prompts[0], "--prompt", prompts[1]]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["text"]["inputs"] == ["text_tokens", "text_mask"] and set(prompts) <= set(card["text"]["prompts"])
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "text_tokens", "text_mask"]

    exported = load_exported(out, "onnx")
    reference = Predictor.from_run(run, device="cpu")
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, size=s).astype(np.float32) for s in ((32, 32), (32, 32), (41, 37))]
    for tta in (False, True):
        got = exported._outputs(images, tta_flip=tta, texts=[prompts[0], prompts[1], None]).probs
        want = reference._outputs(images, tta_flip=tta, texts=[prompts[0], prompts[1], None]).probs
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=1e-4)
    with_text, without = (exported._outputs(images[:1], texts=[t]).probs[0] for t in (prompts[0], None))
    assert not np.allclose(with_text, without, atol=1e-4)  # the text reaches the exported network
    with pytest.raises(CovsegError, match=r"not among the \d+ prompts this model was exported with"):
        exported._outputs(images[:1], texts=["a prompt never exported"])

    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(sorted((root / "images").iterdir())[0], inputs / "x.png")
    for engine, model_dir, dest in (("onnx", out, "ox"), ("torch", run, "pt")):
        assert run_cli(["predict", "--engine", engine, "-m", str(model_dir), "-i", str(inputs), "-o", str(tmp_path / dest), "--text", prompts[0], "-q"]) == 0
    np.testing.assert_array_equal(read_mask(tmp_path / "ox" / "masks" / "x.png"), read_mask(tmp_path / "pt" / "masks" / "x.png"))
    assert np.abs(read_image(tmp_path / "ox" / "probs" / "x.png").astype(int) - read_image(tmp_path / "pt" / "probs" / "x.png").astype(int)).max() <= 1
    # without --prompt a text-guided run cannot be exported; --prompt on an image-only run is refused
    with pytest.raises(CovsegError, match="--prompt TEXT"):
        from covseg.inference.exported import export_run

        export_run(run, "onnx", tmp_path / "none")


# ------------------------------------------------------------------------------------------ MONAI bundle


def _run_bundle(bundle: Path, inputs: Path, out: Path) -> None:
    """The bundle's inference config run by ``monai.bundle`` itself (no covseg in it)."""
    from monai.bundle import run

    run(
        run_id="run", init_id="initialize", final_id="finalize",
        config_file=str(bundle / "configs" / "inference.json"), meta_file=str(bundle / "configs" / "metadata.json"),
        bundle_root=str(bundle), dataset_dir=str(inputs), output_dir=str(out),
    )  # fmt: skip


@pytest.mark.slow  # ~45 s: export, two schema checks, MONAI's run, covseg predict
def test_a_2d_run_exports_as_a_monai_bundle_that_monai_verifies_and_runs_like_covseg_predict(run2d, tmp_path):
    """``covseg export --format bundle`` writes configs/metadata.json (valid for ``verify_metadata`` with
    the MONAI metadata schema), configs/inference.json, models/model.ts and docs/README.md; MONAI's
    ``run`` on that config gives the masks of ``covseg predict`` (at the network size and another size)."""
    pytest.importorskip("jsonschema")
    import nibabel as nib
    from monai.bundle import verify_metadata

    from covseg.data.imageio import read_mask, write_image

    bundle = tmp_path / "bundle"
    assert run_cli(["export", "-m", str(run2d), "--format", "bundle", "-o", str(bundle)]) == 0
    for rel in ("configs/metadata.json", "configs/inference.json", "models/model.ts", "docs/README.md"):
        assert (bundle / rel).is_file(), rel
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(SCHEMA))
    broken = json.loads((bundle / "configs" / "metadata.json").read_text())
    del broken["network_data_format"]["inputs"]["image"]["num_channels"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="num_channels"):  # the schema check is a real one
        verify_metadata(meta_file=str(tmp_path / "broken.json"), filepath=str(SCHEMA))

    inputs = tmp_path / "in"
    src = sorted((run2d.parent / "data" / "images").iterdir())
    inputs.mkdir()
    shutil.copy(src[0], inputs / "a.png")
    rng = np.random.default_rng(0)
    write_image(inputs / "b.png", rng.integers(0, 255, size=(61, 75)).astype(np.uint8))  # another size: resized inside model.ts
    _run_bundle(bundle, inputs, tmp_path / "monai")
    assert run_cli(["predict", "-m", str(run2d), "-i", str(inputs), "-o", str(tmp_path / "covseg"), "-q"]) == 0
    found = 0
    for stem in ("a", "b"):
        monai_mask = np.squeeze(np.asarray(nib.load(tmp_path / "monai" / f"{stem}_seg.nii.gz").dataobj))
        covseg_mask = read_mask(tmp_path / "covseg" / "masks" / f"{stem}.png")
        assert monai_mask.shape == covseg_mask.shape
        np.testing.assert_array_equal(monai_mask > 0, covseg_mask > 0)
        found += int((covseg_mask > 0).sum())
    assert found > 0  # the masks compared are not empty


@pytest.mark.slow
def test_a_3d_run_exports_as_a_monai_bundle_whose_masks_agree_with_covseg_predict(tmp_path):
    """A 3D run's bundle replays its volume plan with MONAI transforms (RAS, HU window, spacing, body crop,
    z-score, sliding window, ``Invertd``): on a phantom volume its mask is covseg's (Dice >= 0.99)."""
    pytest.importorskip("jsonschema")
    import nibabel as nib
    from monai.bundle import verify_metadata

    from covseg.api import fit
    from covseg.data.synthetic3d import write_phantom_volumes

    from tests.integration.test_volumes import SMALL, SMALL_SPACING, volume_config

    data = write_phantom_volumes(tmp_path / "data", 8, SMALL, SMALL_SPACING, seed=1)
    run = tmp_path / "run"
    fit(load_config(raw=volume_config(data, tmp_path / "cache", epochs=3)), run, quiet=True)
    bundle = tmp_path / "bundle"
    assert run_cli(["export", "-m", str(run), "--format", "bundle", "-o", str(bundle)]) == 0
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(SCHEMA))
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    assert config["inferer"]["roi_size"] == [32, 32, 16] and config["inferer"]["_target_"] == "SlidingWindowInferer"
    inputs = tmp_path / "in"
    inputs.mkdir()
    src = sorted((data / "images").iterdir())[0]
    shutil.copy(src, inputs / src.name)
    _run_bundle(bundle, inputs, tmp_path / "monai")
    assert run_cli(["predict", "-m", str(run), "-i", str(inputs), "-o", str(tmp_path / "covseg"), "-q"]) == 0
    stem = src.name[: -len(".nii.gz")]
    got = nib.load(tmp_path / "monai" / f"{stem}_seg.nii.gz")
    want = nib.load(tmp_path / "covseg" / "masks" / src.name)
    np.testing.assert_allclose(got.affine, nib.load(src).affine, atol=1e-4)  # written on the input's grid
    got_mask, want_mask = np.squeeze(np.asarray(got.dataobj)) > 0, np.asarray(want.dataobj) > 0
    assert got_mask.shape == want_mask.shape and want_mask.sum() > 100
    assert _dice(got_mask, want_mask) >= 0.99


# ---------------------------------------------------------------------------------------------- cascades


@pytest.mark.slow  # run2d (8 epochs) and a cascade run trained on its maps
def test_a_cascade_run_exports_both_stages_and_the_onnx_engine_matches_torch(run2d, tmp_path):
    """A cascade (a multi-class U-Net taking a binary run's map as an extra channel) was refused. Its export
    now holds the prior run's export in ``prior/`` and ``--engine onnx`` runs both stages: torch's maps."""
    from covseg.data.imageio import read_mask
    from covseg.inference.exported import load_exported
    from covseg.inference.predictor import Predictor

    data = run2d.parent / "data"
    cfg = tiny_config(
        data, size=48, epochs=1, data__mask="multiclass", data__num_classes=3, data__prior_run=str(run2d),
        model__name="unet_multiclass", model__params={"base_width": 8, "depth": 3, "prior_channel": True}, loss__main="dice_ce",
    )  # fmt: skip
    run = tmp_path / "cascade"
    build_trainer(load_config(raw=cfg), run, quiet=True).fit()
    out = tmp_path / "export"
    assert run_cli(["export", "-m", str(run), "--format", "onnx", "-o", str(out)]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["stages"] == {"prior": {"folder": "prior"}} and (out / "prior" / "model.onnx").is_file()
    assert card["network_data_format"]["inputs"]["image"]["num_channels"] == 1
    exported, reference = load_exported(out, "onnx"), Predictor.from_run(run, device="cpu")
    assert exported.segmenter.adapter("prior") is not None
    rng = np.random.default_rng(7)
    for shape in ((48, 48), (57, 66)):
        image = rng.integers(0, 255, size=shape).astype(np.float32)
        got, want = exported.predict_image(image).probs, reference.predict_image(image).probs
        assert got.shape == (3, *shape)
        np.testing.assert_allclose(got, want, atol=1e-4)
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(sorted((data / "images").iterdir())[0], inputs / "x.png")
    for engine, model_dir, dest in (("onnx", out, "ox"), ("torch", run, "pt")):
        assert run_cli(["predict", "--engine", engine, "-m", str(model_dir), "-i", str(inputs), "-o", str(tmp_path / dest), "-q"]) == 0
    np.testing.assert_array_equal(read_mask(tmp_path / "ox" / "masks" / "x.png"), read_mask(tmp_path / "pt" / "masks" / "x.png"))
    shutil.rmtree(out / "prior")
    with pytest.raises(CovsegError, match="prior stage is missing"):
        load_exported(out, "onnx")


@pytest.mark.slow
def test_a_coarse_to_fine_run_exports_both_stages_and_the_onnx_engine_matches_torch(tmp_path):
    """The 3D coarse-to-fine cascade: the export holds the coarse run's export in ``coarse/`` with the margin
    and threshold, and ``--engine onnx`` crops to the coarse region as torch does (same soft map)."""
    from covseg.api import fit
    from covseg.data.synthetic3d import make_phantom_volume, write_phantom_volumes
    from covseg.inference.exported import load_exported
    from covseg.inference.predictor import Predictor

    from tests.integration.test_volumes import SMALL, SMALL_SPACING, volume_config

    data = write_phantom_volumes(tmp_path / "data", 8, SMALL, SMALL_SPACING, seed=1)
    fit(load_config(raw=volume_config(data, tmp_path / "cache")), tmp_path / "coarse", quiet=True)
    cfg = volume_config(data, tmp_path / "cache", preprocess={"volume": {"coarse_run": str(tmp_path / "coarse"), "coarse_margin_mm": 16}})
    fit(load_config(raw=cfg), tmp_path / "fine", quiet=True)
    out = tmp_path / "export"
    assert run_cli(["export", "-m", str(tmp_path / "fine"), "--format", "onnx", "-o", str(out)]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["stages"]["coarse"]["folder"] == "coarse" and card["stages"]["coarse"]["margin_mm"] == 16
    exported = load_exported(out, "onnx")
    assert exported.segmenter.cascade is not None
    ph = make_phantom_volume(11, SMALL, SMALL_SPACING)
    got = exported.predict_array(ph.image, ph.affine).probs
    want = Predictor.from_run(tmp_path / "fine").predict_array(ph.image, ph.affine).probs
    assert want.max() > 0 and (want == 0).any()  # the coarse stage found a region, and the fine one stayed inside it
    np.testing.assert_allclose(got, want, atol=1e-4)


# ------------------------------------------------------------------------------------------------- docs


@pytest.mark.slow  # run2d: 8 epochs, so the run marks foreground the snippet can be compared on
def test_the_documented_onnxruntime_snippet_gives_covseg_predicts_mask(run2d, tmp_path, monkeypatch):
    """docs/deploy.md's plain-onnxruntime block, run as written on an export of a trained run (an image
    at the network size), gives the mask ``covseg predict`` writes."""
    from covseg.data.imageio import read_mask

    page = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text(encoding="utf-8")
    section = page.split("## Into ONNX Runtime", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "onnxruntime" in code and "covseg" not in code.replace("covseg predict", "")  # plain onnxruntime, no covseg
    assert run_cli(["export", "-m", str(run2d), "--format", "onnx", "-o", str(tmp_path / "export")]) == 0
    src = sorted((run2d.parent / "data" / "images").iterdir())[1]
    shutil.copy(src, tmp_path / "slice.png")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "docs/deploy.md", "exec"), namespace)
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(src, inputs / "slice.png")
    assert run_cli(["predict", "-m", str(run2d), "-i", str(inputs), "-o", str(tmp_path / "pred"), "-q"]) == 0
    expected = read_mask(tmp_path / "pred" / "masks" / "slice.png") > 0
    assert expected.any()
    np.testing.assert_array_equal(namespace["mask"], expected)


# ------------------------------------------------------------------------------------ Python API


@pytest.mark.slow  # run2d: 8 epochs
def test_the_python_api_exports_in_one_call_as_the_cli_does(run2d, tmp_path):
    """``covseg.api.export`` is the call behind ``covseg export``: the same files, and an ONNX export
    that predicts as the run does."""
    from covseg.api import export
    from covseg.inference.exported import load_exported
    from covseg.inference.predictor import Predictor

    path = export(run2d, tmp_path / "api", format="onnx")
    assert path == tmp_path / "api" / "model.onnx" and (tmp_path / "api" / "model_card.json").is_file()
    assert run_cli(["export", "-m", str(run2d), "-o", str(tmp_path / "cli")]) == 0
    assert sorted(p.name for p in (tmp_path / "api").iterdir()) == sorted(p.name for p in (tmp_path / "cli").iterdir())
    image = np.random.default_rng(3).integers(0, 255, size=(52, 61)).astype(np.float32)
    got = load_exported(tmp_path / "api", "onnx").predict_image(image).probs
    np.testing.assert_allclose(got, Predictor.from_run(run2d, device="cpu").predict_image(image).probs, atol=1e-4)
    assert export(run2d, tmp_path / "bundle", format="bundle") == tmp_path / "bundle"
    assert (tmp_path / "bundle" / "configs" / "metadata.json").is_file() and (tmp_path / "bundle" / "models" / "model.ts").is_file()
