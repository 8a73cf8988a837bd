"""Hostile input, round 2 (issue 25), for the command line: clear errors, Ctrl-C, which model ran,
and untrusted checkpoints and run descriptions.

* Bad input or a refused file is one line with exit 2, never "internal error ... covseg bug" (exit 3);
  unbounded values (``runtime.workers=100000``) are refused before anything runs.
* Ctrl-C prints one "interrupted" line and exits 130, for every command (``covseg app`` included).
* A shipped model's name wins over a local folder of that name (``./NAME`` is the folder), the
  console says which model runs and ``predictions.csv`` records it.
* ``export --checkpoint`` cannot take another run's weights; NaN weights or a NaN ``mean`` in
  ``model.json`` are refused at load, naming the file, instead of giving empty masks as success.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from covseg import zoo

from tests.helpers import free_port, phantom_dataset, tiny_config, wait_for_server

SIZE = 48
TINY = "tiny-zoo-model"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    """A phantom dataset, its config, a one-epoch run and that run packed as a zoo model (read-only)."""
    from covseg.api import fit
    from covseg.runs.packing import pack_run
    from covseg.training.config import load_config

    root = tmp_path_factory.mktemp("hostile_cli")
    data = phantom_dataset(root / "data", n=8, size=SIZE)
    cfg = tiny_config(data, size=SIZE, epochs=1)
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    fit(load_config(raw=cfg), root / "run", quiet=True)
    pack_run(root / "run", root / "zoo" / TINY, {"name": TINY, "task": "phantom test model"}, checkpoint="last")
    return {"data": data, "cfg": root / "cfg.yaml", "run": root / "run", "zoo": root / "zoo"}


def run_cli(capsys, *args) -> tuple[int, list[str]]:
    """Run ``covseg`` in-process: the exit code and the non-empty lines it printed (stderr + stdout)."""
    from covseg.cli.main import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert "Traceback" not in text
    return code, [line for line in text.splitlines() if line.strip()]


def one_error(lines: list[str]) -> str:
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, lines
    assert "internal error" not in errors[0] and "covseg bug" not in errors[0]
    return errors[0]


def _image(base: dict[str, Path]) -> Path:
    return sorted((base["data"] / "images").iterdir())[0]


# ------------------------------------------------------------------------------------ clear errors
@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("runtime.workers=100000", r"runtime\.workers: workers must lie in 0\.\.\d+ \(this machine has \d+ CPUs\), got 100000"),
        ("train.threads=-1", r"train\.threads: threads must be 0 or more, got -1"),
        ("train.threads=100000", r"train\.threads: threads must lie in 0\.\.\d+"),
        ("preprocess.mean=[nan]", r"preprocess\.mean: .*every mean must be a finite number"),
        ("preprocess.std=[.inf]", r"preprocess\.std: .*every std must be > 0 and finite"),
    ],
)
def test_unbounded_or_impossible_config_values_are_refused_before_anything_runs(base, tmp_path, capsys, monkeypatch, override, pattern):
    """``runtime.workers=100000`` forked past 1,000 processes before anything ran; ``train.threads=-1``
    was "internal error" (exit 3). Both are one line naming the config, and nothing is started."""
    import re

    import torch.utils.data

    started = []

    def no_loader(self, *args, **kwargs):  # the old code got here and forked the workers
        started.append(kwargs)
        raise RuntimeError("a data loader was started")

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", no_loader)
    code, lines = run_cli(capsys, "train", "-c", base["cfg"], "-o", tmp_path / "run", "-q", override)
    assert code == 2
    error = one_error(lines)
    assert re.search(pattern, error) and "cfg.yaml" in error, error
    assert started == [] and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["data", "phantoms", "{tmp}/ph", "-n", "1", "--size", "2"], r"--size '2': 2D phantoms take 8 to 4096 pixels"),
        (["data", "phantoms", "{tmp}/ph", "-n", "1", "--size", "5000"], r"--size '5000': 2D phantoms take 8 to 4096 pixels"),
        (["data", "phantoms", "{tmp}/ph", "-n", "1", "--3d", "--size", "64,64,600"], r"3D phantoms take 1 to 512 voxels per axis"),
        (["predict", "-m", "{run}", "-i", "{image}", "-o", "{tmp}/out", "--tta-axes", "5"], r"--tta-axes: '5': axes are 0, 1 or 2"),
    ],
)
def test_bad_option_values_are_one_line_not_an_internal_error(base, tmp_path, capsys, args, pattern):
    """Found by running every command with bad values: these ended in "internal error ... this is a
    covseg bug" (exit 3) or an IndexError listed per file; now one line, exit 2, nothing written."""
    import re

    filled = [a.format(tmp=tmp_path, run=base["run"], image=_image(base)) for a in args]
    code, lines = run_cli(capsys, *filled)
    assert code == 2
    assert re.search(pattern, one_error(lines)), lines
    assert not (tmp_path / "ph").exists() and not (tmp_path / "out" / "masks").exists()


