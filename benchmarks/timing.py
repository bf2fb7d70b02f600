"""The timing loop shared by the benchmark scripts.

A script run as ``python benchmarks/bench_x.py`` puts the repo root on ``sys.path`` first and then
imports this as ``benchmarks.timing``.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def seconds_per_call(fn: Callable[[int], object], budget_s: float, max_calls: int = 5000) -> float:
    """Mean wall seconds of ``fn(i)`` over about ``budget_s`` seconds: one untimed warm-up call
    ``fn(0)``, then calls ``fn(1), fn(2), ...`` until the budget is spent (at least 3 calls, at
    most ``max_calls``)."""
    fn(0)
    n, t0 = 0, time.perf_counter()
    while n < max_calls and (n < 3 or time.perf_counter() - t0 < budget_s):
        fn(n + 1)
        n += 1
    return (time.perf_counter() - t0) / n


__all__ = ["seconds_per_call"]
