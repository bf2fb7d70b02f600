"""The label vector of every window of a song: artist, genres, timing and the lyric window.

Names are mapped to the ids of each prior's own vocabulary (an unknown name is one error with
close matches, :func:`resolve_names`); the label vector is rebuilt per window as in training:
``offset = start · hop_length`` samples, ``length`` = the window's ``sample_length``,
``total_length`` = the song, and the lyric window centred on the middle of the audio the window
covers (by word timings when given, else linear).
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from teacher.config import ConfigError
from teacher.data.labels import UNKNOWN, VOCAB_FILE, Vocab, char_times, lyric_window, make_label
from teacher.data.text import LyricTokenizer, TextStats, genre_words, lyric_version, normalize_name
from teacher.generate.windows import Window
from teacher.levels import level_name
from teacher.prior.model import Prior

log = logging.getLogger(__name__)


@dataclass
class WindowLabel:
    """The label a window was sampled with, and what it says in words.

    ``label`` is the int64 vector (``[total_length, offset, length, artist, genres…, lyric
    tokens…]``, samples) or None for an unlabelled prior; ``lyric_indices`` the window's
    positions in the cleaned lyrics (-1 = padding); ``lyrics`` the window decoded.
    """

    level: int
    start: int
    end: int
    n_new: int
    label: list[int] | None
    artist: str = UNKNOWN
    genres: list[str] = field(default_factory=list)
    lyrics: str = ""
    lyric_indices: list[int] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def n_kept(self) -> int:
        """Codes of the window that were already there (its prefix)."""
        return self.length - self.n_new

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "start": self.start,
            "end": self.end,
            "n_new": self.n_new,
            "label": self.label,
            "artist": self.artist,
            "genres": self.genres,
            "lyrics": self.lyrics,
            "lyric_indices": self.lyric_indices,
        }


class LevelLabels:
    """Builds the label vectors of one prior's windows for one song."""

    def __init__(
        self,
        prior: Prior,
        vocab: Vocab | None,
        artist_id: int,
        genre_ids: list[int],
        lyrics: str,
        words: Sequence[Mapping[str, Any]] | None,
    ) -> None:
        cfg = prior.cfg
        self.cfg = cfg
        self.prior = prior
        self.vocab = vocab
        self.labelled = cfg.labels is not None
        self.artist_id = artist_id
        self.genre_ids = genre_ids[: cfg.labels.max_genres] if self.labelled else []
        self.tokenizer = None
        self.tokens: list[int] = []
        self.times: np.ndarray | None = None
        if cfg.n_tokens:
            version = lyric_version(cfg.lyrics.n_vocab)
            self.tokenizer = LyricTokenizer(version)
            text = self.tokenizer.clean(lyrics or "")
            self.tokens = self.tokenizer.encode(text, clean=False)
            if words:
                self.times = char_times(text, words, clean=self.tokenizer.clean)

    def label(self, total_samples: int, window: Window) -> tuple[np.ndarray | None, list[int]]:
        """Label vector ``int64[4 + G + n_tokens]`` of ``window`` and its lyric indices."""
        if not self.labelled:
            return None, []
        cfg = self.cfg
        hop = cfg.hop_length
        offset = window.start * hop
        span = window.length * hop  # the audio this window really covers (centres the lyrics)
        tokens, idx = lyric_window(
            self.tokens, cfg.n_tokens, total_samples, offset, span, self.times, cfg.sample_rate
        )
        y = make_label(
            total_samples,
            offset,
            cfg.sample_length,
            self.artist_id,
            self.genre_ids,
            tokens,
            max_genres=cfg.labels.max_genres,
        )
        return y, idx

    def describe(self, window: Window, y: np.ndarray | None, idx: list[int]) -> WindowLabel:
        out = WindowLabel(
            window.level,
            window.start,
            window.end,
            window.n_new,
            None if y is None else [int(v) for v in y],
        )
        if y is None:
            return out
        if self.vocab is not None:
            out.artist = self.vocab.artist_name(self.artist_id)
            out.genres = [self.vocab.genre_name(g) for g in self.genre_ids]
        if self.tokenizer is not None:
            out.lyrics = self.tokenizer.decode(y[4 + self.cfg.labels.max_genres :])
            out.lyric_indices = [int(i) for i in idx]
        return out


