"""Windows and per-level settings of generation (reference ``sample_level``/``get_starts``).

A level of ``T`` codes is covered by windows of ``n_ctx`` codes starting at
``range(0, T − n_ctx + hop, hop)``, ``hop = hop_fraction · n_ctx`` (0.125 at the top, 0.5 in
the upsamplers), the last one shifted to end exactly at ``T`` (:func:`window_starts`). Each
window keeps the codes already sampled inside it as a prefix and samples only the rest
(:func:`plan_windows`). Per-level settings (temperatures, hop fractions) are given as one value,
a mapping by level name or index, or a sequence top first (:func:`per_level`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from teacher.config import ConfigError
from teacher.levels import level_index

#: sampling temperatures (the Jukebox notebook: 0.98 at the top, 0.99 in the upsamplers)
DEFAULT_TEMPERATURE = {"top": 0.98, "upsampler": 0.99}
#: window hop as a fraction of n_ctx (reference ``hop_fraction``: [0.5, 0.5, 0.125])
DEFAULT_HOP_FRACTION = {"top": 0.125, "upsampler": 0.5}
#: positions per forward when re-priming a window (bounds activation memory at released sizes)
DEFAULT_CHUNK = 1024

PerLevel = float | Mapping[str | int, float] | Sequence[float] | None


def per_level(
    value: PerLevel, levels: int, defaults: Mapping[str, float] | None, what: str = "value"
) -> dict[int, float]:
    """One value, a mapping by level name/index, or a sequence top first -> level -> value;
    the levels not given take ``defaults["top"]``/``defaults["upsampler"]`` (None: 1.0)."""
    out = {
        lv: 1.0 if defaults is None else defaults["top" if lv == levels - 1 else "upsampler"]
        for lv in range(levels)
    }
    if value is None:
        return out
    if isinstance(value, int | float):
        return dict.fromkeys(out, float(value))
    if isinstance(value, Mapping):
        for k, v in value.items():
            out[level_index(k, levels)] = float(v)
        return out
    value = list(value)
    if len(value) != levels:
        raise ConfigError(f"{what}: give one value or {levels} (top first), got {value}")
    return {levels - 1 - i: float(v) for i, v in enumerate(value)}


def window_starts(total: int, n_ctx: int, hop: int) -> list[int]:
    """Starts of the windows covering ``total`` codes (reference ``get_starts``).

    ``range(0, total − n_ctx + hop, hop)``; the first start whose window reaches the end is
    moved to ``total − n_ctx`` so the last window ends exactly at the song's end. A song shorter
    than one window gives ``[0]`` (one partial window of ``total`` codes).
    """
    if total < 1 or n_ctx < 1 or not 1 <= hop <= n_ctx:
        raise ValueError(f"need total, n_ctx >= 1 and 1 <= hop <= n_ctx, got {total, n_ctx, hop}")
    if total <= n_ctx:
        return [0]
    starts = []
    for start in range(0, total - n_ctx + hop, hop):
        if start + n_ctx >= total:
            start = total - n_ctx
        starts.append(start)
    return starts


@dataclass(frozen=True)
class Window:
    """One window of one level, in codes of that level: ``[start, end)``, of which
    ``[start, start + n_kept)`` were already there (the prefix) and the rest is sampled."""

    level: int
    start: int
    end: int
    n_kept: int

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def n_new(self) -> int:
        return self.length - self.n_kept


def plan_windows(level: int, total: int, n_ctx: int, hop: int, have: int = 0) -> list[Window]:
    """The windows that sample codes ``have .. total-1`` of a level (those entirely inside
    the ``have`` codes already there are skipped, as the reference does)."""
    out = []
    for start in window_starts(total, n_ctx, hop):
        end = min(start + n_ctx, total)
        if have >= end:
            continue
        if have < start:  # cannot happen with hop <= n_ctx: windows overlap or touch
            raise AssertionError(f"gap before window {start} (have {have})")
        out.append(Window(level, start, end, have - start))
        have = end
    return out


__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_HOP_FRACTION",
    "DEFAULT_TEMPERATURE",
    "PerLevel",
    "Window",
    "per_level",
    "plan_windows",
    "window_starts",
]
