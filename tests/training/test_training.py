"""Trainer: learning on phantoms, determinism, resume after kill -9, run folders, configs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from covseg.errors import ConfigError
from covseg.training.config import load_config
from covseg.training.data import kfold_split

from tests.helpers import phantom_dataset, tiny_config


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return phantom_dataset(tmp_path_factory.mktemp("phantoms") / "data", n=24, size=64)


def _train(cfg_dict: dict, run_dir: Path, resume: bool = False, stop_after: int | None = None) -> dict:
    from covseg.api import fit

    return fit(load_config(raw=cfg_dict), run_dir, resume=resume, quiet=True, stop_after=stop_after)


def _weights(run_dir: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / f"{which}.pt", weights_only=False)["model_state"]


def test_kfold_split_is_deterministic_disjoint_and_complete():
    ids = [str(i) for i in range(50)]
    folds = [kfold_split(ids, 5, k) for k in range(5)]
    vals = [set(v) for _, v in folds]
    assert all(len(v) == 10 for v in vals)
    assert set().union(*vals) == set(ids)
    assert all(not (a & b) for i, a in enumerate(vals) for b in vals[i + 1 :])
    assert folds[2] == kfold_split(list(reversed(ids)), 5, 2)  # order of discovery does not matter
    for train, val in folds:
        assert not set(train) & set(val)


def test_nested_split_partitions_the_outer_training_cases(phantoms, tmp_path):
    from covseg.training.data import split_records

    outer_train, outer_val = (set(x) for x in kfold_split([p.stem for p in (phantoms / "images").iterdir()], 4, 1))
    inner_vals = []
    for k in range(3):
        cfg = load_config(raw=tiny_config(phantoms, data__fold=1, data__inner_folds=3, data__inner_fold=k)).data
        train, val, info = split_records(cfg)
        ids_train, ids_val = {r.case_id for r in train}, {r.case_id for r in val}
        assert ids_train | ids_val == outer_train and not ids_train & ids_val
        assert set(info["outer_val"]) == outer_val and info["scheme"] == "nested_kfold"
        inner_vals.append(ids_val)
    assert set().union(*inner_vals) == outer_train and sum(map(len, inner_vals)) == len(outer_train)
    with pytest.raises(ConfigError, match="inner_fold=3"):
        split_records(load_config(raw=tiny_config(phantoms, data__inner_folds=3, data__inner_fold=3)).data)
    with pytest.raises(ConfigError, match="val_root"):
        split_records(load_config(raw=tiny_config(phantoms, data__inner_folds=3, data__val_root=str(phantoms))).data)


def test_run_folder_describes_itself(phantoms, tmp_path):
    run = tmp_path / "run"
    summary = _train(tiny_config(phantoms, epochs=2), run)
    for name in ("config.yaml", "model.json", "dataset.json", "splits.json", "history.csv", "curves.png"):
        assert (run / name).exists(), name
    assert (run / "checkpoints" / "last.pt").exists() and (run / "checkpoints" / "best.pt").exists()
    import csv

    rows = list(csv.DictReader((run / "history.csv").open()))  # wall and CPU seconds of every epoch
    assert len(rows) == 2 and all(float(r["cpu_s"]) > 0 and float(r["time_s"]) > 0 for r in rows)
    model_json = yaml.safe_load((run / "model.json").read_text())
    assert model_json["name"] == "unet" and model_json["init_args"]["base_width"] == 8
    assert model_json["preprocessing"]["size"] == [64, 64]
    splits = yaml.safe_load((run / "splits.json").read_text())
    assert len(splits["val"]) == 6 and len(splits["train"]) == 18
    resolved = load_config(run / "config.yaml")
    assert resolved.model.params["base_width"] == 8
    assert summary["epochs"] == 2


def test_same_seed_same_weights_and_metrics(phantoms, tmp_path):
    a = _train(tiny_config(phantoms, epochs=2), tmp_path / "a")
    b = _train(tiny_config(phantoms, epochs=2), tmp_path / "b")
    assert a["best_metric"] == b["best_metric"]
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = _train(tiny_config(phantoms, epochs=2, train__seed=1), tmp_path / "c")
    wc = _weights(tmp_path / "c")
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert c["epochs"] == 2


def test_resume_continues_exactly(phantoms, tmp_path):
    full = tmp_path / "full"
    _train(tiny_config(phantoms, epochs=3), full)
    part = tmp_path / "part"
    cfg = tiny_config(phantoms, epochs=3)
    _train(cfg, part, stop_after=1)
    assert torch.load(part / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 0
    _train(cfg, part, resume=True)
    wf, wp = _weights(full), _weights(part)
    assert all(torch.allclose(wf[k].float(), wp[k].float(), atol=1e-6) for k in wf)
    hist_full = (full / "history.csv").read_text().splitlines()
    hist_part = (part / "history.csv").read_text().splitlines()
    assert len(hist_full) == len(hist_part) == 4


def test_kill_minus_nine_mid_training_then_resume(phantoms, tmp_path):
    """A kill -9 loses at most the epoch in progress; --resume ends where an uninterrupted run ends."""
    epochs = 8
    cfg = tiny_config(phantoms, epochs=epochs)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "covseg.cli.main", "train", "--config", str(cfg_path), "--output", str(run), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last, history = run / "checkpoints" / "last.pt", run / "history.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (history.exists() and len(history.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last.exists(), "no checkpoint written before the kill"
    done_before = torch.load(last, weights_only=False)["epoch"]
    assert 1 <= done_before < epochs - 1, "the kill came too late to test anything"
    for p in run.rglob("*"):  # a kill during a write leaves at most a hidden temporary file
        assert not p.name.endswith(".tmp") or p.name.startswith(".")
    resume = subprocess.run([*cmd, "--resume"], capture_output=True, text=True)
    assert resume.returncode == 0, resume.stderr
    assert torch.load(last, weights_only=False)["epoch"] == epochs - 1
    rows = (run / "history.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(epochs))
    _train(cfg, tmp_path / "uninterrupted")
    wk, wu = _weights(run), _weights(tmp_path / "uninterrupted")
    assert all(torch.allclose(wk[k].float(), wu[k].float(), atol=1e-6) for k in wk)


@pytest.mark.slow
def test_unet_learns_phantom_lesions(tmp_path):
    data = phantom_dataset(tmp_path / "data", n=40, size=64, seed=3)
    cfg = tiny_config(data, epochs=25, optim__lr=5e-3, train__batch_size=8, data__folds=5)
    summary = _train(cfg, tmp_path / "run")
    assert summary["best_metric"] >= 0.6, summary


def test_config_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {root: x}\nmodel: {name: unet}\ntrain: {epochs: many}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    assert "train.epochs" in str(exc.value) and str(bad) in str(exc.value)
    assert "\n" not in str(exc.value)
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    bad.write_text("data: {root: x}\nmodel: {name: unet}\nunknown_section: 1\n")
    with pytest.raises(ConfigError, match="unknown_section"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(raw={"data": {"root": "x"}, "model": {"name": "unet"}}, overrides=["train.epochs"])


def test_cli_train_bad_input_prints_one_line(tmp_path):
    missing = tmp_path / "nope"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(missing)))
    proc = subprocess.run(
        [sys.executable, "-m", "covseg.cli.main", "train", "--config", str(cfg), "--output", str(tmp_path / "r"), "-q"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(missing) in lines[0] and "not found" in lines[0]


def test_shipped_configs_validate():
    from covseg.training.config import shipped_configs_dir

    configs = sorted(shipped_configs_dir().glob("*.yaml"))
    assert configs, "no shipped configs"
    from covseg.models import MODELS, build_model

    build_model  # noqa: B018
    import covseg.models  # noqa: F401

    for path in configs:
        cfg = load_config(path)
        assert cfg.model.name in MODELS, f"{path.name}: model {cfg.model.name!r} is not registered"
