"""Conditioning labels of the Jukebox priors: artist, genres, timing and a lyric window.

A label is the int64 vector Jukebox's ``Labeller`` builds (``jukebox/data/labels.py``)::

    [total_length, offset, length, artist_id, genre_id × max_genres (pad -1), lyric token × n_tokens]

``total_length``, ``offset`` and ``length`` are in samples at the model rate. The lyric window
holds ``n_tokens`` characters centred on the crop's middle. Jukebox aligns characters linearly
over the song (:func:`linear_lyric_window`). When word timings exist, :func:`timed_lyric_window`
aligns each character to the time of its word instead.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from teacher.config import ConfigError, read_json_object
from teacher.data.text import VOCABS, LyricTokenizer, genre_words, normalize_name

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
VOCAB_FILE = "vocab.json"
#: the report of the names a fine-tuning run added to its model's vocabulary (output folder)
VOCAB_ADDED_FILE = "vocab_added.json"


@dataclass(frozen=True)
class LabelConfig:
    """Layout of the label vector.

    ``max_genres`` is Jukebox's ``max_bow_genre_size`` (5 for v2 models, 1 for the released
    v3 ones). ``n_tokens`` is the lyric window in characters (0 = no lyrics; 512 for v2
    1b models, 384 for the v3 lyric models). ``lyric_version`` picks the character vocabulary
    and the artist/genre name normalisation.
    """

    max_genres: int = 5
    n_tokens: int = 0
    lyric_version: str = "v3"

    @property
    def size(self) -> int:
        """Length of a label vector: ``4 + max_genres + n_tokens``."""
        return 4 + self.max_genres + self.n_tokens

    @property
    def n_vocab(self) -> int:
        """Size of the lyric vocabulary, ``<unk>`` included (v3: 79, v2: 80)."""
        return len(VOCABS[self.lyric_version]) + 1

    def validate(self) -> LabelConfig:
        """Raise :class:`~teacher.config.ConfigError` on a bad field; return ``self``."""
        if self.max_genres < 1:
            raise ConfigError(f"max_genres must be >= 1, got {self.max_genres}")
        if self.n_tokens < 0:
            raise ConfigError(f"n_tokens must be >= 0, got {self.n_tokens}")
        if self.lyric_version not in VOCABS:
            raise ConfigError(f"lyric_version must be 'v2' or 'v3', got {self.lyric_version!r}")
        return self


# ---------------------------------------------------------------------------------------------
# artist / genre vocabulary


@dataclass
class Vocab:
    """Artist and genre names → ids; id 0 is ``unknown``.

    Names are stored normalised (:func:`teacher.data.text.normalize_name` for ``version``). Ids
    1.. follow the sorted names, so the same metadata always gives the same ids. Several names
    may share an id (Jukebox's released lists do); :meth:`artist_name` returns the first.
    """

    version: str = "v3"
    artists: dict[str, int] = field(default_factory=lambda: {UNKNOWN: 0})
    genres: dict[str, int] = field(default_factory=lambda: {UNKNOWN: 0})

    @classmethod
    def build(
        cls,
        artists: Iterable[str | None],
        genres: Iterable[str | Sequence[str] | None],
        version: str = "v3",
    ) -> Vocab:
        """A vocabulary of every artist and genre name seen (``None``/empty are unknown)."""
        a = {normalize_name(x, version) for x in artists if x}
        g = {w for x in genres for w in genre_words(x, version)}
        a -= {"", UNKNOWN}
        g -= {"", UNKNOWN}
        return cls(
            version=version,
            artists={UNKNOWN: 0, **{n: i + 1 for i, n in enumerate(sorted(a))}},
            genres={UNKNOWN: 0, **{n: i + 1 for i, n in enumerate(sorted(g))}},
        )

    @classmethod
    def from_id_lists(cls, artist_file: str, genre_file: str, version: str) -> Vocab:
        """Read Jukebox's ``name;id`` lists (``jukebox/data/ids/v*_*_ids.txt``)."""

        def read(path: str) -> dict[str, int]:
            out = {UNKNOWN: 0}
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    name, sep, idx = line.rstrip("\n").rpartition(";")
                    if not sep:
                        raise ValueError(f"{path}:{n}: expected 'name;id', got {line!r}")
                    out[name.lower()] = int(idx)
            return out

        return cls(version=version, artists=read(artist_file), genres=read(genre_file))

    @property
    def n_artists(self) -> int:
        """Rows an artist embedding needs (largest id + 1)."""
        return max(self.artists.values()) + 1

    @property
    def n_genres(self) -> int:
        """Rows a genre embedding needs (largest id + 1)."""
        return max(self.genres.values()) + 1

    def artist_id(self, name: str | None) -> int:
        """Id of a (raw or normalised) artist name; 0 when unknown."""
        if not name:
            return 0
        return self.artists.get(normalize_name(name, self.version), 0)

    def genre_ids(self, genre: str | Sequence[str] | None) -> list[int]:
        """Ids of a genre (v2: bag of words) or list of genres; unknown words → 0.

        No genre at all gives ``[0]`` (the unknown genre), so a label always carries one.
        """
        words = genre_words(genre, self.version)
        return [self.genres.get(w, 0) for w in words] or [0]

    def artist_name(self, artist_id: int) -> str:
        """First (sorted) name with this id; ``unknown`` for 0 or ids not present."""
        names = sorted(n for n, i in self.artists.items() if i == artist_id)
        return names[0] if names and artist_id != 0 else UNKNOWN

    def genre_name(self, genre_id: int) -> str:
        """First (sorted) genre with this id; ``unknown`` for 0 or ids not present."""
        names = sorted(n for n, i in self.genres.items() if i == genre_id)
        return names[0] if names and genre_id != 0 else UNKNOWN

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "artists": self.artists, "genres": self.genres}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Vocab:
        version = data.get("version", "v3")
        if version not in VOCABS:
            raise ValueError(f"vocab version must be 'v2' or 'v3', got {version!r}")
        artists = {str(k): int(v) for k, v in data["artists"].items()}
        genres = {str(k): int(v) for k, v in data["genres"].items()}
        artists.setdefault(UNKNOWN, 0)
        genres.setdefault(UNKNOWN, 0)
        return cls(version=version, artists=artists, genres=genres)

    def save(self, path: str) -> str:
        """Write JSON to ``path`` (a folder gets ``vocab.json``); returns the file written."""
        if os.path.isdir(path):
            path = os.path.join(path, VOCAB_FILE)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1, sort_keys=True, ensure_ascii=False)
        return path

    @classmethod
    def load(cls, path: str) -> Vocab:
        """Read :meth:`save` output (a file, or a folder holding ``vocab.json``); a missing,
        unreadable or malformed file is one :class:`ConfigError` naming it."""
        if os.path.isdir(path):
            path = os.path.join(path, VOCAB_FILE)
        data = read_json_object(path)
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ConfigError(
                f"{path}: not an artist/genre vocabulary ({type(err).__name__}: {err})"
            ) from None

    def check_rows(self, artist_rows: int, genre_rows: int, where: str) -> None:
        """Raise :class:`ConfigError` naming ``where`` (the vocabulary's file) unless every id
        has a row in embeddings of ``artist_rows`` artists and ``genre_rows`` genres."""
        if self.n_artists > artist_rows or self.n_genres > genre_rows:
            raise ConfigError(
                f"{where} does not match the model's embedding tables: the {self.version} "
                f"vocabulary has artist ids up to {self.n_artists - 1} and genre ids up to "
                f"{self.n_genres - 1}, the model embeds {artist_rows} artists and {genre_rows} "
                "genres (the vocabulary of another model?)"
            )

    def grow(self, names: Vocab, artist_rows: int, genre_rows: int) -> tuple[Vocab, VocabGrowth]:
        """This vocabulary plus the names of ``names`` (e.g. a dataset's) it lacks, as new ids.

        New ids are appended after the embedding tables (``artist_rows``/``genre_rows`` rows,
        which must hold every id here: :meth:`check_rows`), in ``names``' id order, so every
        existing id keeps its row. Both vocabularies must normalise names the same way (one
        ``version``). Returns the grown vocabulary (``self`` is unchanged) and what was added.
        """
        if names.version != self.version:
            raise ConfigError(
                f"cannot add {names.version} names to a {self.version} vocabulary (names are "
                "normalised differently): read the data with the model's version"
            )
        self.check_rows(artist_rows, genre_rows, "the vocabulary")

        def added(own: dict[str, int], new: dict[str, int], start: int) -> dict[str, int]:
            fresh = sorted((i, n) for n, i in new.items() if n != UNKNOWN and n not in own)
            return {n: start + k for k, (_, n) in enumerate(fresh)}

        artists = added(self.artists, names.artists, artist_rows)
        genres = added(self.genres, names.genres, genre_rows)
        grown = Vocab(self.version, {**self.artists, **artists}, {**self.genres, **genres})
        growth = VocabGrowth(
            artists,
            genres,
            (artist_rows, artist_rows + len(artists)),
            (genre_rows, genre_rows + len(genres)),
        )
        return grown, growth


