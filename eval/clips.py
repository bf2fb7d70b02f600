"""Held-out clips and the teacher's scores of their real windows (:mod:`eval.evaluate`).

:func:`load_clips` cuts ``n_clips`` deterministic mono crops (a :class:`Clip` each) from a data
folder; :class:`WindowLabels` rebuilds the label vector a prior saw in training for any window
of a clip; :func:`windowed_nll_bits` is a prior's NLL in bits/token of codes of any length, one
teacher-forced pass per :func:`score_windows` window.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from eval import metrics as M
from teacher.config import ConfigError
from teacher.data.labels import LabelConfig, Labeller, Vocab
from teacher.data.text import lyric_version
from teacher.prior.model import Prior

# ---------------------------------------------------------------------------------------------
# clips


@dataclass(frozen=True)
class Clip:
    """One held-out clip: ``offset`` samples into file ``file`` (``file_index`` in the scan)."""

    file: str
    file_index: int
    offset: int
    file_length: int
    artist: str | None
    genre: tuple[str, ...]
    lyrics: str
    words: tuple[dict[str, Any], ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The clip as ``metrics.json`` lists it (where it is cut from, artist and genres)."""
        out = {k: getattr(self, k) for k in ("file", "offset", "file_length", "artist")}
        return {**out, "genre": list(self.genre)}


def clip_length(jukebox: Any, seconds: float | None) -> int:
    """Clip length in samples: ``seconds`` rounded to whole top-level codes (at least one), or
    one top-prior window (``n_ctx`` top codes) when ``seconds`` is None."""
    hop = jukebox.hop_lengths[-1]
    if seconds is None:
        top = jukebox.priors.get(jukebox.levels - 1)
        n = top.cfg.n_ctx if top is not None else 16
        return n * hop
    if not seconds > 0:
        raise ConfigError(f"seconds must be positive, got {seconds}")
    return max(1, round(seconds * jukebox.sample_rate / hop)) * hop


def load_clips(
    data_dir: str | os.PathLike,
    sample_rate: int,
    length: int,
    n_clips: int,
    seed: int = 0,
    metadata: str | None = None,
) -> tuple[list[Clip], Tensor]:
    """``n_clips`` deterministic mono crops of ``length`` samples: ``(clips, Tensor[N, 1, T])``.

    Files are taken evenly over the sorted scan (cycling when there are fewer files than
    clips); clip ``i``'s offset is uniform inside its file by ``default_rng([seed, i])``, so the
    same folder and seed give the same clips on any machine. Stereo is averaged.
    """
    from teacher.data.dataset import AudioDataset, DataConfig, DataError, scan_audio

    if n_clips < 2:
        raise ConfigError(f"n_clips must be >= 2 (Fréchet distances need two), got {n_clips}")
    cfg = DataConfig(
        root=str(data_dir),
        metadata=metadata,
        sample_rate=sample_rate,
        sample_length=length,
        aug_blend=False,
        labels=LabelConfig(),
        cache="none",  # a few crops: seeking beats decoding every file into a cache
        seed=seed,
    )
    scan = scan_audio(cfg)
    if not scan.files:
        raise DataError(
            f"no usable audio of at least {length / sample_rate:.3f} s in {data_dir}: "
            f"{scan.summary()}"
        )
    ds = AudioDataset(cfg, scan=scan)
    n = len(ds.files)
    clips, audio = [], []
    for i in range(n_clips):
        fi = (i * n) // n_clips if n_clips <= n else i % n
        f = ds.files[fi]
        rng = np.random.default_rng([seed, i])
        offset = int(rng.integers(0, f.length - length + 1))
        crop = ds.crop(fi, offset)
        meta = f.meta
        clips.append(
            Clip(
                file=f.rel,
                file_index=fi,
                offset=offset,
                file_length=f.length,
                artist=meta.artist,
                genre=tuple(meta.genre),
                lyrics=meta.lyrics or "",
                words=meta.words,
            )
        )
        audio.append(crop["audio"])
    return clips, torch.stack(audio)


