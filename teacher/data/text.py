"""Lyric characters and artist/genre names, as Jukebox tokenises them.

Jukebox (``jukebox/data/text_processor.py``) tokenises lyrics per character. Text is first
transliterated to ASCII with ``unidecode``, backslashes become newlines, and every character
outside the vocabulary is dropped. Token 0 is ``<unk>``; vocabulary character ``i`` is token
``i + 1``. There are two vocabularies:

* ``v3`` (the released 1b_lyrics): 78 characters, ``n_vocab = 79``;
* ``v2`` (the released 5b, 5b_lyrics and upsamplers): the same plus ``+``, 79 characters,
  ``n_vocab = 80``.

These counts were checked against the reference code, whose hparams say ``n_vocab=79`` for
``labels_v3`` and ``n_vocab=80`` for v2. Artist and genre names are normalised as in
``artist_genre_processor.py`` (see :func:`normalize_name`).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from unidecode import unidecode

from teacher.config import ConfigError

log = logging.getLogger(__name__)

_BASE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
#: v3 lyric vocabulary, in Jukebox's order (token = index + 1).
V3_CHARS = _BASE + ".,:;!?-'\"()[] \t\n"
#: v2 lyric vocabulary, in Jukebox's order (token = index + 1); v3 plus ``+``.
V2_CHARS = _BASE + ".,:;!?-+'\"()[] \t\n"
VOCABS = {"v3": V3_CHARS, "v2": V2_CHARS}
UNK = 0

_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_UNDERSCORES = re.compile(r"_+")


def _check_version(version: str) -> str:
    if version not in VOCABS:
        raise ValueError(f"lyric/label version must be 'v2' or 'v3', got {version!r}")
    return version


@dataclass
class TextStats:
    """Character counts from :meth:`LyricTokenizer.clean_with_stats`.

    ``chars`` counts input characters, ``mapped`` the non-ASCII ones that ``unidecode``
    transliterated (``é`` → ``e``), ``kept`` the characters of the cleaned text and ``dropped``
    the characters removed because they are outside the vocabulary (after transliteration; a
    transliteration to nothing counts as mapped only). ``mapped_chars`` says which characters
    became what (``"é→e"``), ``dropped_chars`` which ones were dropped.
    """

    chars: int = 0
    mapped: int = 0
    kept: int = 0
    dropped: int = 0
    dropped_chars: Counter[str] = field(default_factory=Counter)
    mapped_chars: Counter[str] = field(default_factory=Counter)

    def update(self, other: TextStats) -> None:
        """Add ``other``'s counts to these (to total over a dataset)."""
        self.chars += other.chars
        self.mapped += other.mapped
        self.kept += other.kept
        self.dropped += other.dropped
        self.dropped_chars.update(other.dropped_chars)
        self.mapped_chars.update(other.mapped_chars)

    def summary(self, top: int = 8) -> str:
        """One line: ``chars, transliterated (the most common), dropped (the most common)``."""

        def common(counts: Counter[str], show: Callable[[str], str]) -> str:
            shown = ", ".join(f"{show(c)}×{n}" for c, n in counts.most_common(top))
            return f" ({shown})" if shown else ""

        return (
            f"{self.chars} lyric chars, {self.mapped} transliterated"
            f"{common(self.mapped_chars, lambda m: '→'.join(map(repr, m.split('→', 1))))}, "
            f"{self.dropped} dropped{common(self.dropped_chars, repr)}"
        )


