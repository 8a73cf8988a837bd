"""Small builders shared by tests: phantom datasets and tiny training configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from covseg.data.synthetic import write_phantom_dataset


def phantom_dataset(root: Path, n: int = 20, size: int = 64, seed: int = 0) -> Path:
    """A phantom dataset in the generic folder layout (cached per path)."""
    if not (root / "images").exists():
        write_phantom_dataset(root, n=n, size=size, seed=seed)
    return root


def tiny_config(data_root: Path, size: int = 64, epochs: int = 2, **over: Any) -> dict[str, Any]:
    """A raw config dict for a fast CPU run of a small U-Net on phantoms."""
    cfg: dict[str, Any] = {
        "name": "tiny",
        "data": {"root": str(data_root), "folds": 4, "fold": 0},
        "preprocess": {"size": [size, size]},
        "model": {"name": "unet", "params": {"base_width": 8, "depth": 3}},
        "loss": {"main": "dice_bce"},
        "optim": {"lr": 3e-3},
        "train": {"epochs": epochs, "batch_size": 4, "threads": 1},
    }
    for key, value in over.items():
        node = cfg
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg


def run_cli(args: list) -> int:
    """Run ``covseg`` in-process with ``args``; its exit code (0 when it returned normally)."""
    from covseg.cli.main import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(server, port: int, timeout: float = 90.0) -> None:
    """Wait until the ``covseg app`` process ``server`` accepts connections on ``port``; fail the test,
    with the process's output, when it exits first or the time runs out."""
    import socket
    import time

    import pytest

    deadline = time.time() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if server.poll() is not None:
                output = server.communicate()[0]
                pytest.fail(f"covseg app did not start: {output.decode() if isinstance(output, bytes) else output}")
            if time.time() > deadline:
                pytest.fail("covseg app did not start: timeout")
            time.sleep(0.3)
