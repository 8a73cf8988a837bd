"""Which strided 1×1 convolutions crash oneDNN's channels-last weight gradient on this CPU.

Each case (input channels, stride, threads) runs in its own process with a time limit: a 1×1
convolution on NHWC tensors, forward and backward, its weight gradient compared with the NCHW
one. Every case runs twice: the plain ``nn.Conv2d`` and the model as covseg's
``Runtime.prepare_model`` returns it (``covseg.engine.memory_format``). Outcomes: ``ok`` (gradient
within 1e-4 relative), ``wrong`` (finished, gradient off), ``crash`` (signal), ``hang`` (killed
at the limit, 60 s; on a loaded machine a slow start can also reach it, so a ``hang`` in the
guarded column is re-run once).

Usage::

    python bench/bench_onednn_pointwise.py        # writes bench/results/runtime/onednn_pointwise.{json,md}
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cv_common import ROOT, machine

OUT = ROOT / "bench" / "results" / "runtime"
CASE = r"""
import sys, torch
from covseg.engine.runtime import Runtime
threads, ic, stride, guarded = (int(a) for a in sys.argv[1:5])
torch.set_num_threads(threads)
torch.manual_seed(0)
conv = torch.nn.Conv2d(ic, 8, 1, stride=stride, bias=False)
x = torch.randn(32, ic, 32, 32)
conv(x).square().sum().backward()
reference = conv.weight.grad.clone()
conv.weight.grad = None
model = Runtime().prepare_model(conv) if guarded else conv.to(memory_format=torch.channels_last)
model(x.contiguous(memory_format=torch.channels_last)).square().sum().backward()
err = ((model.weight.grad - reference).abs().max() / reference.abs().max()).item()
print("ok" if err < 1e-4 else "wrong")
"""


def run_case(threads: int, ic: int, stride: int, guarded: bool, limit: float = 60.0) -> str:
    cmd = [sys.executable, "-c", CASE, str(threads), str(ic), str(stride), str(int(guarded))]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env={"OMP_NUM_THREADS": str(threads), "PATH": ""})
    except subprocess.TimeoutExpired:
        return "hang"
    if proc.returncode != 0:
        return "crash" if proc.returncode < 0 or proc.returncode > 128 else f"error {proc.returncode}"
    return proc.stdout.strip().splitlines()[-1]


def main() -> None:
    import torch

    rows = []
    for threads in (1, 2):
        for stride in (1, 2):
            for ic in (1, 2, 4, 7, 8, 12, 16):
                row = {"threads": threads, "stride": stride, "in_channels": ic}
                row["plain"] = run_case(threads, ic, stride, False)
                row["covseg"] = run_case(threads, ic, stride, True)
                if row["covseg"] == "hang":  # a slow start on a loaded machine, or a real hang: look again
                    row["covseg"] = run_case(threads, ic, stride, True)
                print(row, flush=True)
                rows.append(row)
    result = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "rows": rows,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "onednn_pointwise.json").write_text(json.dumps(result, indent=1))
    bad = [r for r in rows if r["plain"] != "ok"]
    lines = [
        f"oneDNN strided 1×1 weight gradient, channels-last ({result['date']}, {result['machine']}, {result['cpu_capability']}, torch {result['torch']})",
        "",
        "| threads | stride | in channels | plain nn.Conv2d | covseg prepare_model |",
        "|---|---|---|---|---|",
        *(f"| {r['threads']} | {r['stride']} | {r['in_channels']} | {r['plain']} | {r['covseg']} |" for r in bad),
        "",
        f"All other {len(rows) - len(bad)} cases are ok in both columns; covseg failed in {sum(r['covseg'] != 'ok' for r in rows)} of {len(rows)}.",
    ]
    (OUT / "onednn_pointwise.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
