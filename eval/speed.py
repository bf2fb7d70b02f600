"""Speed of each sampling stage and what it means end to end (DESIGN §1, §6).

* :class:`StageTimer` (a context manager) and :func:`measure` (calls a function) time one stage
  and give a :class:`StageSpeed`: wall seconds, real-time factor, tokens/s and peak memory.
* :func:`amdahl_speedup` / :func:`amdahl_bound`: the end-to-end speedup that per-stage speedups
  buy, and its limit when the distilled stages cost nothing (Amdahl 1967). Free upsampling still
  leaves the top prior, so reports show the bound beside the measured speedup.
* :func:`machine_info` and :func:`config_hash` for report headers (machine, versions, configs).

Peak memory. On CUDA it is ``torch.cuda.max_memory_allocated`` after a reset of the peak
statistics: the most memory held by tensors during the stage, weights included (not the
allocator's reserved pool). On the CPU there is no allocator statistic, so a daemon thread samples
the resident set size (``VmRSS`` in ``/proc/self/status``, Linux) every ``interval_s`` while the
stage runs, and the result is the peak RSS minus the RSS at the start: memory the stage added.
Sampling misses spikes shorter than the interval (default 2 ms) and counts memory other
threads allocate meanwhile; we chose it over ``resource.getrusage().ru_maxrss``, which is the
process's lifetime high-water mark and reads 0 for any stage that stays below an earlier peak.
Without ``/proc`` (not Linux) CPU memory reads as ``None``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

_PROC_STATUS = "/proc/self/status"

# packages whose versions a report header names
REPORT_PACKAGES = (
    "torch",
    "numpy",
    "scipy",
    "transformers",
    "accelerate",
    "einops",
    "safetensors",
    "auraloss",
    "librosa",
    "fastjukebox",
)


@dataclass(frozen=True)
class StageSpeed:
    """Speed of one stage.

    Attributes:
        wall_s: wall-clock seconds (device synchronised before and after on CUDA).
        rtf: real-time factor as audio seconds produced per wall second — HIGHER is faster;
            > 1 means faster than real time (the inverse of the "compute time / audio time"
            convention some papers use). ``None`` without ``audio_seconds``.
        tokens_per_s: codes produced per wall second (every item of the batch counts);
            ``None`` without ``tokens``.
        peak_mem_bytes: CUDA: peak bytes held by tensors during the stage; CPU: peak RSS added
            during the stage (see the module notes); ``None`` where it cannot be measured.
        mem_source: ``"cuda_max_allocated"``, ``"cpu_rss_delta"`` or ``"none"``.
        name: the stage's name, for reports.
    """

    wall_s: float
    rtf: float | None = None
    tokens_per_s: float | None = None
    peak_mem_bytes: int | None = None
    mem_source: str = "none"
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _read_rss_bytes() -> int | None:
    """Resident set size of this process in bytes (``VmRSS``), or None without ``/proc``."""
    try:
        with open(_PROC_STATUS) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


class _RSSSampler:
    """A daemon thread that keeps the highest ``VmRSS`` seen until :meth:`stop`."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.start_rss = _read_rss_bytes()
        self.peak = self.start_rss
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.start_rss is not None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
            self._thread.start()

    def _sample(self) -> None:
        rss = _read_rss_bytes()
        if rss is not None and (self.peak is None or rss > self.peak):
            self.peak = rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def stop(self) -> int | None:
        """Stop sampling; peak RSS added since the start, in bytes (None without /proc)."""
        self._sample()  # the stage's final state, which a slow sampler may not have seen
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.start_rss is None or self.peak is None:
            return None
        return max(self.peak - self.start_rss, 0)


def _as_device(device: torch.device | str | None) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


class StageTimer:
    """Time a block of code as one stage::

        with StageTimer("bottom upsampler", tokens=b * t, audio_seconds=secs, device=dev) as st:
            codes = sample(...)
        st.result  # StageSpeed

    ``tokens`` and ``audio_seconds`` may also be set on the timer inside the block (when they
    are known only afterwards). ``device``: where the stage runs (``None`` = CPU); on CUDA the
    device is synchronised at both ends, so queued kernels are counted.
    """

    def __init__(
        self,
        name: str = "",
        *,
        tokens: int | None = None,
        audio_seconds: float | None = None,
        device: torch.device | str | None = None,
        interval_s: float = 0.002,
    ) -> None:
        self.name = name
        self.tokens = tokens
        self.audio_seconds = audio_seconds
        self.device = _as_device(device)
        self.interval_s = interval_s
        self.result: StageSpeed | None = None
        self._sampler: _RSSSampler | None = None
        self._t0 = 0.0

    def __enter__(self) -> StageTimer:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._sampler = _RSSSampler(self.interval_s)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        wall = time.perf_counter() - self._t0
        if self.device.type == "cuda":
            peak, source = int(torch.cuda.max_memory_allocated(self.device)), "cuda_max_allocated"
        else:
            peak = self._sampler.stop() if self._sampler is not None else None
            source = "cpu_rss_delta" if peak is not None else "none"
        self.result = _speed(wall, self.tokens, self.audio_seconds, peak, source, self.name)


