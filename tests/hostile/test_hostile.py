"""Hostile but realistic input: every case ends in one line naming the file, never a traceback,
never a modified input, never a half-written output, never code run from a file.

One parametrised case per class of issue 16 (and the ones found while fixing it). Each case
builds its inputs in a fresh folder, runs ``covseg`` in-process and checks:

* the exit code (2: refused as a whole, 1: a batch listed bad inputs and went on, 0: handled);
* the line: one stderr line matching the case's pattern and naming the file at fault; when the
  command is refused (exit 2) it is the only ``error:`` line;
* no ``Traceback`` anywhere, and no unexpected exception out of ``main``;
* every input file (all files under the case's inputs) has the same SHA-256 before and after;
* no temporary or staging file is left anywhere (writes are atomic);
* and a case-specific check where the class needs one (the number, the file that must not exist).

Faults the machine cannot be asked for (a full disk, a read-only folder: the suite may run as
root) are injected by monkeypatching the one place files are created.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from covseg.data.imageio import write_volume

from tests.helpers import phantom_dataset, tiny_config

SIZE = 48


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    """A phantom dataset, its config and a trained one-epoch run, shared (read-only) by every case."""
    import yaml

    from covseg.api import fit
    from covseg.training.config import load_config

    root = tmp_path_factory.mktemp("hostile_base")
    data = phantom_dataset(root / "data", n=12, size=SIZE)
    cfg = tiny_config(data, size=SIZE, epochs=1)
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    fit(load_config(raw=cfg), root / "run", quiet=True)
    return {"data": data, "cfg": root / "cfg.yaml", "run": root / "run"}


@dataclass
class Spec:
    """What a case runs and expects."""

    args: list[Any]
    code: int
    line: str = ""  # regex one stderr line must match (empty: no line expected)
    names: str = ""  # the file the line must name (its file name is enough)
    inputs: list[Path] = field(default_factory=list)  # files and folders that must stay byte-identical
    check: Callable[[], None] | None = None  # more assertions after the run
    patch: Callable[[pytest.MonkeyPatch], None] | None = None  # fault injection


@dataclass
class Ctx:
    tmp: Path
    base: dict[str, Path]

    def copy_run(self, name: str = "run") -> Path:
        dst = self.tmp / name
        shutil.copytree(self.base["run"], dst)
        return dst

    def copy_data(self, name: str = "data") -> Path:
        dst = self.tmp / name
        shutil.copytree(self.base["data"], dst)
        return dst

    def image(self, name: str = "x.png", k: int = 0) -> Path:
        path = self.tmp / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.base["data"] / "images" / f"phantom_{k:04d}.png", path)
        return path

    def images(self, n: int = 3) -> Path:
        for k in range(n):
            self.image(f"img{k}.png", k)
        return self.tmp / "in"


def _digest(paths: list[Path]) -> dict[str, str]:
    out = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if re.search(r"\.tmp(\.|$)", p.name) or p.name.startswith(".unit-")]


# ------------------------------------------------------------------------------------ builders
def _evil_checkpoint(src: Path, dst: Path, canary: Path) -> None:
    """A checkpoint that creates ``canary`` when unpickled with weights_only=False."""
    import torch

    class Payload:
        def __reduce__(self):
            return (open, (str(canary), "w"))

    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    ckpt["extra"] = Payload()
    torch.save(ckpt, dst)


def _poisoned_run(ctx: Ctx) -> tuple[Path, Path]:
    run, canary = ctx.copy_run("evil"), ctx.tmp / "PWNED"
    for which in ("best", "last"):
        target = run / "checkpoints" / f"{which}.pt"
        if target.exists():
            _evil_checkpoint(ctx.base["run"] / "checkpoints" / "last.pt", target, canary)
    return run, canary


def _no_canary(canary: Path) -> Callable[[], None]:
    def check() -> None:
        assert not canary.exists(), "code in a checkpoint ran"

    return check


def _png_claiming(path: Path, width: int, height: int) -> None:
    """A tiny PNG whose header claims ``width`` × ``height`` 1-bit pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _edit_model_json(run: Path, edit: Callable[[dict], Any]) -> None:
    desc = json.loads((run / "model.json").read_text())
    edit(desc)
    (run / "model.json").write_text(json.dumps(desc))


def _model_json_case(edit: Callable[[dict], Any] | None, pattern: str, raw: bytes | None = None):
    def build(ctx: Ctx) -> Spec:
        run = ctx.copy_run()
        if raw is not None:
            (run / "model.json").write_bytes(raw)
        else:
            _edit_model_json(run, edit)
        return Spec(["predict", "-m", run, "-i", ctx.images(1), "-o", ctx.tmp / "out", "-q"], 2, pattern, "model.json", [run])

    return build


def _checkpoint_case(change: Callable[[dict], Any] | None, pattern: str, raw: bytes | None = None):
    def build(ctx: Ctx) -> Spec:
        import torch

        run = ctx.copy_run()
        (run / "checkpoints" / "best.pt").unlink(missing_ok=True)
        target = run / "checkpoints" / "last.pt"
        if raw is not None:
            target.write_bytes(raw)
        else:
            ckpt = torch.load(target, map_location="cpu", weights_only=True)
            torch.save(change(ckpt), target)
        return Spec(["predict", "-m", run, "-i", ctx.images(1), "-o", ctx.tmp / "out", "-q"], 2, pattern, "last.pt", [run])

    return build


