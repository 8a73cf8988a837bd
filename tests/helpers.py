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


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children first), read from /proc; torchrun starts its workers in
    sessions of their own, so killing its process group leaves them running and holding its pipes."""
    children: dict[int, list[int]] = {}
    for proc_dir in Path("/proc").glob("[0-9]*"):
        fields = _stat_fields(int(proc_dir.name))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(proc_dir.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def run_with_deadline(
    cmd: list[str], timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None
):
    """Run ``cmd`` with its output in files (no pipe a stray grandchild can hold open); past ``timeout``
    every process below it first gets SIGUSR1 (a script that registered ``faulthandler`` on it prints
    its threads' stacks), then all are killed. Returns ``(returncode or None when killed, stdout, stderr)``."""
    import signal
    import subprocess
    import tempfile
    import time

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=err, text=True, env=env, cwd=cwd, start_new_session=True
        )
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
            tree = descendants(proc.pid)
            for pid in tree:
                _signal(pid, signal.SIGUSR1)
            time.sleep(3)
            for pid in [proc.pid, *tree]:
                _signal(pid, signal.SIGKILL)
            proc.wait(timeout=30)
            _wait_gone(tree, timeout=30)  # a killed process runs on until the kernel has torn it down
        out.seek(0)
        err.seek(0)
        return code, out.read(), err.read()


def _wait_gone(pids: list[int], timeout: float) -> None:
    """Wait until none of ``pids`` runs any more (gone, or a zombie waiting for init to reap it)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(process_running(pid) for pid in pids):
            return
        time.sleep(0.05)
    raise TimeoutError(f"processes {pids} still run {timeout:.0f} s after SIGKILL")


def process_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] != "Z"


def _stat_fields(pid: int) -> list[str]:
    """``/proc/PID/stat`` after the command name (state, parent pid, ...); empty once the process is gone."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError, ValueError):
        return []


def _signal(pid: int, sig: int) -> None:
    import contextlib
    import os

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


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