def resolve_names(
    priors: Mapping[int, Prior],
    vocabs: Mapping[int, Vocab],
    levels: Sequence[int],
    names: Mapping[str, Any],
    n_levels: int,
) -> tuple[dict[int, LevelLabels], dict[str, Any]]:
    """A :class:`LevelLabels` per level of ``levels`` for the song ``names`` (``artist``,
    ``genre``, ``lyrics``, ``words``), and what the lyrics lost in cleaning (``info``; also
    one console warning listing the transliterated and dropped characters). The names are
    mapped to each prior's ids; all unknown names are one :class:`ConfigError`."""
    artist, genre = names["artist"], names["genre"]
    problems: dict[str, list[str]] = {}
    ids: dict[int, tuple[int, list[int]]] = {}
    for level in levels:
        prior = priors[level]
        lab = prior.cfg.labels
        if lab is None:
            ids[level] = (0, [])
            continue
        vocab = vocabs.get(level)
        wants_names = bool(artist) or bool(genre_words(genre, "v3"))
        if vocab is None:
            if wants_names:
                raise ConfigError(
                    f"the {level_name(level, n_levels)} prior is labelled but has no "
                    f"{VOCAB_FILE}: cannot map artist/genre names to ids"
                )
            ids[level] = (0, [0])
            continue
        if vocab.n_artists > lab.artist_bins or vocab.n_genres > lab.genre_bins:
            raise ConfigError(
                f"the {level_name(level, n_levels)} prior's vocabulary has ids up to "
                f"{vocab.n_artists - 1}/{vocab.n_genres - 1} (artists/genres) but the model "
                f"embeds {lab.artist_bins}/{lab.genre_bins}"
            )
        a_id = _artist_id(vocab, artist, problems)
        g_ids = _genre_ids(vocab, genre, problems)
        if len(g_ids) > lab.max_genres:
            log.warning(
                "%s level takes %d genres: %s -> first %d kept",
                level_name(level, n_levels),
                lab.max_genres,
                genre,
                lab.max_genres,
            )
        ids[level] = (a_id, g_ids)
    if problems:
        lines = [f"{k}: {'; '.join(v)}" for k, v in problems.items()]
        raise ConfigError("unknown label name(s): " + " | ".join(lines))

    lyrics = names["lyrics"] or ""
    stats = TextStats()
    cleaned = ""
    if any(priors[lv].cfg.n_tokens for lv in levels) and lyrics:
        version = next(
            lyric_version(priors[lv].cfg.lyrics.n_vocab) for lv in levels if priors[lv].cfg.n_tokens
        )
        cleaned, stats = LyricTokenizer(version).clean_with_stats(lyrics)
        if stats.mapped or stats.dropped:  # on the console: the song is not sung as written
            log.warning("lyrics changed to fit the model's alphabet: %s", stats.summary())
    makers = {
        lv: LevelLabels(priors[lv], vocabs.get(lv), *ids[lv], lyrics, names.get("words"))
        for lv in levels
    }
    info = {
        "artist": artist,
        "genre": genre,
        "lyrics": cleaned,
        "lyrics_chars": stats.chars,
        "lyrics_transliterated": stats.mapped,
        "lyrics_transliterated_chars": dict(stats.mapped_chars),
        "lyrics_dropped": stats.dropped,
        "lyrics_dropped_chars": dict(stats.dropped_chars),
    }
    return makers, info


def check_timing(
    prior: Prior,
    labels: list[tuple[np.ndarray | None, list[int]]],
    total: int,
    n_levels: int,
) -> None:
    """Raise :class:`ConfigError` now if a window's timing falls outside the prior's
    range (the top prior's timing embeddings only cover ``[min, max)`` durations)."""
    lab = prior.cfg.labels
    if lab is None or not lab.include_timing or not labels:
        return
    meta = torch.as_tensor(np.stack([y for y, _ in labels]))[:, : 4 + lab.max_genres]
    try:
        with torch.no_grad():
            prior.y_emb(meta.to(next(prior.parameters()).device))
    except ValueError as err:
        raise ConfigError(
            f"a {total / prior.cfg.sample_rate:.2f} s song is outside what the "
            f"{level_name(prior.cfg.level, n_levels)} prior's timing covers (durations "
            f"[{lab.min_duration:g}, {lab.max_duration:g}) s): {err}"
        ) from err


def _close(name: str, names: Sequence[str]) -> str:
    matches = difflib.get_close_matches(name, [n for n in names if n != UNKNOWN], n=5, cutoff=0.5)
    return f"close matches: {', '.join(repr(m) for m in matches)}" if matches else "no close match"


def _artist_id(vocab: Vocab, artist: str | None, problems: dict[str, list[str]]) -> int:
    if not artist:
        return 0
    key = normalize_name(artist, vocab.version)
    if key in vocab.artists:
        return vocab.artists[key]
    msg = f"{artist!r} ({_close(key, list(vocab.artists))})"
    problems.setdefault("artist", [])
    if msg not in problems["artist"]:
        problems["artist"].append(msg)
    return 0


def _genre_ids(
    vocab: Vocab, genre: str | Sequence[str] | None, problems: dict[str, list[str]]
) -> list[int]:
    words = genre_words(genre, vocab.version)
    out = []
    for w in words:
        if w in vocab.genres:
            out.append(vocab.genres[w])
            continue
        msg = f"{w!r} ({_close(w, list(vocab.genres))})"
        problems.setdefault("genre", [])
        if msg not in problems["genre"]:
            problems["genre"].append(msg)
    return out or [0]


def load_lyrics(lyrics: str | None, lyrics_file: str | os.PathLike | None) -> str:
    """Lyrics from text or a UTF-8 file (exactly one may be given; neither gives "")."""
    if lyrics is not None and lyrics_file is not None:
        raise ConfigError("give lyrics as text or as a file, not both")
    if lyrics_file is not None:
        path = Path(lyrics_file)
        if not path.is_file():
            raise FileNotFoundError(f"lyrics file {path} not found")
        return path.read_text(encoding="utf-8")
    return lyrics or ""


__all__ = ["LevelLabels", "WindowLabel", "check_timing", "load_lyrics", "resolve_names"]
