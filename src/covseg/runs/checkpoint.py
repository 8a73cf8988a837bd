"""Checkpoints: model name + init args + weights (enough to rebuild), plus optimiser state to resume.

A checkpoint holds plain types only (tensors, numbers, strings, lists, dicts), so it loads with
``torch.load(weights_only=True)``: a run folder copied from someone else cannot run code when
it is read. A file that needs full unpickling is refused with one line that says how to convert
a trusted one.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from covseg.errors import CovsegError
from covseg.utils.atomic import write_with

CONVERT_HINT = "python -m covseg.runs.checkpoint --convert-trusted FILE"


def plain(value: Any) -> Any:
    """``value`` with every non-plain scalar (torch's version string, numpy numbers) made plain."""
    import numpy as np

    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        import torch

        return torch.from_numpy(value)
    return value


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Save atomically: a kill during the write leaves the previous checkpoint intact."""
    import torch

    data = plain(payload)
    return write_with(path, lambda p: torch.save(data, p))


def _safe_globals() -> list[Any]:
    # Checkpoints of covseg <= 0.1 stored torch.__version__ itself, a str subclass with no code.
    from torch.torch_version import TorchVersion

    return [TorchVersion]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU with ``weights_only=True``; one line if missing, corrupt or unsafe."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CovsegError("checkpoint not found", path)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported operand" in str(exc) or "invalid load key" in str(exc):  # not a pickle at all: junk bytes
            raise CovsegError("unreadable checkpoint (not a PyTorch checkpoint: damaged or another kind of file)", path) from None
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CovsegError(
                "checkpoint needs full unpickling, which could run code; covseg loads weights only "
                f"(if you trust its author, convert it once: {CONVERT_HINT})",
                path,
            ) from None
        raise CovsegError(f"unreadable checkpoint ({type(exc).__name__})", path) from None
    except Exception as exc:
        raise CovsegError(f"unreadable checkpoint ({type(exc).__name__})", path) from None
    if not isinstance(ckpt, dict):
        raise CovsegError("not a covseg checkpoint (no state dictionary)", path)
    return ckpt


def checkpoint_model_spec(ckpt: dict[str, Any], path: str | Path | None = None, key: str = "model") -> dict[str, Any]:
    """``{"name", "init_args"}`` of a checkpoint, with a one-line error when it has none."""
    spec = ckpt.get(f"{key}_spec", ckpt.get("model_spec"))
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("init_args", {}), dict):
        raise CovsegError("not a covseg checkpoint (no model name and init args)", path)
    return spec


def model_from_checkpoint(ckpt: dict[str, Any], key: str = "model", path: str | Path | None = None):
    """Rebuild a registered model from a checkpoint's name, init args and weights."""
    from covseg.models import build_model

    spec = checkpoint_model_spec(ckpt, path, key)
    try:
        model = build_model(spec["name"], **spec.get("init_args", {}))
    except CovsegError as exc:  # an unknown model name
        raise CovsegError(f"checkpoint names a model covseg cannot build ({exc.problem})", path) from None
    except (TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CovsegError(f"cannot rebuild model {spec['name']!r} from the checkpoint: {first}", path) from None
    state = ckpt.get(f"{key}_state")
    if not isinstance(state, dict):
        raise CovsegError(f"checkpoint has no {key}_state weights", path)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        lines = str(exc).strip().splitlines()
        detail = lines[1].strip() if len(lines) > 1 else lines[0] if lines else "mismatch"
        if len(detail) > 200:  # a long list of missing keys: the first few are enough
            detail = detail[:200].rsplit(",", 1)[0] + ", …"
        raise CovsegError(f"checkpoint weights do not fit model {spec['name']!r} ({detail})", path) from None
    _refuse_non_finite(state, path)
    model.eval()
    return model


def _refuse_non_finite(state: dict[str, Any], path: str | Path | None) -> None:
    """One line when weights hold NaN or infinity: such a model predicts NaN, i.e. empty masks
    that would be reported as success."""
    import torch

    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()}
    bad = {k: n for k, n in bad.items() if n}
    if bad:
        first = next(iter(bad))
        more = f" and {len(bad) - 1} more tensor(s)" if len(bad) > 1 else ""
        raise CovsegError(f"checkpoint weights hold {sum(bad.values())} NaN or infinite value(s) (in {first!r}{more}); "
                          "the model would predict nothing", path)  # fmt: skip


def _convert_trusted(path: Path) -> None:
    """Rewrite a trusted old checkpoint with plain types only (this one call unpickles fully)."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=False)  # the user vouched for this file
    save_checkpoint(path, ckpt)
    load_checkpoint(path)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m covseg.runs.checkpoint")
    parser.add_argument("--convert-trusted", type=Path, required=True, metavar="FILE")
    args = parser.parse_args(argv)
    _convert_trusted(args.convert_trusted)
    print(f"{args.convert_trusted}: rewritten with plain types; it now loads with weights_only=True")


if __name__ == "__main__":
    main()