def _without_key(ckpt: dict) -> dict:
    state = dict(ckpt["model_state"])
    state.pop(next(iter(state)))
    return {**ckpt, "model_state": state}


def _wrong_shape(ckpt: dict) -> dict:
    import torch

    state = dict(ckpt["model_state"])
    state[next(iter(state))] = torch.zeros(3, 3)
    return {**ckpt, "model_state": state}


def _train_case(overrides: list[str], pattern: str, names: str = "cfg.yaml"):
    def build(ctx: Ctx) -> Spec:
        out = ctx.tmp / "run"

        def nothing_trained() -> None:
            assert not (out / "checkpoints").exists(), "refused only after training had begun"

        return Spec(["train", "-c", ctx.base["cfg"], "-o", out, "-q", *overrides], 2, pattern, names, [ctx.base["data"]], nothing_trained)

    return build


# ------------------------------------------------------------------------------------ the cases
def security_pickle_predict(ctx: Ctx) -> Spec:
    run, canary = _poisoned_run(ctx)
    return Spec(["predict", "-m", run, "-i", ctx.images(1), "-o", ctx.tmp / "out", "-q"], 2, r"needs full unpickling.*--convert-trusted", "best.pt", [run], _no_canary(canary))


def security_pickle_checkpoint_option(ctx: Ctx) -> Spec:
    evil, canary = ctx.tmp / "any.pt", ctx.tmp / "PWNED"
    _evil_checkpoint(ctx.base["run"] / "checkpoints" / "last.pt", evil, canary)
    args = ["predict", "-m", ctx.base["run"], "--checkpoint", evil, "-i", ctx.images(1), "-o", ctx.tmp / "out", "-q"]
    return Spec(args, 2, r"needs full unpickling", "any.pt", [evil], _no_canary(canary))


def security_pickle_resume(ctx: Ctx) -> Spec:
    run, canary = _poisoned_run(ctx)
    return Spec(["train", "-c", run / "config.yaml", "-o", run, "--resume", "-q"], 2, r"needs full unpickling", "last.pt", [run / "checkpoints"], _no_canary(canary))


def security_pickle_prior_run(ctx: Ctx) -> Spec:
    evil, canary = _poisoned_run(ctx)
    run = ctx.copy_run("cascade")
    _edit_model_json(run, lambda d: d.update(prior={"run": str(evil), "checkpoint": "last"}))
    return Spec(["predict", "-m", run, "-i", ctx.images(1), "-o", ctx.tmp / "out", "-q"], 2, r"needs full unpickling", "last.pt", [evil, run], _no_canary(canary))


def security_name_escapes_runs(ctx: Ctx) -> Spec:
    # run from ctx.tmp without --output: the run folder would be runs/<name>_fold0
    def nothing_outside() -> None:
        assert not (ctx.tmp / "escaped_fold0").exists() and not (ctx.tmp.parent / "escaped_fold0").exists()

    return Spec(["train", "-c", ctx.base["cfg"], "-q", "name=../../escaped"], 2, r"name must be a plain file name", "cfg.yaml", [ctx.base["data"]], nothing_outside)


def security_csv_formula_evaluate(ctx: Ctx) -> Spec:
    pred, gt = ctx.tmp / "pred", ctx.tmp / "gt"
    for folder in (pred, gt):
        folder.mkdir()
        shutil.copyfile(ctx.base["data"] / "masks" / "phantom_0001.png", folder / "=HYPERLINK(1).png")
        shutil.copyfile(ctx.base["data"] / "masks" / "phantom_0002.png", folder / "@SUM(1).png")

    def neutralised() -> None:
        text = (ctx.tmp / "out" / "per_case.csv").read_text()
        cells = [c for line in text.splitlines() for c in line.split(",")]
        assert not any(c.startswith(("=", "+", "@")) for c in cells), text
        assert "'=HYPERLINK(1)" in text

    return Spec(["evaluate", "--pred", pred, "--gt", gt, "--out", ctx.tmp / "out", "--no-report"], 0, inputs=[pred, gt], check=neutralised)


def security_csv_formula_pseudo_label(ctx: Ctx) -> Spec:
    ctx.image("-2+3.png", 1)

    def round_trip() -> None:
        from covseg.training.semi.pseudo import read_confidence

        text = (ctx.tmp / "out" / "confidence.csv").read_text()
        assert "\n'-2+3," in text  # neutralised in the file…
        assert "-2+3" in read_confidence(ctx.tmp / "out")  # …and read back as the case id by the trainer

    return Spec(["pseudo-label", "-m", ctx.base["run"], "-i", ctx.tmp / "in", "-o", ctx.tmp / "out", "-q"], 0, inputs=[ctx.tmp / "in"], check=round_trip)


