"""Where and how tensors run: device, mixed precision, processes (torchrun / DDP), the optimiser step.

- :func:`resolve_device`: ``auto`` (CUDA, else MPS, else CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``;
  a device that is not there is a one-line error naming what is (TotalSegmentator's pattern).
- :class:`Runtime`: the device, ``amp`` (``off`` | ``bf16`` | ``fp16``; fp16 with a ``GradScaler``
  that is unscaled before clipping and saved in the checkpoint), the process group when started
  by ``torchrun`` (rank, world size; NCCL on CUDA, gloo on CPU), and the one
  :meth:`Runtime.backward_step` every trainer uses.

Augmentation stays on CPU generators, so a CPU run is bit-exact whatever the device code does;
on a GPU, kernels (cuDNN, atomics in backward) make runs reproducible only approximately.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from covseg.engine.memory_format import to_channels_last
from covseg.errors import ConfigError
from covseg.utils.processes import peak_rss_mb as peak_rss_mb  # torch-free, re-exported
from covseg.utils.processes import torchrun_env as torchrun_env

AMP_MODES = ("off", "bf16", "fp16")


def available_devices() -> list[str]:
    """Device names this machine offers (``cpu`` always; ``cuda:N`` per GPU; ``mps`` on Apple silicon)."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def resolve_device(spec: str | None = "auto") -> torch.device:
    """The device ``spec`` names; an unavailable one is a ``ConfigError`` listing what is available."""
    spec = (spec or "auto").strip().lower()
    available = available_devices()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("mps" if "mps" in available else "cpu")
    if spec == "gpu":
        spec = "cuda"
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {spec!r} is not a device name (use auto, cpu, cuda, cuda:N or mps); available: {', '.join(available)}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r}: no CUDA GPU is available here; available: {', '.join(available)}")
        index = device.index if device.index is not None else int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count()
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {spec!r}: this machine has {torch.cuda.device_count()} GPU(s); available: {', '.join(available)}")
        return torch.device("cuda", index)
    if device.type == "mps":
        if "mps" not in available:
            raise ConfigError(f"device 'mps' is not available here; available: {', '.join(available)}")
        return device
    raise ConfigError(f"device {spec!r} is not supported (use auto, cpu, cuda, cuda:N or mps); available: {', '.join(available)}")


def amp_dtype(amp: str) -> torch.dtype | None:
    if amp not in AMP_MODES:
        raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


@dataclass
class Runtime:
    """Device, precision and process group of one training or prediction process."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: str = "off"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    compile: bool = False
    scaler: Any = None

    @classmethod
    def create(cls, device: str | None = "auto", amp: str = "off", compile: bool = False, distributed: bool | None = None) -> Runtime:
        """The runtime of this process; joins torchrun's process group when started by torchrun."""
        rank, world, local = torchrun_env()
        if distributed is None:
            distributed = world > 1
        if not distributed:
            rank, world, local = 0, 1, 0
        dev = resolve_device(device)
        if dev.type == "cuda" and world > 1 and (device or "auto") in ("auto", "cuda", "gpu"):
            dev = torch.device("cuda", local % torch.cuda.device_count())
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        amp_dtype(amp)
        if amp == "fp16" and dev.type == "mps":
            raise ConfigError("amp fp16 needs a CUDA or CPU device (MPS has no gradient scaler); use bf16 or off")
        rt = cls(device=dev, amp=amp, rank=rank, world_size=world, local_rank=local, compile=compile)
        if world > 1:
            rt._init_process_group()
        if amp == "fp16":
            rt.scaler = torch.amp.GradScaler(dev.type)
        return rt

    def _init_process_group(self) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend, rank=self.rank, world_size=self.world_size)

    # -- processes ------------------------------------------------------------------------------------
    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes files and logs."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def shard(self, items: Sequence[Any]) -> list[Any]:
        """This rank's share of ``items`` (every ``world_size``-th, from ``rank``)."""
        return list(items[self.rank :: self.world_size])

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.barrier()  # no rank tears the group down while another still uses it
                dist.destroy_process_group()

    # -- tensors ---------------------------------------------------------------------------------------
    def to_device(self, value: Any) -> Any:
        """Tensors (in dicts, lists, tuples) on the runtime's device; other values unchanged."""
        if isinstance(value, torch.Tensor):
            if value.device == self.device:
                return value
            non_blocking = self.device.type == "cuda" and value.is_pinned()
            return value.to(self.device, non_blocking=non_blocking)
        if isinstance(value, dict):
            return {k: self.to_device(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.to_device(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self.to_device(v) for v in value)
        return value

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward pass (a no-op with ``amp: off``)."""
        dtype = amp_dtype(self.amp)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def prepare_model(self, model: torch.nn.Module, channels_last: bool = True) -> torch.nn.Module:
        """A model on the device, in the memory format training and prediction use.

        Channels-last goes through :func:`~covseg.engine.memory_format.to_channels_last`, which
        keeps strided 1×1 convolutions off a oneDNN kernel that crashes in their backward pass.
        """
        model = model.to(self.device)
        if channels_last and getattr(model, "spatial_dims", 2) != 3:
            model = to_channels_last(model)
        return model

    def wrap_ddp(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` wrapped in DistributedDataParallel (unchanged in one process)."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)

    def maybe_compile(self, module: torch.nn.Module) -> torch.nn.Module:
        return torch.compile(module) if self.compile else module

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, clip_groups: Iterable[Iterable], max_norm: float | None) -> None:
        """The one optimiser step: zero, backward (scaled for fp16), unscale, clip per group, step."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if max_norm:
                self.scaler.unscale_(optimizer)
                for params in clip_groups:
                    torch.nn.utils.clip_grad_norm_(params, max_norm)
            self.scaler.step(optimizer)
            self.scaler.update()
            return
        loss.backward()
        if max_norm:
            for params in clip_groups:
                torch.nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.step()

    # -- memory ----------------------------------------------------------------------------------------
    def reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory_mb(self) -> float:
        """Peak GPU memory allocated since the last reset (CUDA), else the process's peak resident memory."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return peak_rss_mb()