def _speed(
    wall: float,
    tokens: int | None,
    audio_seconds: float | None,
    peak: int | None,
    source: str,
    name: str,
) -> StageSpeed:
    wall_pos = max(wall, 1e-12)  # a zero-length stage must not divide by zero
    return StageSpeed(
        wall_s=wall,
        rtf=None if audio_seconds is None else audio_seconds / wall_pos,
        tokens_per_s=None if tokens is None else tokens / wall_pos,
        peak_mem_bytes=peak,
        mem_source=source,
        name=name,
    )


def measure(
    fn: Callable[[], Any],
    *,
    tokens: int | None = None,
    audio_seconds: float | None = None,
    device: torch.device | str | None = None,
    warmup: int = 0,
    repeats: int = 1,
    name: str = "",
) -> StageSpeed:
    """Run ``fn()`` ``warmup`` times untimed, then ``repeats`` times timed, and report the
    MEDIAN wall time (rtf and tokens/s from it) and the largest peak memory.

    Args:
        fn: the stage, no arguments (bind them with ``functools.partial`` or a lambda).
        tokens: codes one call produces (batch included), for tokens/s.
        audio_seconds: seconds of audio one call covers, for the real-time factor.
        device: where ``fn`` runs (``None`` = CPU); CUDA is synchronised around each call.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("need repeats >= 1 and warmup >= 0")
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        with StageTimer(name, device=device) as st:
            fn()
        runs.append(st.result)
    wall = statistics.median(r.wall_s for r in runs)
    peaks = [r.peak_mem_bytes for r in runs if r.peak_mem_bytes is not None]
    return _speed(
        wall, tokens, audio_seconds, max(peaks) if peaks else None, runs[0].mem_source, name
    )


# ---------------------------------------------------------------------------------------------
# Amdahl


def _check_times(stage_times: Mapping[str, float], names: Iterable[str]) -> float:
    unknown = sorted(set(names) - set(stage_times))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; stages are {sorted(stage_times)}")
    if any(t < 0 for t in stage_times.values()):
        raise ValueError("stage times must be non-negative")
    total = float(sum(stage_times.values()))
    if total <= 0:
        raise ValueError("the stages take no time at all")
    return total


def amdahl_speedup(stage_times: Mapping[str, float], speedups: Mapping[str, float]) -> float:
    """End-to-end speedup when stage ``i`` becomes ``speedups[i]`` times faster (Amdahl's law):

        ``T_total / (T_unchanged + Σ_i T_i / s_i)``.

    E.g. top 1 s, middle 4 s, bottom 5 s, both upsamplers 10x faster: ``10 / (1 + 0.9)`` = 5.26x.

    Args:
        stage_times: seconds per stage of the baseline (e.g. exact sampling).
        speedups: per sped-up stage its factor (> 0); stages not named keep their time.
    """
    total = _check_times(stage_times, speedups)
    if any(s <= 0 for s in speedups.values()):
        raise ValueError("speedups must be positive")
    new = sum(t / speedups.get(k, 1.0) for k, t in stage_times.items())
    return total / new if new > 0 else float("inf")


def amdahl_bound(stage_times: Mapping[str, float], distilled: Iterable[str]) -> float:
    """The limit of :func:`amdahl_speedup` when the ``distilled`` stages take no time:
    ``T_total / T_rest`` (``inf`` when every stage is distilled). With top 1 s, middle 4 s,
    bottom 5 s and both upsamplers distilled: 10x, however fast the students."""
    distilled = set(distilled)
    total = _check_times(stage_times, distilled)
    rest = sum(t for k, t in stage_times.items() if k not in distilled)
    return total / rest if rest > 0 else float("inf")


# ---------------------------------------------------------------------------------------------
# report headers


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """What a benchmark ran on: CPU model, cores (all and usable), memory, torch threads, OS,
    Python and package versions (:data:`REPORT_PACKAGES`; ``None`` when not installed) and the
    device's name (``torch.cuda.get_device_name`` on CUDA, else the CPU model)."""
    dev = _as_device(device)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "mem_total_bytes": _mem_total_bytes(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {p: _version(p) for p in REPORT_PACKAGES},
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "device": str(dev),
    }
    if dev.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(dev)
        info["device_mem_bytes"] = torch.cuda.get_device_properties(dev).total_memory
    else:
        info["device_name"] = info["cpu"]
    return info


def config_hash(obj: Any) -> str:
    """Stable SHA-256 (hex) of a config dataclass (nested ones too) or a JSON-ready mapping:
    the class name plus its fields as canonical JSON (sorted keys, tuples as lists). Equal
    configs hash equal across processes and machines; quote the first 12 characters."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        payload: Any = {"_class": type(obj).__name__, **dataclasses.asdict(obj)}
    elif isinstance(obj, Mapping):
        payload = dict(obj)
    else:
        raise TypeError(f"config_hash needs a dataclass instance or a mapping, got {type(obj)}")
    # default=str: paths and enums hash by their text
    text = json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()


__all__ = [
    "REPORT_PACKAGES",
    "StageSpeed",
    "StageTimer",
    "amdahl_bound",
    "amdahl_speedup",
    "config_hash",
    "machine_info",
    "measure",
]
