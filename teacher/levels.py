"""The levels of the hierarchy, named once: 0 is the bottom (hop 8 in Jukebox), the last the top.

A 3-level teacher folder names its priors ``bottom``, ``middle`` and ``top`` (OpenAI's
``prior_level_0/1/2``); any other depth uses ``level{i}`` below the top.
"""

from __future__ import annotations

from collections.abc import Sequence

from teacher.config import ConfigError

#: names of the levels of a 3-level model, by level index (0 = bottom)
LEVEL_NAMES = ("bottom", "middle", "top")


def level_name(level: int, levels: int) -> str:
    """``"top"``/``"middle"``/``"bottom"`` for a 3-level model, else ``"level{i}"`` (top: ``top``)."""
    if level == levels - 1:
        return "top"
    if levels == len(LEVEL_NAMES):
        return LEVEL_NAMES[level]
    return f"level{level}"


def level_index(level: str | int, levels: int) -> int:
    """A level given by name (``top``/``middle``/``bottom``) or index -> index (0 = bottom).

    Raises :class:`ConfigError` for an unknown name (listing the names this depth has) or an
    index outside ``[0, levels)``.
    """
    if isinstance(level, int) or (isinstance(level, str) and level.isdigit()):
        i = int(level)
    else:
        names = {level_name(i, levels): i for i in range(levels)}
        if levels > 1:
            names.setdefault("bottom", 0)
        if level not in names:
            hint = " ('middle' needs a 3-level VQ-VAE)" if level == "middle" else ""
            raise ConfigError(f"unknown level {level!r}; expected one of {sorted(names)}{hint}")
        i = names[level]
    if not 0 <= i < levels:
        raise ConfigError(f"level {i} outside [0, {levels - 1}]")
    return i


def hop_length(downs_t: Sequence[int], strides_t: Sequence[int], level: int) -> int:
    """Audio samples per code at ``level``: the product of ``stride ** down`` over levels
    ``0..level`` (Jukebox ``raw_to_tokens``; 8, 32, 128 for the released VQ-VAE)."""
    acc = 1
    for s, d in zip(strides_t[: level + 1], downs_t[: level + 1]):
        acc *= s**d
    return acc


__all__ = ["LEVEL_NAMES", "hop_length", "level_index", "level_name"]