@dataclass(frozen=True)
class VocabGrowth:
    """What :meth:`Vocab.grow` added.

    Attributes:
        artists, genres: each new (normalised) name -> its new id.
        artist_rows, genre_rows: the embedding rows ``(before, after)``.
    """

    artists: dict[str, int]
    genres: dict[str, int]
    artist_rows: tuple[int, int]
    genre_rows: tuple[int, int]

    def summary(self) -> str:
        """One line: the new names with their ids and the rows before -> after."""

        def names(kind: str, new: dict[str, int], rows: tuple[int, int]) -> str:
            listed = ", ".join(f"{n!r} -> {i}" for n, i in new.items())
            plural = "" if len(new) == 1 else "s"
            shown = f" ({listed})" if new else ""
            return f"{len(new)} new {kind}{plural}{shown}, {rows[0]} -> {rows[1]} rows"

        if not (self.artists or self.genres):
            return "vocabulary unchanged: it has every artist and genre of the data"
        return (
            f"vocabulary grown: {names('artist', self.artists, self.artist_rows)}; "
            f"{names('genre', self.genres, self.genre_rows)}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "artists": self.artists,
            "genres": self.genres,
            "artist_rows": list(self.artist_rows),
            "genre_rows": list(self.genre_rows),
        }


# ---------------------------------------------------------------------------------------------
# label vector