class LyricTokenizer:
    """Jukebox's character tokenizer (``TextProcessor``), with counts of what cleaning changed.

    >>> tok = LyricTokenizer("v3")
    >>> tok.n_vocab
    79
    >>> tok.decode(tok.encode("Déjà vu!"))
    'Deja vu!'

    ``stats`` accumulates :class:`TextStats` over every :meth:`clean`/:meth:`encode` call so a
    data pipeline can report how much text was transliterated or dropped.
    """

    def __init__(self, version: str = "v3") -> None:
        self.version = _check_version(version)
        self.chars = VOCABS[version]
        self.vocab: dict[str, int] = {c: i + 1 for i, c in enumerate(self.chars)}
        self.n_vocab = len(self.chars) + 1  # + <unk> = 0
        self._not_vocab = re.compile("[^" + re.escape(self.chars) + "]+")
        self._allowed = frozenset(self.chars)
        self.stats = TextStats()

    def __repr__(self) -> str:
        return f"LyricTokenizer(version={self.version!r}, n_vocab={self.n_vocab})"

    def clean(self, text: str) -> str:
        """Jukebox's ``clean``: ``unidecode``, backslash → newline, drop non-vocabulary chars."""
        return self.clean_with_stats(text)[0]

    def clean_with_stats(self, text: str) -> tuple[str, TextStats]:
        """:meth:`clean` plus the :class:`TextStats` of this text (also added to ``stats``).

        All three cleaning steps are per-character maps, so counting character by character
        gives the same string as Jukebox's whole-string version (the tests check this).
        """
        stats = TextStats(chars=len(text))
        out: list[str] = []
        for ch in text:
            if ch.isascii():
                piece = ch
            else:
                piece = unidecode(ch)
                stats.mapped += 1
                stats.mapped_chars[f"{ch}→{piece}"] += 1
            for c in piece.replace("\\", "\n"):
                if c in self._allowed:
                    out.append(c)
                else:
                    stats.dropped += 1
                    stats.dropped_chars[c] += 1
        cleaned = "".join(out)
        stats.kept = len(cleaned)
        self.stats.update(stats)
        return cleaned, stats

    def encode(self, text: str, clean: bool = True) -> list[int]:
        """Token ids of ``text`` (cleaned first unless ``clean=False``; then unknown → 0)."""
        if clean:
            text = self.clean(text)
        return [self.vocab.get(c, UNK) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; ``<unk>`` (0) and padding (< 0) decode to nothing, as in Jukebox."""
        return "".join(self.chars[i - 1] for i in map(int, ids) if 0 < i <= len(self.chars))


def lyric_version(n_vocab: int) -> str:
    """The tokenizer version whose vocabulary has ``n_vocab`` symbols (79 = v3, 80 = v2)."""
    for version in ("v3", "v2"):
        if LyricTokenizer(version).n_vocab == n_vocab:
            return version
    raise ConfigError(f"lyric n_vocab {n_vocab} matches no tokenizer (79 = v3, 80 = v2)")


def normalize_name(name: str, version: str = "v3") -> str:
    """Normalise an artist or genre name as Jukebox's ``ArtistGenreProcessor`` does.

    ``v3``: lower case only (``"Alan Jackson"`` → ``"alan jackson"``). ``v2``: lower case, every
    character outside ``[a-z0-9]`` becomes ``_``, runs of ``_`` collapse and the ends are
    stripped (``"Beyoncé & Jay-Z"`` → ``"beyonc_jay_z"``; no transliteration, as in Jukebox).
    """
    _check_version(version)
    if version == "v3":
        return name.lower()
    s = "".join(c if c in _NAME_OK else "_" for c in name.lower())
    return _UNDERSCORES.sub("_", s).strip("_")


def genre_words(genre: str | Sequence[str] | None, version: str = "v3") -> list[str]:
    """Normalised genre names: v3 keeps each genre whole, v2 splits it into a bag of words.

    A list of genres is normalised element-wise (and, for v2, concatenated). ``None``/empty
    gives ``[]``.
    """
    _check_version(version)
    if genre is None:
        return []
    genres = [genre] if isinstance(genre, str) else list(genre)
    words: list[str] = []
    for g in genres:
        n = normalize_name(g, version)
        if version == "v2":
            words.extend(w for w in n.split("_") if w)
        elif n.strip():
            words.append(n)
    return words