# ---------------------------------------------------------------------------------------------
# labels of real windows


class WindowLabels:
    """Label vectors of windows of real clips for one prior, as its training data made them
    (:class:`teacher.data.labels.Labeller`: timing from the clip's place in its file, the lyric
    window centred on the window's audio).

    Names unknown to the prior's vocabulary map to id 0 (``unknown``), as in training.
    """

    def __init__(self, prior: Prior, vocab: Vocab | None) -> None:
        cfg = prior.cfg
        self.prior = prior
        self.labelled = cfg.labels is not None
        self.hop = cfg.hop_length
        if not self.labelled:
            return
        version = lyric_version(cfg.lyrics.n_vocab) if cfg.n_tokens else None
        self.vocab = vocab or Vocab(version=version or "v3")
        self.labeller = Labeller(
            LabelConfig(
                max_genres=cfg.labels.max_genres,
                n_tokens=cfg.n_tokens,
                lyric_version=version or self.vocab.version,
            ),
            self.vocab,
        )
        self._lyrics: dict[tuple[str, int], tuple[list[int], np.ndarray | None]] = {}

    def __call__(self, clip: Clip, start: int, length: int) -> np.ndarray | None:
        """``int64[4 + G + n_tokens]`` for the window of ``length`` codes at code ``start`` of
        the clip (None for an unlabelled prior)."""
        if not self.labelled:
            return None
        key = (clip.file, clip.file_index)
        if key not in self._lyrics:
            self._lyrics[key] = self.labeller.encode_lyrics(clip.lyrics, clip.words)
        tokens, times = self._lyrics[key]
        y, _ = self.labeller.label(
            clip.file_length,
            clip.offset + start * self.hop,
            self.prior.cfg.sample_length,
            self.vocab.artist_id(clip.artist),
            self.vocab.genre_ids(list(clip.genre)),
            tokens,
            times,
            self.prior.cfg.sample_rate,
        )
        return y

    def batch(self, clips: Sequence[Clip], start: int, length: int) -> Tensor | None:
        rows = [self(c, start, length) for c in clips]
        if rows[0] is None:
            return None
        device = next(self.prior.parameters()).device
        return torch.as_tensor(np.stack(rows), device=device)


def score_windows(total: int, n_ctx: int, ratio: int = 1) -> list[tuple[int, int]]:
    """Non-overlapping ``[start, end)`` windows of at most ``n_ctx`` codes covering ``total``;
    the last one is pulled back to end at ``total`` (it then overlaps its neighbour). Starts
    stay multiples of ``ratio`` so the upper codes of a window are whole."""
    if total <= n_ctx:
        return [(0, total)]
    step = max(ratio, n_ctx // ratio * ratio)
    out = [(s, s + step) for s in range(0, total - step + 1, step)]
    if out[-1][1] < total:
        s = -(-(total - step) // ratio) * ratio
        out.append((s, total))
    return out


@torch.no_grad()
def windowed_nll_bits(
    prior: Prior,
    codes: Tensor,
    clips: Sequence[Clip],
    labels: WindowLabels,
    upper: Tensor | None = None,
) -> float:
    """Mean teacher NLL in bits/token of ``codes`` ``LongTensor[N, T]`` (any T): one
    teacher-forced pass per non-overlapping window of ``n_ctx`` codes, each with its own label
    and upper codes, averaged over windows and clips (each window starts cold, as in training).
    """
    cfg = prior.cfg
    r = cfg.upsample_ratio if cfg.is_upsampler else 1
    device = next(prior.parameters()).device
    vals = []
    for s, e in score_windows(codes.shape[1], cfg.n_ctx, r):
        up = None if upper is None else upper[:, s // r : -(-e // r)].to(device)
        y = labels.batch(clips, s, e - s)
        vals.append(M.teacher_nll_bits(prior, codes[:, s:e].to(device), y, up))
    return float(torch.stack(vals).mean())


__all__ = [
    "Clip",
    "WindowLabels",
    "clip_length",
    "load_clips",
    "score_windows",
    "windowed_nll_bits",
]
