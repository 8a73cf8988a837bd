"""Trace which covseg modules ``config`` passes from ``covseg train`` to the first optimiser step.

Runs ``covseg train`` (1 epoch, a tiny U-Net on 16 phantom images of 32², in a temporary folder) under
``sys.setprofile`` and records every covseg function that is handed the training config: an
argument that is a config section (a pydantic model of :mod:`covseg.training.config` or its ``config_*`` section modules) or holds one
as ``.cfg`` (the trainer, a source context), the ``covseg train`` command and ``load_config``. The "current module"
follows calls and returns among those frames, counting each function's first call only (a loop
over cases counts once); consecutive repeats are merged. Tracing stops at the
first ``Optimizer.step``. Printed: the module sequence, the number of distinct modules, how often
``trainer.py`` is entered, and how many entries go back to a module already left.

Usage: ``PYTHONPATH=<src> python bench/trace_config_chain.py`` (point PYTHONPATH at an old
``src`` to trace that code; issue 26's docs/architecture.md holds both traces).
"""

from __future__ import annotations

import itertools
import sys
import tempfile
from pathlib import Path


def main() -> None:
    import yaml
    from pydantic import BaseModel

    from covseg.cli.main import main as cli
    from covseg.data.synthetic import write_phantom_dataset

    tmp = Path(tempfile.mkdtemp(prefix="covseg_trace_"))
    write_phantom_dataset(tmp / "data", n=16, size=32, seed=0)
    cfg = {
        "name": "trace",
        "data": {"root": str(tmp / "data"), "folds": 4, "fold": 0},
        "preprocess": {"size": [32, 32]},
        "model": {"name": "unet", "params": {"base_width": 8, "depth": 3}},
        "train": {"epochs": 1, "batch_size": 4, "threads": 1},
    }
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))

    stack: list[tuple[object, str, bool]] = []  # recorded frames, their module, first call of that function
    seen: set[object] = set()
    seq: list[str] = []
    done = [False]

    def is_config(v: object) -> bool:
        # the sections live in covseg.training.config and its config_* neighbours
        return isinstance(v, BaseModel) and type(v).__module__.startswith("covseg.training.config")

    def carries_config(frame) -> bool:
        name = frame.f_globals.get("__name__", "")
        code = frame.f_code
        if name == "covseg.cli.train_cmd" and code.co_name == "train":
            return True
        if name == "covseg.training.config" and code.co_name == "load_config":
            return True
        for arg in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]:
            v = frame.f_locals.get(arg)
            if is_config(v) or is_config(getattr(v, "cfg", None)):
                return True
        return False

    def note(module: str) -> None:
        if not seq or seq[-1] != module:
            seq.append(module)

    def profile(frame, event, arg):
        if done[0]:
            return
        if event == "call":
            if frame.f_code.co_name == "step" and "torch/optim" in frame.f_code.co_filename.replace(
                "\\", "/"
            ):
                done[0] = True
                return
            name = frame.f_globals.get("__name__", "")
            if name.startswith("covseg") and carries_config(frame):
                first = frame.f_code not in seen
                seen.add(frame.f_code)
                stack.append((frame, name, first))
                if first:
                    note(name)
        elif event == "return" and stack and stack[-1][0] is frame:
            _, _, first = stack.pop()
            if stack and first:
                note(stack[-1][1])

    sys.setprofile(profile)
    try:
        cli(["train", "-c", str(tmp / "cfg.yaml"), "-o", str(tmp / "run"), "-q"])
    except SystemExit:
        pass
    finally:
        sys.setprofile(None)
    short = [m.removeprefix("covseg.") for m in seq]
    left: set[str] = set()
    back = 0
    for prev, cur in itertools.pairwise(short):
        left.add(prev)
        back += cur in left
    print(" -> ".join(short))
    print(
        f"steps {len(short)}, distinct modules {len(set(short))}, trainer.py entered {short.count('training.trainer')} times, "
        f"entries back to a module already left {back}"
    )


if __name__ == "__main__":
    main()