def make_label(
    total_length: int,
    offset: int,
    length: int,
    artist_id: int,
    genre_ids: Sequence[int],
    lyric_tokens: Sequence[int] = (),
    max_genres: int = 5,
) -> np.ndarray:
    """The Jukebox label vector, int64 ``[4 + max_genres + len(lyric_tokens)]``.

    ``[total_length, offset, length, artist_id, *genre_ids (padded with -1), *lyric_tokens]``;
    lengths and offsets in samples. ``lyric_tokens`` is already the window (``n_tokens`` long).
    """
    genre_ids = list(genre_ids)
    if len(genre_ids) > max_genres:
        raise ValueError(f"{len(genre_ids)} genre ids exceed max_genres={max_genres}")
    padded = genre_ids + [-1] * (max_genres - len(genre_ids))
    return np.array(
        [total_length, offset, length, artist_id, *padded, *lyric_tokens], dtype=np.int64
    )


@dataclass(frozen=True)
class LabelParts:
    """A label vector taken apart (inverse of :func:`make_label`)."""

    total_length: int
    offset: int
    length: int
    artist_id: int
    genre_ids: list[int]
    lyric_tokens: list[int]


def split_label(label: Sequence[int] | np.ndarray, max_genres: int = 5) -> LabelParts:
    """Take a label vector ``[4 + max_genres + n_tokens]`` apart; padding genres dropped."""
    y = [int(v) for v in np.asarray(label).reshape(-1)]
    genres = [g for g in y[4 : 4 + max_genres] if g >= 0]
    return LabelParts(y[0], y[1], y[2], y[3], genres, y[4 + max_genres :])


