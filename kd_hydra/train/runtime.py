"""Where and how tensors are computed: device, autocast precision, memory format, compile, CPU threads."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace

import torch
from torch import nn

from kd_hydra.enums import Precision
from kd_hydra.errors import ConfigError

#: Devices where ``trainer.channels_last=null`` means on: CUDA, and the CPU, where it made the training step of
#: every zoo model 1.13-1.63x faster (benchmarks/cpu_defaults.py, benchmarks/README.md).
CHANNELS_LAST_DEVICES = ("cuda", "cpu")


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors are computed: device, autocast dtype (None = fp32), memory format."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool
    compile: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device and memory format of this runtime."""
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit accelerator must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.device", f"'{name}' requested but no CUDA device is available; use auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device", "'mps' requested but MPS is not available; use auto or cpu")
    return torch.device(name)


def resolve_runtime(device: str, precision: str, channels_last: bool | None, compile: bool) -> Runtime:
    """Turn trainer settings into a :class:`Runtime`; fp16 needs CUDA, ``auto`` means bf16 on CUDA."""
    resolved = resolve_device(device)
    chosen = Precision(precision)
    on_cuda = resolved.type == "cuda"
    if chosen is Precision.auto:
        chosen = Precision.bf16 if on_cuda and torch.cuda.is_bf16_supported() else Precision.fp32
    if chosen is Precision.fp16 and not on_cuda:
        raise ConfigError("trainer.precision", f"fp16 needs a CUDA device (device is {resolved}); use bf16 or fp32")
    dtype = {Precision.fp32: None, Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}[chosen]
    return Runtime(
        device=resolved,
        autocast_dtype=dtype,
        channels_last=resolved.type in CHANNELS_LAST_DEVICES if channels_last is None else bool(channels_last),
        compile=compile,
    )


def spread_over_gpus(device: torch.device, job: int, visible: int) -> torch.device:
    """The GPU of job number ``job`` when jobs started at once share ``visible`` GPUs (submitit's local executor):
    ``cuda:(job mod visible)`` for an unindexed CUDA device, else ``device`` itself."""
    if device.type != "cuda" or device.index is not None or visible <= 1:
        return device
    return torch.device("cuda", job % visible)


def with_precision(runtime: Runtime, precision: str) -> Runtime:
    """The same runtime with another precision (a teacher's own recipe may ask for one)."""
    resolved = resolve_runtime(str(runtime.device), precision, runtime.channels_last, runtime.compile)
    return replace(runtime, autocast_dtype=resolved.autocast_dtype)


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a container's or ``taskset``'s share), else all."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def configure_threads(num_threads: int | None, parallel_jobs: int = 1) -> int:
    """Use ``num_threads`` CPU threads, or the usable cores shared by ``parallel_jobs`` jobs when None.

    The default (``trainer.num_threads: 1``, conf/trainer/default.yaml) is one thread: several threads collapse
    when another process holds a core (each step waits for its slowest thread; benchmarks/busy_cores.py), and
    the thread count changes float summation order, so results depend on it (it is part of a run's identity).
    """
    if num_threads is None:
        num_threads = max(1, usable_cores() // max(1, parallel_jobs))
    torch.set_num_threads(num_threads)
    return num_threads