def test_a_checkpoint_of_junk_bytes_is_unreadable_not_a_pickle_to_convert(base, tmp_path, capsys):
    """Junk in ``best.pt`` was reported as "needs full unpickling ... convert it once": advice to
    unpickle a file that is not a pickle at all."""
    run = tmp_path / "run"
    shutil.copytree(base["run"], run)
    for name in ("best.pt", "last.pt"):
        (run / "checkpoints" / name).write_bytes(b"garbage, not a checkpoint")
    code, lines = run_cli(capsys, "predict", "-m", run, "-i", _image(base), "-o", tmp_path / "out", "-q")
    assert code == 2
    error = one_error(lines)
    assert "best.pt: unreadable checkpoint (not a PyTorch checkpoint" in error and "convert" not in error


# ------------------------------------------------------------------------------------ Ctrl-C
def _every_command() -> list[tuple[list[str], object]]:
    """Every ``covseg`` command (with its group) and the typer record whose callback runs it."""
    from covseg.cli.main import app

    found = [([info.name or info.callback.__name__], info) for info in app.registered_commands]
    for group in app.registered_groups:
        found += [([group.name, info.name or info.callback.__name__], info) for info in group.typer_instance.registered_commands]
    return found


@pytest.mark.parametrize("command", [" ".join(c) for c, _ in _every_command()])
def test_ctrl_c_prints_interrupted_and_exits_130_for_every_command(command, capsys, monkeypatch):
    """typer turned Ctrl-C into a silent exit 130; the README promises an "interrupted" line."""
    info = dict((" ".join(c), i) for c, i in _every_command())[command]

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(info, "callback", interrupted)
    code, lines = run_cli(capsys, *command.split())
    assert code == 130
    assert lines == ["error: interrupted"]