def _window(full_tokens: Sequence[int], n_tokens: int, mid: int) -> tuple[list[int], list[int]]:
    """``n_tokens`` tokens starting at ``mid - n_tokens // 2``, clamped inside the lyrics."""
    n = len(full_tokens)
    if n < n_tokens:
        pad = n_tokens - n
        return [0] * pad + list(full_tokens), [-1] * pad + list(range(n))
    start = min(max(mid - n_tokens // 2, 0), n - n_tokens)
    idx = list(range(start, start + n_tokens))
    return [int(full_tokens[i]) for i in idx], idx


def linear_lyric_window(
    full_tokens: Sequence[int], n_tokens: int, total_length: int, offset: int, length: int
) -> tuple[list[int], list[int]]:
    """Jukebox's linear lyric window (``get_relevant_lyric_tokens``).

    Characters are spread evenly over the song; the window's middle is character
    ``int(len(full_tokens) * (offset + length / 2) / total_length)``, clamped so the window
    stays inside the lyrics. Lyrics shorter than ``n_tokens`` are left-padded with 0 (index
    -1). Returns ``(tokens, indices)``, both ``n_tokens`` long; ``indices`` are positions in
    ``full_tokens`` (-1 for padding), for attention-alignment plots. For odd ``n_tokens`` the
    window starts at ``mid - n_tokens // 2`` (Jukebox only supports even windows).
    """
    if n_tokens == 0:
        return [], []
    if len(full_tokens) >= n_tokens and not 0 <= offset < total_length:
        raise ValueError(f"offset {offset} outside [0, total_length={total_length})")
    mid = int(len(full_tokens) * (offset + length / 2.0) / total_length) if full_tokens else 0
    return _window(full_tokens, n_tokens, mid)


def char_times(
    text: str,
    words: Sequence[Mapping[str, Any]],
    clean: Callable[[str], str] | None = None,
) -> np.ndarray:
    """A time for each character of ``text`` (float64 ``[len(text)]``) from word timings.

    ``words`` are ``{"word", "start", "end"}`` in order. Each word is looked up in ``text``
    after the previous one (exact, then case-insensitive); a word not found is skipped. The
    ``k`` characters of a found word get the centres of ``k`` equal slots of ``[start, end]``
    (``start + (j + 0.5) (end - start) / k``). Characters between words (spaces, punctuation,
    newlines) get the boundary: the end of the previous word, or the start of the first word
    before it. ``clean`` (e.g. ``LyricTokenizer.clean``) is applied to each word so it matches
    cleaned lyrics. Times never decrease.
    """
    lower = text.lower()
    out = np.empty(len(text))
    pos = 0  # first character not yet assigned
    fill: float | None = None  # time of the gap before the next word
    for w in words:
        word = str(w["word"])
        if clean is not None:
            word = clean(word)
        word = word.strip()
        if not word:
            continue
        at = text.find(word, pos)
        if at < 0:
            at = lower.find(word.lower(), pos)
        if at < 0:
            log.debug("word %r not found in lyrics after char %d; skipped", word, pos)
            continue
        start = float(w["start"])
        end = max(float(w["end"]), start)
        k = len(word)
        out[pos:at] = start if fill is None else fill
        out[at : at + k] = start + (np.arange(k) + 0.5) * (end - start) / k
        fill, pos = end, at + k
    if fill is None:
        return np.zeros(len(text))
    out[pos:] = fill
    return np.maximum.accumulate(out)


def timed_lyric_window(
    full_tokens: Sequence[int], times: Sequence[float] | np.ndarray, n_tokens: int, center: float
) -> tuple[list[int], list[int]]:
    """The lyric window by word timings: ``n_tokens`` characters centred on time ``center``.

    ``times`` (from :func:`char_times`, same unit as ``center``) gives each token's time. The
    window's middle is the first character at or after ``center`` (the number of characters
    timed before it); clamping and left-padding follow :func:`linear_lyric_window`. Returns
    ``(tokens, indices)``.
    """
    if n_tokens == 0:
        return [], []
    times = np.asarray(times, dtype=np.float64)
    if len(times) != len(full_tokens):
        raise ValueError(f"{len(times)} char times for {len(full_tokens)} tokens")
    mid = int(np.searchsorted(times, center, side="left"))
    return _window(full_tokens, n_tokens, mid)


def lyric_window(
    full_tokens: Sequence[int],
    n_tokens: int,
    total_length: int,
    offset: int,
    length: int,
    times: Sequence[float] | np.ndarray | None = None,
    sample_rate: int | None = None,
) -> tuple[list[int], list[int]]:
    """:func:`timed_lyric_window` when ``times`` (seconds) are given, else the linear one.

    ``total_length``, ``offset`` and ``length`` are in samples; ``sample_rate`` converts the
    crop's middle to seconds for the timed window.
    """
    if times is None:
        return linear_lyric_window(full_tokens, n_tokens, total_length, offset, length)
    if not sample_rate:
        raise ValueError("timed lyric windows need the sample_rate")
    center = (offset + length / 2.0) / sample_rate
    return timed_lyric_window(full_tokens, times, n_tokens, center)


class Labeller:
    """Builds label vectors for crops of one dataset: a :class:`Vocab`, a tokenizer, a layout.

    ``encode_lyrics`` turns a song's lyrics (and optional word timings) into full tokens and
    per-character times once; ``label`` cuts the window for each crop.
    """

    def __init__(self, cfg: LabelConfig, vocab: Vocab) -> None:
        self.cfg = cfg.validate()
        if vocab.version != cfg.lyric_version:
            log.warning(
                "vocab version %s differs from lyric_version %s; names are normalised as %s",
                vocab.version,
                cfg.lyric_version,
                vocab.version,
            )
        self.vocab = vocab
        self.tokenizer = LyricTokenizer(cfg.lyric_version)

    def encode_lyrics(
        self, lyrics: str, words: Sequence[Mapping[str, Any]] | None = None
    ) -> tuple[list[int], np.ndarray | None]:
        """Full tokens of ``lyrics`` and, when ``words`` are given, each token's time (s).

        With words but no lyrics the lyrics are the words joined by spaces.
        """
        if words and not lyrics:
            lyrics = " ".join(str(w["word"]) for w in words)
        text = self.tokenizer.clean(lyrics or "")
        tokens = self.tokenizer.encode(text, clean=False)
        times = char_times(text, words, clean=self.tokenizer.clean) if words else None
        return tokens, times

    def label(
        self,
        total_length: int,
        offset: int,
        length: int,
        artist_id: int,
        genre_ids: Sequence[int],
        full_tokens: Sequence[int] = (),
        times: np.ndarray | None = None,
        sample_rate: int | None = None,
    ) -> tuple[np.ndarray, list[int]]:
        """Label vector ``[cfg.size]`` of one crop and the lyric window's char indices."""
        tokens, idx = lyric_window(
            full_tokens, self.cfg.n_tokens, total_length, offset, length, times, sample_rate
        )
        y = make_label(
            total_length,
            offset,
            length,
            artist_id,
            genre_ids[: self.cfg.max_genres],
            tokens,
            max_genres=self.cfg.max_genres,
        )
        return y, idx

    def describe(self, label: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """Artist, genres and lyric window of a label vector, as text."""
        p = split_label(label, self.cfg.max_genres)
        return {
            "artist": self.vocab.artist_name(p.artist_id),
            "genre": [self.vocab.genre_name(g) for g in p.genre_ids],
            "lyrics": self.tokenizer.decode(p.lyric_tokens),
            "total_length": p.total_length,
            "offset": p.offset,
            "length": p.length,
        }