def security_html_in_file_names(ctx: Ctx) -> Spec:
    pred, gt = ctx.tmp / "pred", ctx.tmp / "gt"
    name = "<img src=x onerror=alert(1)>.png"
    for folder in (pred, gt):
        folder.mkdir()
        shutil.copyfile(ctx.base["data"] / "masks" / "phantom_0001.png", folder / name)
    grey = np.asarray(Image.open(ctx.base["data"] / "masks" / "phantom_0002.png").convert("L"))
    Image.fromarray(np.stack([grey, grey // 2, 255 - grey], axis=-1)).save(pred / "<b>colour.png")
    shutil.copyfile(ctx.base["data"] / "masks" / "phantom_0002.png", gt / "<b>colour.png")

    def escaped() -> None:
        page = (ctx.tmp / "out" / "report.html").read_text(encoding="utf-8")
        assert "<img src=x" not in page and "<b>colour" not in page
        assert "&lt;img src=x onerror=alert(1)&gt;" in page

    return Spec(["evaluate", "--pred", pred, "--gt", gt, "--out", ctx.tmp / "out"], 1, r"a colour image", "<b>colour.png", [pred, gt], escaped)


def loss_pseudo_label_into_parent(ctx: Ctx) -> Spec:
    folder = ctx.tmp / "unlabelled"
    shutil.copytree(ctx.base["data"] / "images", folder / "images")
    return Spec(["pseudo-label", "-m", ctx.base["run"], "-i", folder / "images", "-o", folder, "-q"], 2, r"already holds images/, not written by covseg pseudo-label", "unlabelled", [folder])


def loss_pseudo_label_own_images(ctx: Ctx) -> Spec:
    from covseg.cli.main import main

    out = ctx.tmp / "pseudo"
    with pytest.raises(SystemExit) as first:
        main(["pseudo-label", "-m", str(ctx.base["run"]), "-i", str(ctx.images(2)), "-o", str(out), "-q"])
    assert first.value.code in (0, None)
    return Spec(["pseudo-label", "-m", ctx.base["run"], "-i", out / "images", "-o", out, "-q"], 1, r"would overwrite an input file", "img0.png", [out / "images"])


def loss_predict_into_dataset(ctx: Ctx) -> Spec:
    data = ctx.copy_data()
    return Spec(["predict", "-m", ctx.base["run"], "-i", data / "images", "-o", data, "-q"], 2, r"already holds masks/.*not written by covseg predict", "data", [data])


def loss_train_into_foreign_folder(ctx: Ctx) -> Spec:
    folder = ctx.tmp / "mine"
    folder.mkdir()
    shutil.copyfile(ctx.base["cfg"], folder / "config.yaml")
    (folder / "dataset.json").write_text('{"my": "notes"}')
    return Spec(["train", "-c", folder / "config.yaml", "-o", folder, "-q"], 2, r"already holds config.yaml, dataset.json", "mine", [folder])


def loss_concurrent_training(ctx: Ctx) -> Spec:
    from covseg.runs.folder import RunFolder

    run = ctx.tmp / "shared_run"
    holder = RunFolder(run).lock()
    holder.__enter__()  # another training holds the folder

    def released() -> None:
        holder.__exit__(None, None, None)
        assert not (run / "model.json").exists()

    return Spec(["train", "-c", ctx.base["cfg"], "-o", run, "-q"], 2, r"another covseg train is writing this run folder", "shared_run", [ctx.base["data"]], released)


def loss_same_stem_inputs(ctx: Ctx) -> Spec:
    folder = ctx.tmp / "in"
    folder.mkdir()
    shutil.copyfile(ctx.base["data"] / "images" / "phantom_0000.png", folder / "a.png")
    Image.open(ctx.base["data"] / "images" / "phantom_0001.png").save(folder / "a.jpg")
    shutil.copyfile(ctx.base["data"] / "images" / "phantom_0002.png", folder / "b.png")

    def only_b() -> None:
        assert sorted(p.name for p in (ctx.tmp / "out" / "masks").iterdir()) == ["b.png"]
        failed = (ctx.tmp / "out" / "failed.txt").read_text().splitlines()
        assert len(failed) == 2 and all("same name without suffix" in line for line in failed)

    return Spec(["predict", "-m", ctx.base["run"], "-i", folder, "-o", ctx.tmp / "out", "-q"], 1, r"would overwrite those of a\.jpg", "a.png", [folder], only_b)


def loss_convert_pair_list_into_destination(ctx: Ctx) -> Spec:
    src, dst = ctx.tmp / "src", ctx.tmp / "dst"
    (dst / "masks").mkdir(parents=True)
    src.mkdir()
    lines = []
    for k in range(2):
        shutil.copyfile(ctx.base["data"] / "images" / f"phantom_{k:04d}.png", src / f"c{k}.png")
        shutil.copyfile(ctx.base["data"] / "masks" / f"phantom_{k:04d}.png", dst / "masks" / f"c{k}.png")
        lines.append(f"c{k}.png ../dst/masks/c{k}.png")
    (src / "train.txt").write_text("\n".join(lines) + "\n")
    return Spec(["data", "convert", src / "train.txt", dst, "--to", "folder", "--overwrite"], 1, r"would overwrite an input file", "c0.png", [src, dst / "masks"])


def loss_check_report_onto_dataset_file(ctx: Ctx) -> Spec:
    data = ctx.copy_data()
    (data / "texts.json").write_text('{"phantom_0000": "opacity"}')
    return Spec(["data", "check", data, "--json", data / "texts.json"], 2, r"report would be written into the input of covseg data check", "texts.json", [data])


def wrong_16_bit_images(ctx: Ctx) -> Spec:
    import tifffile

    folder = ctx.tmp / "in"
    folder.mkdir()
    eight = np.asarray(Image.open(ctx.base["data"] / "images" / "phantom_0003.png"))
    Image.fromarray(eight).save(folder / "eight.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(folder / "sixteen.png")
    tifffile.imwrite(folder / "sixteen_tiff.tif", eight.astype(np.uint16) * 257)

    def same_as_8_bit() -> None:
        from covseg.data.imageio import read_image

        np.testing.assert_allclose(read_image(folder / "sixteen.png"), eight, atol=1e-3)
        np.testing.assert_allclose(read_image(folder / "sixteen_tiff.tif"), eight, atol=1e-3)
        probs = {n: np.asarray(Image.open(ctx.tmp / "out" / "probs" / f"{n}.png")).astype(int) for n in ("eight", "sixteen", "sixteen_tiff")}
        assert np.abs(probs["eight"] - probs["sixteen"]).max() <= 1 and np.abs(probs["eight"] - probs["sixteen_tiff"]).max() <= 1

    return Spec(["predict", "-m", ctx.base["run"], "-i", folder, "-o", ctx.tmp / "out", "-q", "--no-overlays"], 0, inputs=[folder], check=same_as_8_bit)


def wrong_resume_with_other_fold(ctx: Ctx) -> Spec:
    run = ctx.copy_run()
    return Spec(["train", "-c", ctx.base["cfg"], "-o", run, "--resume", "--fold", "1", "-q"], 2, r"--resume continues the saved run.*data\.fold: 0 → 1", "config.yaml", [run])


def _eval_folders(ctx: Ctx, n: int = 3) -> tuple[Path, Path]:
    pred, gt = ctx.tmp / "pred", ctx.tmp / "gt"
    pred.mkdir()
    gt.mkdir()
    for k in range(n):
        shutil.copyfile(ctx.base["data"] / "masks" / f"phantom_{k:04d}.png", gt / f"c{k}.png")
    return pred, gt


def wrong_evaluate_overlays_as_predictions(ctx: Ctx) -> Spec:
    pred, gt = _eval_folders(ctx)
    for k in range(3):
        grey = np.asarray(Image.open(gt / f"c{k}.png").convert("L"))
        Image.fromarray(np.stack([grey, grey // 2, 255 - grey], axis=-1).astype(np.uint8)).save(pred / f"c{k}.png")
    return Spec(["evaluate", "--pred", pred, "--gt", gt, "--out", ctx.tmp / "out"], 2, r"a colour image \(an overlay\?\)", "c0.png", [pred, gt])


def wrong_evaluate_images_as_ground_truth(ctx: Ctx) -> Spec:
    pred, gt = ctx.tmp / "pred", ctx.tmp / "images"
    shutil.copytree(ctx.base["data"] / "images", gt)
    pred.mkdir()
    for p in sorted(gt.iterdir())[:3]:
        shutil.copyfile(ctx.base["data"] / "masks" / p.name, pred / p.name)
    return Spec(["evaluate", "--pred", pred, "--gt", gt, "--out", ctx.tmp / "out"], 2, r"not a mask \(\d+\+? grey levels", "phantom_0000.png", [pred, gt])


def wrong_evaluate_flipped_nifti(ctx: Ctx) -> Spec:
    pred, gt = ctx.tmp / "pred", ctx.tmp / "gt"
    mask = np.zeros((16, 18, 6), np.uint8)
    mask[3:9, 4:12, 2:5] = 1
    write_volume(gt / "v.nii.gz", mask, np.diag([0.8, 0.8, 2.0, 1.0]), dtype="uint8")
    flipped = np.diag([-0.8, 0.8, 2.0, 1.0])
    flipped[0, 3] = 0.8 * 15  # the same physical mask, stored along a flipped x axis
    write_volume(pred / "v.nii.gz", mask[::-1], flipped, dtype="uint8")
    return Spec(["evaluate", "--pred", pred, "--gt", gt, "--out", ctx.tmp / "out"], 2, r"affine differs from the ground truth's", "v.nii.gz", [pred, gt])


def wrong_evaluate_missing_predictions(ctx: Ctx) -> Spec:
    pred, gt = _eval_folders(ctx, n=4)
    shutil.copyfile(gt / "c0.png", pred / "c0.png")

    def exit_1_then_empty() -> None:
        from covseg.cli.main import main

        summary = json.loads((ctx.tmp / "out" / "summary.json").read_text())
        assert summary["num_cases"] == 1 and summary["num_unscored"] == 3
        with pytest.raises(SystemExit) as scored:
            main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(ctx.tmp / "out2"), "--missing-pred", "empty"])
        assert scored.value.code in (0, None)
        rows = (ctx.tmp / "out2" / "per_case.csv").read_text().splitlines()[1:]
        dice = {r.split(",")[0]: float(r.split(",")[2]) for r in rows}
        assert dice["c0"] == 1.0 and dice["c1"] == dice["c2"] == dice["c3"] == 0.0

    return Spec(["evaluate", "--pred", pred, "--gt", gt, "--out", ctx.tmp / "out"], 1, r"no prediction with this stem", "c1.png", [pred, gt], exit_1_then_empty)


def wrong_evaluate_outputs_one_unit(ctx: Ctx) -> Spec:
    """A kill between two files of an evaluation: never a new summary.json beside an old report."""
    from covseg.cli.main import main

    pred, gt = _eval_folders(ctx)
    for k in range(3):
        shutil.copyfile(gt / f"c{k}.png", pred / f"c{k}.png")
    out = ctx.tmp / "out"
    with pytest.raises(SystemExit):
        main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(out)])
    old_report = (out / "report.html").read_bytes()
    real_replace = os.replace

    def killed_at_report(src, dst, *args, **kwargs):
        if Path(dst) == out / "report.html":  # moving the finished report from staging into place
            raise KeyboardInterrupt  # the process dies here
        return real_replace(src, dst, *args, **kwargs)

    def unit() -> None:
        assert not (out / "summary.json").exists()  # no summary: the unit is recognisably incomplete
        assert (out / "report.html").read_bytes() == old_report  # the old report is not presented as new
        with pytest.raises(SystemExit):
            main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(out), "--threshold", "0.3"])
        assert json.loads((out / "summary.json").read_text())["params"]["threshold"] == 0.3

    return Spec(
        ["evaluate", "--pred", pred, "--gt", gt, "--out", out, "--threshold", "0.3"], 130, "", "", [pred, gt], unit,
        lambda mp: mp.setattr(os, "replace", killed_at_report),
    )


def wrong_pseudo_label_text_run_without_text(ctx: Ctx) -> Spec:
    from covseg.api import fit
    from covseg.training.config import load_config

    from tests.text.test_text_sources import make_folder_json, text_config

    root, _, _ = make_folder_json(ctx.tmp / "textdata")
    run = ctx.tmp / "textrun"
    fit(load_config(raw=text_config(root, epochs=1, text={"encoder": "embedding"})), run, quiet=True)
    images = root / "images"
    return Spec(["pseudo-label", "-m", run, "-i", images, "-o", ctx.tmp / "out", "-q"], 1, r"no text for this image", "c0.png", [root])


def wrong_training_on_grey_level_mask(ctx: Ctx) -> Spec:
    data = ctx.copy_data()
    mask = np.where(np.asarray(Image.open(data / "masks" / "phantom_0003.png").convert("L")) > 0, 255, 0).astype(np.uint8)
    mask[0, :4] = 128  # 0/128/255: what data check calls an error
    Image.fromarray(mask).save(data / "masks" / "phantom_0003.png")
    return Spec(["train", "-c", ctx.base["cfg"], "-o", ctx.tmp / "run", "-q", f"data.root={data}"], 2, r"mask holds \d+ grey levels.*data check", "phantom_0003.png", [data])


def _nifti(ctx: Ctx, name: str = "vol.nii.gz") -> Path:
    rng = np.random.default_rng(0)
    path = ctx.tmp / "in" / name
    write_volume(path, (rng.normal(size=(24, 24, 4)) * 300 - 500).astype(np.float32), np.diag([0.8, 0.8, 2.5, 1.0]), dtype="float32")
    return path


def wrong_window_low_above_high(ctx: Ctx) -> Spec:
    return Spec(["predict", "-m", ctx.base["run"], "-i", _nifti(ctx), "-o", ctx.tmp / "out", "-q", "--window", "200,100"], 2, r"--window: LOW must be below HIGH", "", [ctx.tmp / "in"])


def wrong_negative_postprocessing(ctx: Ctx) -> Spec:
    return Spec(["predict", "-m", ctx.base["run"], "-i", ctx.images(1), "-o", ctx.tmp / "out", "-q", "--largest", "-3"], 2, r"--largest: -3 must be 0", "", [ctx.tmp / "in"])


def wrong_batch_size_reaches_volumes(ctx: Ctx) -> Spec:
    from covseg.engine.segmenter import Segmenter

    seen: list[int] = []
    real_infer = Segmenter.infer

    def spy(self, inputs, contexts=None, batch_size=8, tta_flip=False):
        seen.append(batch_size)
        return real_infer(self, inputs, contexts, batch_size, tta_flip)

    def used() -> None:
        assert seen == [3]

    return Spec(
        ["predict", "-m", ctx.base["run"], "-i", _nifti(ctx), "-o", ctx.tmp / "out", "-q", "--batch-size", "3"], 0, inputs=[ctx.tmp / "in"], check=used,
        patch=lambda mp: mp.setattr(Segmenter, "infer", spy),
    )


def _write_nifti_raw(path: Path, header, data: np.ndarray) -> None:
    """Write a single-file NIfTI byte by byte: nibabel would repair the damaged header fields on saving."""
    header["vox_offset"] = 352
    path.write_bytes(header.binaryblock + b"\0" * 4 + data.tobytes(order="F"))


def wrong_nifti_zero_voxel_size(ctx: Ctx) -> Spec:
    import nibabel as nib

    path = _nifti(ctx, "zero.nii")
    img = nib.load(str(path))
    header = img.header.copy()
    header["pixdim"][1] = 0.0
    header["sform_code"] = header["qform_code"] = 0
    _write_nifti_raw(path, header, np.asarray(img.dataobj, dtype=np.float32))
    return Spec(["predict", "-m", ctx.base["run"], "-i", path, "-o", ctx.tmp / "out", "-q"], 1, r"voxel size \[0\.0, .*not positive", "zero.nii", [path])


def trace_decompression_bomb(ctx: Ctx) -> Spec:
    folder = ctx.images(2)
    _png_claiming(folder / "bomb.png", 20000, 20000)

    def others_predicted() -> None:
        assert sorted(p.name for p in (ctx.tmp / "out" / "masks").iterdir()) == ["img0.png", "img1.png"]

    return Spec(["predict", "-m", ctx.base["run"], "-i", folder, "-o", ctx.tmp / "out", "-q"], 1, r"image too large to decode safely", "bomb.png", [folder], others_predicted)


def trace_singular_nifti_affine(ctx: Ctx) -> Spec:
    import nibabel as nib

    path = _nifti(ctx, "flat.nii")
    img = nib.load(str(path))
    header = img.header.copy()
    header["sform_code"], header["qform_code"] = 1, 0
    header["srow_x"] = [0, 0, 0, 0]
    _write_nifti_raw(path, header, np.asarray(img.dataobj, dtype=np.float32))
    return Spec(["predict", "-m", ctx.base["run"], "-i", path, "-o", ctx.tmp / "out", "-q"], 1, r"affine .* is singular", "flat.nii", [path])


def trace_multi_frame_images(ctx: Ctx) -> Spec:
    import tifffile

    folder = ctx.images(1)
    frame = np.asarray(Image.open(folder / "img0.png"))
    Image.fromarray(frame).save(folder / "anim.png", save_all=True, append_images=[Image.fromarray(255 - frame)])
    tifffile.imwrite(folder / "stack.tif", np.stack([frame] * 5))

    def both_listed() -> None:
        failed = (ctx.tmp / "out" / "failed.txt").read_text()
        assert "anim.png: holds 2 frames" in failed and "stack.tif: holds 5 pages" in failed

    return Spec(["predict", "-m", ctx.base["run"], "-i", folder, "-o", ctx.tmp / "out", "-q"], 1, r"holds \d+ (frames|pages)", "anim.png", [folder], both_listed)


def trace_symlink_loop(ctx: Ctx) -> Spec:
    folder = ctx.images(1)
    os.symlink(folder / "loop_b.png", folder / "loop_a.png")
    os.symlink(folder / "loop_a.png", folder / "loop_b.png")
    return Spec(["predict", "-m", ctx.base["run"], "-i", folder, "-o", ctx.tmp / "out", "-q"], 1, r"broken symbolic link", "loop_a.png", [folder / "img0.png"])


def trace_non_utf8_file_name(ctx: Ctx) -> Spec:
    folder = ctx.images(1)
    name = os.fsdecode(b"caf\xe9.png")
    (folder / name).write_bytes(b"not an image")

    def escaped() -> None:
        assert (ctx.tmp / "out" / "masks" / "img0.png").exists()
        assert b"caf\xe9.png" in (ctx.tmp / "out" / "failed.txt").read_bytes()  # the file's own bytes

    return Spec(["predict", "-m", ctx.base["run"], "-i", folder, "-o", ctx.tmp / "out", "-q"], 1, r"caf\\xe9\.png: unreadable image", "", [folder], escaped)


def trace_newline_in_file_name(ctx: Ctx) -> Spec:
    folder = ctx.images(1)
    (folder / "two\nlines.png").write_bytes(b"not an image")
    return Spec(["predict", "-m", ctx.base["run"], "-i", folder, "-o", ctx.tmp / "out", "-q"], 1, r"two\\nlines\.png: unreadable image", "", [folder])


def trace_non_utf8_config(ctx: Ctx) -> Spec:
    cfg = ctx.tmp / "latin1.yaml"
    cfg.write_bytes("name: t\xe9st\n".encode("latin-1") + ctx.base["cfg"].read_bytes())
    return Spec(["train", "-c", cfg, "-o", ctx.tmp / "run", "-q"], 2, r"config file is not UTF-8 text", "latin1.yaml", [cfg])


def trace_rich_markup_in_path(ctx: Ctx) -> Spec:
    folder = ctx.tmp / "scans["
    folder.mkdir()
    return Spec(["predict", "-m", ctx.base["run"], "-i", folder / "]x.png", "-o", ctx.tmp / "out", "-q"], 2, r"scans\[/\]x\.png: input not found", "", [])


def trace_nifti_training_folder(ctx: Ctx) -> Spec:
    data = ctx.tmp / "volumes"
    rng = np.random.default_rng(1)
    for k in range(4):
        vol = rng.normal(size=(16, 16, 4)).astype(np.float32)
        write_volume(data / "images" / f"v{k}.nii.gz", vol, np.eye(4), dtype="float32")
        write_volume(data / "masks" / f"v{k}.nii.gz", (vol > 1).astype(np.uint8), np.eye(4), dtype="uint8")
    run = ctx.tmp / "run"

    def trained_in_2_5d() -> None:  # volumes with a 2D model are the 2.5D mode: planned, not refused
        assert (run / "plan.json").is_file() and '"volume"' in (run / "model.json").read_text()

    return Spec(["train", "-c", ctx.base["cfg"], "-o", run, "-q", f"data.root={data}", "data.folds=2"], 0, inputs=[data], check=trained_in_2_5d)


def _write_fault(kind: int, after: int = 0):
    """Fault injection: file creation fails with ``kind`` after ``after`` successful writes."""
    import tempfile

    real = tempfile.mkstemp
    count = {"n": 0}

    def failing(*args, **kwargs):
        count["n"] += 1
        if count["n"] > after:
            raise OSError(kind, os.strerror(kind), kwargs.get("dir") or (args[2] if len(args) > 2 else None))
        return real(*args, **kwargs)

    return lambda mp: mp.setattr(tempfile, "mkstemp", failing)


def fault_read_only_output(ctx: Ctx) -> Spec:
    def nothing() -> None:
        assert not (ctx.tmp / "out" / "masks").exists() or not any((ctx.tmp / "out" / "masks").iterdir())

    return Spec(["predict", "-m", ctx.base["run"], "-i", ctx.images(2), "-o", ctx.tmp / "out", "-q"], 2, r"cannot write \(Permission denied\)", "out", [ctx.tmp / "in"], nothing, _write_fault(errno.EACCES))


def fault_disk_full(ctx: Ctx) -> Spec:
    def whole_files_only() -> None:
        for p in (ctx.tmp / "out").rglob("*.png"):
            Image.open(p).load()  # every file that exists decodes completely

    return Spec(["predict", "-m", ctx.base["run"], "-i", ctx.images(3), "-o", ctx.tmp / "out", "-q"], 2, r"cannot write \(No space left on device\)", "img1", [ctx.tmp / "in"], whole_files_only, _write_fault(errno.ENOSPC, after=4))


def fault_disk_full_during_training(ctx: Ctx) -> Spec:
    return Spec(["train", "-c", ctx.base["cfg"], "-o", ctx.tmp / "run", "-q"], 2, r"cannot write \(No space left on device\)", "", [ctx.base["data"]], None, _write_fault(errno.ENOSPC, after=3))


def _output_is_a_file(command: str):
    def build(ctx: Ctx) -> Spec:
        target = ctx.tmp / "results.txt"
        target.write_text("my notes")
        args = {
            "predict": ["predict", "-m", ctx.base["run"], "-i", ctx.images(1), "-o", target, "-q"],
            "pseudo-label": ["pseudo-label", "-m", ctx.base["run"], "-i", ctx.images(1), "-o", target, "-q"],
            "evaluate": ["evaluate", "--pred", ctx.base["data"] / "edges", "--gt", ctx.base["data"], "--out", target],
            "train": ["train", "-c", ctx.base["cfg"], "-o", target, "-q"],
        }[command]
        return Spec(args, 2, r"output path is an existing file", "results.txt", [target, ctx.base["data"]])

    return build


def found_evaluate_same_folder(ctx: Ctx) -> Spec:
    _pred, gt = _eval_folders(ctx)
    return Spec(["evaluate", "--pred", gt, "--gt", gt, "--out", ctx.tmp / "out"], 2, r"prediction folder is the ground-truth folder", "gt", [gt])


def found_train_into_dataset(ctx: Ctx) -> Spec:
    data = ctx.copy_data()
    return Spec(["train", "-c", ctx.base["cfg"], "-o", data, "-q", f"data.root={data}"], 2, r"output folder is an input folder", "data", [data])


CASES: dict[str, Callable[[Ctx], Spec]] = {
    # security
    "pickle checkpoint in a run folder (predict)": security_pickle_predict,
    "pickle checkpoint via --checkpoint": security_pickle_checkpoint_option,
    "pickle checkpoint via train --resume": security_pickle_resume,
    "pickle checkpoint via model.json prior.run": security_pickle_prior_run,
    "config name escapes runs/": security_name_escapes_runs,
    "spreadsheet formulas in per_case.csv": security_csv_formula_evaluate,
    "spreadsheet formulas in confidence.csv": security_csv_formula_pseudo_label,
    "HTML in file names (report.html)": security_html_in_file_names,
    # data loss and overwrites
    "pseudo-label -o parent of -i": loss_pseudo_label_into_parent,
    "pseudo-label -i its own images/": loss_pseudo_label_own_images,
    "predict -o dataset root": loss_predict_into_dataset,
    "train -o folder with the user's files": loss_train_into_foreign_folder,
    "two trainings into one run folder": loss_concurrent_training,
    "inputs with the same stem": loss_same_stem_inputs,
    "data convert --overwrite into a pair list's masks": loss_convert_pair_list_into_destination,
    "data check --json onto the dataset's texts.json": loss_check_report_onto_dataset_file,
    # silent wrong results
    "16-bit PNG and TIFF": wrong_16_bit_images,
    "--resume with another --fold": wrong_resume_with_other_fold,
    "evaluate an overlays folder": wrong_evaluate_overlays_as_predictions,
    "evaluate an image folder as ground truth": wrong_evaluate_images_as_ground_truth,
    "evaluate NIfTI with a flipped affine": wrong_evaluate_flipped_nifti,
    "evaluate with most predictions missing": wrong_evaluate_missing_predictions,
    "evaluate killed between files": wrong_evaluate_outputs_one_unit,
    "pseudo-label a text run without text": wrong_pseudo_label_text_run_without_text,
    "training on a grey-level mask": wrong_training_on_grey_level_mask,
    "HU window low >= high": wrong_window_low_above_high,
    "negative --largest": wrong_negative_postprocessing,
    "--batch-size reaches volumes": wrong_batch_size_reaches_volumes,
    "NIfTI with zero voxel size": wrong_nifti_zero_voxel_size,
    "model.json std 0": _model_json_case(lambda d: d["preprocessing"].update(std=[0.0]), r"std must be > 0"),
    "model.json threshold 1.5": _model_json_case(lambda d: d.update(threshold=1.5), r"threshold must lie in \(0, 1\)"),
    "model.json wrong class count": _model_json_case(lambda d: d.update(num_classes=3, class_names=None), r"out_channels=1"),
    # tracebacks
    "decompression bomb in a batch": trace_decompression_bomb,
    "NIfTI with a singular affine": trace_singular_nifti_affine,
    "images with several frames or pages": trace_multi_frame_images,
    "symbolic link loop": trace_symlink_loop,
    "file name that is not UTF-8": trace_non_utf8_file_name,
    "newline in a file name": trace_newline_in_file_name,
    "config that is not UTF-8": trace_non_utf8_config,
    "unknown model name in a config": _train_case(["model.name=nosuch"], r"unknown model 'nosuch'"),
    "unknown model parameter in a config": _train_case(["model.params.bogus=1"], r"model\.params: .*unexpected keyword argument 'bogus'"),
    "impossible model parameter in a config": _train_case(["model.params.base_width=-2"], r"model\.params: .*negative dimension"),
    "size 0 in a config": _train_case(["preprocess.size=[0,0]"], r"preprocess\.size: size must be positive"),
    "std 0 in a config": _train_case(["preprocess.std=[0]"], r"preprocess\.std: every std must be > 0"),
    "mean per channel mismatch in a config": _train_case(["preprocess.mean=[0.1,0.2,0.3]"], r"mean has 3 values for 1 channel"),
    "threshold outside (0, 1) in a config": _train_case(["train.threshold=1.5"], r"train\.threshold"),
    "unknown monitor in a config": _train_case(["train.monitor=hd99"], r"unknown validation metric 'hd99'"),
    "checkpoint missing a weight": _checkpoint_case(_without_key, r"weights do not fit model 'unet' \(Missing key"),
    "checkpoint with a wrong shape": _checkpoint_case(_wrong_shape, r"weights do not fit model 'unet' \(size mismatch"),
    "checkpoint without model_state": _checkpoint_case(lambda c: {k: v for k, v in c.items() if k != "model_state"}, r"no model_state weights"),
    "checkpoint naming an unknown model": _checkpoint_case(lambda c: {**c, "model_spec": {"name": "zzz", "init_args": {}}}, r"names a model covseg cannot build"),
    "truncated checkpoint": _checkpoint_case(None, r"unreadable checkpoint", raw=b"PK\x03\x04" + b"\0" * 40),
    "model.json a list": _model_json_case(None, r"must be a JSON object", raw=b"[1, 2]"),
    "model.json corrupt": _model_json_case(None, r"corrupt JSON", raw=b'{"name": '),
    "model.json not UTF-8": _model_json_case(None, r"not UTF-8 text", raw='{"name": "unét"}'.encode("latin-1")),
    "model.json without name": _model_json_case(lambda d: d.pop("name"), r"name: Field required"),
    "model.json names another model": _model_json_case(lambda d: d.update(name="infnet"), r"names model 'infnet' but the checkpoint holds 'unet'"),
    "model.json channel count": _model_json_case(lambda d: d["preprocessing"].update(channels=3, mean=[0.5], std=[0.25]), r"3 input channel\(s\).*takes 1"),
    "model.json inferer parameters": _model_json_case(lambda d: d["inferer"].update(params={"size": "abc"}), r"inferer 'resize': bad params"),
    "model.json prior.run is itself": _model_json_case(lambda d: d.update(prior={"run": "."}), r"prior\.run points at this run folder itself"),
    "read-only output folder": fault_read_only_output,
    "disk full during predict": fault_disk_full,
    "disk full during training": fault_disk_full_during_training,
    "predict -o an existing file": _output_is_a_file("predict"),
    "pseudo-label -o an existing file": _output_is_a_file("pseudo-label"),
    "evaluate --out an existing file": _output_is_a_file("evaluate"),
    "train -o an existing file": _output_is_a_file("train"),
    "rich markup in a path": trace_rich_markup_in_path,
    "training on a folder of NIfTI volumes": trace_nifti_training_folder,
    # found on the way
    "evaluate with --pred the ground-truth folder": found_evaluate_same_folder,
    "train -o the dataset folder": found_train_into_dataset,
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_case(name, base, tmp_path, monkeypatch, capsys):
    from covseg.cli.main import main

    monkeypatch.chdir(tmp_path)
    spec = CASES[name](Ctx(tmp_path, base))
    before = _digest(spec.inputs)
    base_before = _digest([base["data"], base["run"]])
    if spec.patch is not None:
        spec.patch(monkeypatch)
    try:
        main([str(a) for a in spec.args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    monkeypatch.undo()
    captured = capsys.readouterr()
    err = captured.err + captured.out  # data convert reports on stdout
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert code == spec.code, err
    if spec.line:
        matching = [line for line in lines if re.search(spec.line, line)]
        assert matching, f"no line matches {spec.line!r}:\n{err}"
        assert any(spec.names in line for line in matching), f"the line does not name {spec.names!r}:\n{err}"
    if spec.code == 2:
        errors = [line for line in lines if line.startswith("error:")]
        assert len(errors) == 1, err
    assert _digest(spec.inputs) == before, "an input was modified"
    assert _digest([base["data"], base["run"]]) == base_before
    assert _leftovers(tmp_path) == []
    if spec.check is not None:
        spec.check()


def test_every_issue_class_has_a_case():
    """The README states this count; keep it honest."""
    assert len(CASES) >= 60
