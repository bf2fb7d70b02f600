"""Stratified random windows over a dataset's files, the sampling that
:class:`~teacher.data.dataset.AudioDataset` (crops of audio) and
:class:`~teacher.data.codes.CodeDataset` (windows of codes) share.

One epoch has ``len(dataset)`` items. The files' concatenated timeline (samples or tokens) is
cut into that many equal strata; item ``i`` draws its window's middle uniformly inside stratum
``i`` with ``numpy.random.default_rng([seed, epoch, i])`` (the same window on any rank or
worker), and the window is shifted to lie inside the file holding that middle. So a file is
picked with probability proportional to its length and an epoch covers the data evenly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from teacher.data.labels import Labeller


class StratifiedWindows:
    """Mixin of the two datasets: epochs, the stratified draw and per-file label inputs.

    A subclass sets, per usable file ``k``: ``_lengths`` (int64 ``[n_files]``, timeline units)
    and ``_ends`` (their cumulative sum), ``_artist``, ``_genres``, ``_tokens`` and ``_times``
    (:meth:`_set_lyrics` fills the last two); and ``labeller``, ``seed``, ``epoch``. It
    implements ``__len__`` and :meth:`_item_at`.
    """

    labeller: Labeller
    seed: int
    epoch: int
    _lengths: np.ndarray
    _ends: np.ndarray
    _artist: list[int]
    _genres: list[list[int]]
    _tokens: list[list[int]]
    _times: list[np.ndarray | None]

    def __len__(self) -> int:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Pick the windows of ``epoch`` (for DDP samplers and reproducible resumes; with
        persistent workers, call it before the epoch's iterator is created)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.item(index, self.epoch)

    def item(self, index: int, epoch: int) -> dict[str, Any]:
        """Item ``index`` of ``epoch`` (what ``self[index]`` gives after ``set_epoch(epoch)``)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        rng = np.random.default_rng([self.seed, epoch, index])
        k, offset = self.locate(index, float(rng.random()))
        out = self._item_at(k, offset, rng)
        out["index"] = index
        return out

    def locate(self, index: int, u: float) -> tuple[int, int]:
        """``(file k, offset)`` of item ``index`` for the uniform draw ``u ∈ [0, 1)``."""
        raise NotImplementedError

    def _item_at(self, k: int, offset: int, rng: np.random.Generator) -> dict[str, Any]:
        """The item's dict (without ``index``) for the window at ``offset`` of file ``k``;
        ``rng`` is the item's generator after the draw of its position."""
        raise NotImplementedError

    def _centred_window(self, index: int, u: float, length: int) -> tuple[int, int]:
        """``(file k, offset)`` of a window of ``length`` timeline units centred on the point
        ``u`` of stratum ``index``, shifted to lie inside file ``k``."""
        mid = (index + u) * float(self._ends[-1]) / len(self)
        k = min(int(np.searchsorted(self._ends, mid, side="right")), len(self._lengths) - 1)
        start = int(self._ends[k] - self._lengths[k])
        offset = int(round(mid - start - length / 2))
        return k, min(max(offset, 0), int(self._lengths[k]) - length)

    def _set_lyrics(self, songs: Sequence[tuple[str | None, Any]]) -> None:
        """``_tokens``/``_times`` of each file's ``(lyrics, words)`` (empty without lyrics in
        the label layout)."""
        self._tokens, self._times = [], []
        for lyrics, words in songs:
            if self.labeller.cfg.n_tokens > 0:
                tokens, times = self.labeller.encode_lyrics(lyrics, words)
            else:
                tokens, times = [], None
            self._tokens.append(tokens)
            self._times.append(times)

    def _label(
        self, k: int, total_length: int, offset: int, length: int, sample_rate: int
    ) -> tuple[np.ndarray, list[int]]:
        """:meth:`Labeller.label` of a window of file ``k`` (all in samples): the label vector
        and the lyric window's char indices."""
        return self.labeller.label(
            total_length,
            offset,
            length,
            self._artist[k],
            self._genres[k],
            self._tokens[k],
            self._times[k],
            sample_rate,
        )


__all__ = ["StratifiedWindows"]
