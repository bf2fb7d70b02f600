"""teacher.device: --device / --dtype resolution and the CPU threads that do not fight other jobs."""

from __future__ import annotations

import pytest
import torch

from teacher.config import ConfigError
from teacher.device import idle_cpu_threads, native_bf16, resolve_device, resolve_dtype


@pytest.mark.parametrize(
    ("load", "cores", "want"),
    [(0.0, 2, 2), (0.4, 2, 2), (0.6, 2, 1), (1.0, 2, 1), (3.0, 2, 1), (2.2, 8, 6), (0.0, 1, 1)],
)
def test_idle_cpu_threads_leaves_the_busy_cores_alone(load, cores, want):
    assert idle_cpu_threads(load=load, cores=cores) == want


def test_idle_cpu_threads_reads_this_machine():
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= idle_cpu_threads() <= cores


def test_device_and_dtype_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype(None) is torch.float32
    with pytest.raises(ConfigError, match="--dtype"):
        resolve_dtype("float8")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")


def test_native_bf16_follows_the_cpus_amx_tiles(monkeypatch):
    """bf16 products are 'native' on a CPU only with AMX tiles (oneDNN's bf16 kernels; without
    them bf16 is no faster than fp32), never on the meta device."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert native_bf16(torch.device("cpu")) is True
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert native_bf16(torch.device("cpu")) is False
    assert native_bf16(torch.device("meta")) is False
