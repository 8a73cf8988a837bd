"""Run under ``torchrun --nproc_per_node 2`` by tests/engine/test_runtime.py (gloo on CPU).

``python -m torch.distributed.run --nproc_per_node 2 tests/ddp_script.py CONFIG.json RUN_DIR OUT_DIR [stop_after]``
trains the config into RUN_DIR; every rank saves its final weights to OUT_DIR/rank<r>.pt and the
files it wrote (through covseg's atomic writers) to OUT_DIR/writes<r>.json.
"""

from __future__ import annotations

import faulthandler
import gc
import json
import os
import signal
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
faulthandler.register(signal.SIGUSR1, all_threads=True)  # a test that kills a hung run sees where it hung


def main() -> None:
    cfg_path, run_dir, out_dir = (Path(a) for a in sys.argv[1:4])
    stop_after = int(sys.argv[4]) if len(sys.argv) > 4 else None
    rank = int(os.environ["RANK"])
    written: list[str] = []
    import covseg.utils.atomic as atomic

    real = atomic.write_with

    def spy(target, writer):
        written.append(str(target))
        return real(target, writer)

    atomic.write_with = spy
    from covseg.training.config import load_config
    from covseg.training.trainer import build_trainer

    cfg = load_config(raw=json.loads(cfg_path.read_text()))
    trainer = build_trainer(cfg, run_dir, resume=(run_dir / "checkpoints" / "last.pt").exists(), quiet=True)
    summary = trainer.fit(stop_after=stop_after)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}, out_dir / f"rank{rank}.pt")
    trainer.close()
    from torch.nn.parallel import DistributedDataParallel

    ddp_alive = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())  # none may outlive the group
    record = {"writes": written, "best": summary["best_metric"], "ddp_alive_after_close": ddp_alive}
    (out_dir / f"writes{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