def test_ctrl_c_stops_the_running_app_with_the_interrupted_line(tmp_path):
    """uvicorn handles Ctrl-C itself and ended with exit 0 and no line; a busy port was uvicorn's
    log and exit 3. (SIGINT is reset to its default for the child: a test runner may ignore it.)"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    port = free_port()
    command = [sys.executable, "-m", "covseg.cli.main", "app", "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        wait_for_server(server, port)
        busy = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        assert busy.returncode == 2 and busy.stderr.strip().splitlines()[-1] == f"error: cannot listen on 127.0.0.1:{port} (Address already in use)"
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 130
    assert err.strip().splitlines()[-1] == "error: interrupted" and "Traceback" not in err


# ------------------------------------------------------------------------------------ which model ran
def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "predictions.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_a_shipped_model_name_wins_over_a_local_folder_of_that_name(base, tmp_path, capsys, monkeypatch):
    """A local folder named like a shipped model silently replaced it. Now the name is the shipped
    model (the console says the folder is not used), ``./NAME`` is the folder, and
    ``predictions.csv`` records which one ran."""
    monkeypatch.setattr(zoo, "ZOO_DIR", base["zoo"])
    monkeypatch.chdir(tmp_path)
    local = tmp_path / TINY
    shutil.copytree(base["run"], local)  # a run folder that happens to carry the shipped model's name
    image = _image(base)

    code, lines = run_cli(capsys, "predict", "-m", TINY, "-i", image, "-o", tmp_path / "by_name", "-q")
    assert code == 0, lines
    assert f"model: shipped model {TINY} (not the local folder of that name: give ./{TINY} for it)" in lines
    assert [r["model"] for r in _rows(tmp_path / "by_name")] == [f"shipped model {TINY}"]

    code, lines = run_cli(capsys, "predict", "-m", f"./{TINY}", "-i", image, "-o", tmp_path / "by_path")
    assert code == 0, lines
    assert f"model: run folder {local}" in lines
    assert [r["model"] for r in _rows(tmp_path / "by_path")] == [f"run folder {local}"]


def test_the_app_runs_the_run_folder_it_was_given_even_when_named_like_a_shipped_model(base, tmp_path, monkeypatch):
    from covseg.app import ModelChoices

    monkeypatch.setattr(zoo, "ZOO_DIR", base["zoo"])
    monkeypatch.chdir(tmp_path)
    shutil.copytree(base["run"], tmp_path / TINY)
    choices = ModelChoices([Path(TINY)])
    assert Path(choices.predictor(f"run0:{TINY}").run_dir).resolve() == (tmp_path / TINY).resolve()
    assert Path(choices.predictor(TINY).run_dir).resolve() == (base["zoo"] / TINY).resolve()


# ------------------------------------------------------------------------------------ untrusted run folders
def test_export_refuses_a_checkpoint_outside_the_run_folder(base, tmp_path, capsys):
    """``--checkpoint ../../other/...`` exported another run's weights under this run's card."""
    run, other = tmp_path / "runs" / "mine", tmp_path / "other" / "theirs"
    shutil.copytree(base["run"], run)
    shutil.copytree(base["run"], other)
    code, lines = run_cli(capsys, "export", "-m", run, "-o", tmp_path / "export", "--checkpoint", "../../../other/theirs/checkpoints/last")
    assert code == 2
    error = one_error(lines)
    assert "outside this run folder" in error and str(other / "checkpoints" / "last.pt") in error and error.startswith(f"error: {run}:")
    assert not (tmp_path / "export" / "model_card.json").exists()
    (run / "checkpoints" / "last.pt").unlink()
    (run / "checkpoints" / "last.pt").symlink_to(other / "checkpoints" / "last.pt")  # the same through a link
    code, lines = run_cli(capsys, "export", "-m", run, "-o", tmp_path / "export", "--checkpoint", "last")
    assert code == 2
    error = one_error(lines)
    assert "checkpoint 'last' is " in error and "outside this run folder" in error
    assert not (tmp_path / "export" / "model_card.json").exists()


def test_nan_weights_are_refused_at_load_naming_the_checkpoint(base, tmp_path, capsys):
    """NaN weights gave empty masks reported as success (exit 0)."""
    import torch

    run = tmp_path / "run"
    shutil.copytree(base["run"], run)
    for name in ("best.pt", "last.pt"):
        path = run / "checkpoints" / name
        if path.exists():
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            key = next(k for k, v in ckpt["model_state"].items() if v.is_floating_point() and v.ndim == 4)
            ckpt["model_state"][key][0].fill_(float("nan"))
            torch.save(ckpt, path)
    for args in (["predict", "-m", run, "-i", _image(base), "-o", tmp_path / "out", "-q"], ["export", "-m", run, "-o", tmp_path / "export"]):
        code, lines = run_cli(capsys, *args)
        assert code == 2
        error = one_error(lines)
        assert ".pt: checkpoint weights hold" in error and "NaN or infinite value(s)" in error and key in error
    assert not (tmp_path / "out" / "masks").exists() and not (tmp_path / "export" / "model_card.json").exists()


@pytest.mark.parametrize(("field", "value", "pattern"), [("mean", [float("nan")], "every mean must be a finite number"), ("std", [float("inf")], "every std must be > 0 and finite")])
def test_a_nan_mean_or_infinite_std_in_model_json_is_refused(base, tmp_path, capsys, field, value, pattern):
    """A NaN ``mean`` in model.json made every input NaN: empty masks, exit 0."""
    run = tmp_path / "run"
    shutil.copytree(base["run"], run)
    description = json.loads((run / "model.json").read_text())
    description["preprocessing"][field] = value
    (run / "model.json").write_text(json.dumps(description))  # json writes NaN / Infinity, as Python reads them
    code, lines = run_cli(capsys, "predict", "-m", run, "-i", _image(base), "-o", tmp_path / "out", "-q")
    assert code == 2
    error = one_error(lines)
    assert "model.json" in error and pattern in error
    assert not (tmp_path / "out" / "masks").exists()


# -- the "smaller ones": each refused in one line, naming the file or option -----------------------
def test_stack_with_a_negative_slice_number_is_refused(tmp_path, capsys):
    """``vol_-1.png`` was skipped silently and the volume stacked without it."""
    import numpy as np
    from PIL import Image

    (tmp_path / "slices").mkdir()
    for k in (-1, 0, 1):
        Image.fromarray(np.full((16, 16), 50 + k, np.uint8)).save(tmp_path / "slices" / f"vol_{k}.png")
    code, lines = run_cli(capsys, "data", "convert", tmp_path / "slices", tmp_path / "out", "--stack")
    assert code == 2 and "slice number -1 is negative" in lines[-1] and "vol_-1.png" in lines[-1]
    assert not (tmp_path / "out" / "images" / "vol.nii.gz").exists()


def test_pseudo_label_lists_a_nifti_input_as_failed(base, tmp_path, capsys):
    """A volume was dropped silently ("0 pseudo-labelled", exit 0)."""
    import nibabel as nib
    import numpy as np

    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 4), np.int16), np.eye(4)), tmp_path / "in" / "a.nii.gz")
    code, lines = run_cli(capsys, "pseudo-label", "--model", base["run"], "-i", tmp_path / "in", "-o", tmp_path / "pl")
    assert code == 1 and any("a.nii.gz" in line and "takes no volumes" in line for line in lines)


def test_make_captions_refuses_a_grey_level_mask(tmp_path, capsys):
    """Anti-aliased grey levels were read as infection (``> 0``) and captioned."""
    import numpy as np
    from PIL import Image

    (tmp_path / "masks").mkdir()
    mask = np.zeros((64, 64), np.uint8)
    mask[10:30, 10:30], mask[40:50, 40:50] = 128, 255
    Image.fromarray(mask).save(tmp_path / "masks" / "g.png")
    code, lines = run_cli(capsys, "text", "make-captions", "--masks", tmp_path / "masks", "--out", tmp_path / "c.csv")
    assert code == 2 and "grey levels" in lines[-1] and "g.png" in lines[-1]
    assert not (tmp_path / "c.csv").exists()


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["demo", "--epochs", "0"], "--epochs: 0 must be at least 1"),
        (["demo", "--size", "0"], "--size: 0 must lie in 32..1024"),
        (["explain", "-m", "RUN", "-i", "IN", "-o", "OUT", "--tolerance", "nan"], "--tolerance: nan must be non-negative"),
        (["evaluate", "--pred", "IN", "--gt", "IN", "--pointing-tolerance", "nan"], "--pointing-tolerance: nan must be non-negative"),
    ],
    ids=["demo-epochs-0", "demo-size-0", "explain-tolerance-nan", "evaluate-pointing-nan"],
)
def test_impossible_option_values_are_refused(base, tmp_path, capsys, args, problem):
    """``demo --epochs 0`` fell back to the default, a NaN tolerance scored nothing as a hit."""
    (tmp_path / "in").mkdir()
    subst = {"RUN": base["run"], "IN": tmp_path / "in", "OUT": tmp_path / "out"}
    code, lines = run_cli(capsys, *(subst.get(a, a) for a in args))
    assert code == 2 and problem in lines[-1]


@pytest.mark.parametrize(
    "override",
    ["augment.scale=[0,0]", "augment.scale=[1.2,0.8]", "augment.hflip=2", "augment.rotate_deg=nan"],
)
def test_impossible_augmentation_is_refused_when_the_config_is_read(base, override):
    """``augment.scale=[0,0]`` divided the sampling grid by zero: NaN images were trained on silently."""
    from covseg.errors import ConfigError
    from covseg.training.config import load_config

    with pytest.raises(ConfigError, match=r"augment\."):
        load_config(base["cfg"], [override])
