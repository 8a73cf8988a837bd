"""Issue 29's `torch.compile` lever, measured: inductor on the CPU against eager PyTorch.

On the shipped ``covid-ct-infection`` network (torch engine, 256², fp32, ``--threads`` threads):
prediction at batch 1 and batch 8 (beside the default engine, onnxruntime where installed), and one training step (forward, loss, backward, AdamW step) at
batch 8; the compile's own CPU time (this process and its compile workers) and wall time; the
largest difference of the compiled outputs from eager's. Eager and compiled steps are interleaved
round by round so that the machine's load falls on both alike.

    python bench/bench_compile.py                  # writes bench/results/speed/compile-<date>.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (inductor compiles in workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, rounds: int) -> list[tuple[float, float]]:
    out = []
    for _ in range(rounds):
        w, c = time.perf_counter(), time.process_time()
        fn()
        out.append((time.perf_counter() - w, time.process_time() - c))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default="covid-ct-infection")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "speed")
    args = parser.parse_args()
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(args.threads))

    import torch

    from covseg.inference.predictor import Predictor

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    predictor = Predictor.from_run(args.model, device="cpu", engine="torch")
    network = predictor.segmenter.model.eval()
    exported = Predictor.from_run(args.model, device="cpu").segmenter.model  # the default engine (onnxruntime when installed)
    result_engine = type(exported).__name__ + (f" ({exported.engine})" if hasattr(exported, "engine") else "")
    size = tuple(predictor.segmenter.preprocessing.size)
    x1, x8 = torch.randn(1, 1, *size), torch.randn(8, 1, *size)

    def first(out):
        return out if torch.is_tensor(out) else (out["logits"] if isinstance(out, dict) else out[0])

    result: dict = {"date": datetime.date.today().isoformat(), "model": args.model, "size": size, "threads": args.threads,
                    "torch": torch.__version__, "load_before": os.getloadavg(), "default_engine": result_engine}

    # prediction
    compiled = torch.compile(network)
    with torch.inference_mode():
        w, c = time.perf_counter(), cpu_seconds()
        y_c1 = first(compiled(x1))
        result["compile_predict_b1"] = {"wall_s": time.perf_counter() - w, "cpu_s": cpu_seconds() - c}
        w, c = time.perf_counter(), cpu_seconds()
        y_c8 = first(compiled(x8))
        result["compile_predict_b8"] = {"wall_s": time.perf_counter() - w, "cpu_s": cpu_seconds() - c}
        y_e1, y_e8 = first(network(x1)), first(network(x8))
        result["max_abs_diff_logits"] = max(float((y_c1 - y_e1).abs().max()), float((y_c8 - y_e8).abs().max()))
        result["max_abs_diff_logits_default_engine"] = float((first(exported(x8)) - y_e8).abs().max())
        rows = {f"{k}_{b}": [] for b in ("b1", "b8") for k in ("eager", "compiled", "default_engine")}
        for _ in range(args.rounds):
            for batch, x in (("b1", x1), ("b8", x8)):
                rows[f"eager_{batch}"] += timed(lambda x=x: network(x), 1)
                rows[f"compiled_{batch}"] += timed(lambda x=x: compiled(x), 1)
                rows[f"default_engine_{batch}"] += timed(lambda x=x: exported(x), 1)
    per_slice = {k: {"wall_s": sorted(w for w, _ in v)[len(v) // 2] / (8 if k.endswith("b8") else 1),
                     "cpu_s": sorted(c for _, c in v)[len(v) // 2] / (8 if k.endswith("b8") else 1)} for k, v in rows.items()}
    result["predict_per_slice_median"] = per_slice

    # training step
    train_net = network.train()
    target = (torch.rand(8, 1, *size) > 0.8).float()

    def step_fn(model, opt):
        def step():
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(first(model(x8)), target)
            loss.backward()
            opt.step()
        return step

    eager_opt = torch.optim.AdamW(train_net.parameters(), lr=1e-5)
    compiled_train = torch.compile(train_net)
    compiled_opt = torch.optim.AdamW(train_net.parameters(), lr=1e-5)
    w, c = time.perf_counter(), cpu_seconds()
    step_fn(compiled_train, compiled_opt)()
    result["compile_train_b8"] = {"wall_s": time.perf_counter() - w, "cpu_s": cpu_seconds() - c}
    trows = {"eager": timed(step_fn(train_net, eager_opt), args.rounds), "compiled": []}
    trows["compiled"] = timed(step_fn(compiled_train, compiled_opt), args.rounds)
    result["train_step_b8_median"] = {k: {"wall_s": sorted(w for w, _ in v)[len(v) // 2], "cpu_s": sorted(c for _, c in v)[len(v) // 2]}
                                      for k, v in trows.items()}
    result["load_after"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"compile-{result['date']}.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
