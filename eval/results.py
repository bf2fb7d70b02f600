"""What an evaluation hands its report: :class:`EvalResult` and the figure inputs in it.

:func:`eval.evaluate.evaluate` fills an :class:`EvalResult` (numbers, audio, an
:class:`AttentionAlignment` and an :class:`EmbeddingMap`); :func:`eval.report.write_report`
renders it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class AttentionAlignment:
    """The top prior's lyric-to-music attention on one window.

    Attributes:
        probs: ``float32[n_tokens, T]``: row c, column t is the attention music position t pays
            to lyric character c (rows of the softmax restricted to lyric keys).
        chars: the window's characters (``·`` for padding), one per row.
        layer: the transformer layer it was read from.
        kind: ``"prime"`` (single-sequence lyrics) or ``"cross"`` (lyric encoder).
        heads: which heads (``"mean of H heads"`` or ``"head h"``).
        lyrics: the window's text.
    """

    probs: np.ndarray
    chars: list[str]
    layer: int
    kind: str
    heads: str
    lyrics: str = ""


@dataclass
class EmbeddingMap:
    """A 2-D map of learned label embeddings: ``xy float[N, 2]``, a name and a group
    (``"artist"``/``"genre"``) per point, and the method (t-SNE or PCA)."""

    xy: np.ndarray
    names: list[str]
    groups: list[str]
    method: str


@dataclass
class EvalResult:
    """Everything a report shows.

    Attributes:
        metrics: JSON-ready numbers (sections ``setup``, ``reconstruction``, ``top_prior``,
            ``upsampling``, ``bounds``, ``modes``, ``end_to_end``, ``notes``; see
            :func:`eval.evaluate.evaluate`).
        audio: name -> ``(sample_rate, float32[T])`` mono audio, in the order players show it.
        spectrograms: names in ``audio`` to draw spectrograms of, in order.
        attention: the lyric-to-music alignment, or None (no lyrics).
        embeddings: the artist/genre map, or None (unlabelled top prior).
        notes: sentences the report prints at the end (skipped modes, missing lyrics...).
        files: what :func:`write_report` wrote (filled in by it).
    """

    metrics: dict[str, Any]
    audio: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)
    spectrograms: list[str] = field(default_factory=list)
    attention: AttentionAlignment | None = None
    embeddings: EmbeddingMap | None = None
    notes: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


__all__ = ["AttentionAlignment", "EmbeddingMap", "EvalResult"]
