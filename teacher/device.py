"""Where and in what precision models run: ``--device`` and ``--dtype`` of every command.

``auto`` picks CUDA when a CUDA device is present, else the CPU. Weights may be stored in any
floating dtype (OpenAI's 5b priors are partly fp16); they are cast to the requested one when a
model loads. Half precision computes layer norms, the softmax and the logits in fp32.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from teacher.config import ConfigError

#: ``--dtype`` names
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None): CUDA when present, else the CPU; otherwise ``torch.device(device)``
    (a CUDA device that is not there is a :class:`ConfigError`)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        out = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"--device {device!r}: {err}") from None
    if out.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is available here")
    return out


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """A ``--dtype`` name (or a torch dtype; None: float32) -> the torch dtype."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ConfigError(f"dtype {dtype} is not one of {sorted(DTYPES)}")
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices natively, several times faster than fp32: a
    CUDA device with bf16 support, or a CPU with AMX tiles (oneDNN's bf16 products; without
    them bf16 on a CPU is no faster than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return bool(probe and probe())
    return False


def idle_cpu_threads(load: float | None = None, cores: int | None = None) -> int:
    """CPU threads for torch that do not fight other jobs: the usable cores minus the 1-minute
    load average (``load``; default ``os.getloadavg()``), rounded, at least 1.

    A step of a small model is hundreds of tiny ops, each split over every OpenMP thread: when
    one thread's core is busy with another process, every op waits for it, and on a 2-core
    machine beside one training job the demo's sampling ran over 10x slower with 2 threads than
    with 1. ``cores``: default the cores this process may run on."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = max(1, int(cores or 1))
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (OSError, AttributeError):  # not available on this platform
            return cores
    return max(1, min(cores, cores - int(load + 0.5)))


def has_values(t: torch.Tensor) -> bool:
    """Whether ``t`` holds data the host can read: False for meta tensors and for the fake
    tensors of shape-only runs (:mod:`teacher.train.memory`, the distillation dry run), where
    checks of values (ids in range, ...) are skipped and only shapes are checked."""
    from torch._subclasses.fake_tensor import is_fake

    return t.device.type != "meta" and not is_fake(t)


def add_device_args(parser: Any) -> None:
    """``--device`` (default ``auto``) and ``--dtype`` (default ``float32``) of a command."""
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when present, else cpu), cpu, cuda, cuda:1 ..."
    )
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="float32",
        help="the priors' and students' precision (layer norms, softmax, logits stay fp32)",
    )


__all__ = [
    "DTYPES",
    "add_device_args",
    "has_values",
    "idle_cpu_threads",
    "native_bf16",
    "resolve_device",
    "resolve_dtype",
]
