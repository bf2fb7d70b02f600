"""A built-in, generated music dataset: deterministic from a seed, seconds to make, no downloads.

Each song is composed and rendered from scratch with numpy:

* harmony: a key (tonic and mode), a looping four-chord progression of diatonic triads, one
  chord per bar;
* melody: two-bar phrases in a song form (``ABAC``, ``ABAB`` or ``ABCB``; a repeated phrase
  repeats its notes and words), chord tones on strong beats, stepwise motion between, half
  cadences on the dominant and full cadences on the tonic;
* rhythm: a tempo grid in the genre's tempo range and metre, rhythm patterns per genre, an
  accompaniment pattern (arpeggio, pad, oom-pah, off-beat stabs), a bass line and a
  percussion voice (kick, snare, hat, shaker);
* dynamics: a per-song contour (crescendo, decrescendo, swell or steady) on top of metric
  accents;
* lyrics you can hear: every melody note sings one word from a small English lexicon.
  The voice is a source-filter model: a band-limited glottal pulse (harmonic amplitudes
  ``k ** -tilt``) with vibrato, through a cascade of three formant resonators (Klatt 1980) set
  by the word's vowel (a/e/i/o/u), after a short consonant noise burst shaped by the word's
  onset (plosive, sibilant, fricative, aspirate, sonorant). The words and their timings are the
  ``words`` field of the metadata, so lyrics conditioning has something to learn.

Artists are timbres (a singer's vocal tract, register, source and vibrato plus an accompanying
instrument: drawbar organ, FM electric piano, plucked string, chiptune square or brass); genres
are styles (tempo range, metre, modes, rhythmic density, accompaniment and drum patterns).
Song ``i`` is the same for a given seed whatever ``n_songs`` is, and the first
``len(artists) * len(genres)`` songs cover every artist/genre pair once.

``python -m teacher.synth OUT_DIR --n-songs 20`` writes a dataset.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import lfilter

from teacher.config import ConfigError, save_config

logger = logging.getLogger(__name__)

PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")

MODES: dict[str, tuple[int, ...]] = {
    "ionian": (0, 2, 4, 5, 7, 9, 11),
    "lydian": (0, 2, 4, 6, 7, 9, 11),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "aeolian": (0, 2, 3, 5, 7, 8, 10),
}

# ---------------------------------------------------------------------------------------------
# phonetics: vowels, consonant onsets and the lexicon

VOWELS = ("a", "e", "i", "o", "u")

# Formant frequencies and bandwidths (Hz) of an adult male voice, after Peterson & Barney (1952):
# a as in "father", e as in "bed", i as in "see", o as in "go", u as in "blue".
VOWEL_FORMANTS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "a": ((730.0, 1090.0, 2440.0), (90.0, 110.0, 160.0)),
    "e": ((530.0, 1840.0, 2480.0), (70.0, 100.0, 150.0)),
    "i": ((270.0, 2290.0, 3010.0), (60.0, 100.0, 170.0)),
    "o": ((500.0, 850.0, 2410.0), (70.0, 90.0, 150.0)),
    "u": ((300.0, 870.0, 2240.0), (60.0, 90.0, 140.0)),
}

# onset consonant → its class; the class picks the noise burst in :func:`sing`.
ONSET_CLASSES: dict[str, str] = {
    **dict.fromkeys(("p", "b", "t", "d", "k", "g", "c", "q"), "plosive"),
    **dict.fromkeys(("s", "z", "sh", "sch", "tz", "x"), "sibilant"),
    **dict.fromkeys(("f", "v", "th", "ch", "w"), "fricative"),
    "h": "aspirate",
    **dict.fromkeys(("m", "n", "l", "r", "j", "y"), "sonorant"),
    "": "none",
}
# centre frequency (Hz) of each plosive's burst: labials low, velars mid, alveolars high
_PLOSIVE_BURST = {"p": 900.0, "b": 700.0, "t": 4200.0, "d": 3200.0, "k": 2100.0, "g": 1800.0}

# word:vowel:onset. Monosyllables grouped by their sung vowel (the onset is the sound, not the
# spelling: "know" starts with n).
_LEXICON_TEXT = """
star:a:s heart:a:h far:a:f calm:a:k dark:a:d arms:a: spark:a:s part:a:p hard:a:h palm:a:p
start:a:s are:a: bed:e:b red:e:r bell:e:b friend:e:f well:e:w west:e:w said:e:s head:e:h ten:e:t
rest:e:r yes:e:y step:e:s see:i:s sea:i:s dream:i:d free:i:f sweet:i:s keep:i:k green:i:g
tree:i:t me:i:m leaf:i:l sleep:i:s feel:i:f home:o:h road:o:r gold:o:g snow:o:s go:o:g slow:o:s
stone:o:s know:o:n hope:o:h boat:o:b low:o:l soul:o:s blue:u:b moon:u:m you:u:y through:u:th
soon:u:s true:u:t room:u:r cool:u:k new:u:n who:u:h tune:u:t loose:u:l
"""


@dataclass(frozen=True)
class Word:
    """A lexicon entry: the text, the vowel it is sung on and its onset consonant."""

    text: str
    vowel: str
    onset: str


LEXICON: tuple[Word, ...] = tuple(
    Word(*item.split(":")) for item in _LEXICON_TEXT.split() if item.strip()
)
_WORDS_BY_TEXT = {w.text: w for w in LEXICON}


def word_vowel(word: str) -> str:
    """The vowel (one of :data:`VOWELS`) a lexicon word is sung on; falls back to spelling."""
    entry = _WORDS_BY_TEXT.get(word.lower())
    return entry.vowel if entry else syllable_phonetics(word)[0]


def syllable_phonetics(text: str) -> tuple[str, str]:
    """Guess ``(vowel, onset)`` of a written syllable (English or German spelling).

    The vowel is the first vowel letter group folded onto a/e/i/o/u (``ei``/``ai``/``au`` → a,
    ``ie`` → i, ``eu``/``äu`` → o, ``ä``/``ö`` → e, ``ü``/``y`` → i); the onset is the leading
    consonant cluster's first sound (``sch``/``sh``/``ch``/``th`` kept whole). A syllable
    without a vowel letter is sung on "a".
    """
    s = "".join(c for c in text.lower() if c.isalpha())
    s = s.replace("ß", "s")
    i = next((k for k, c in enumerate(s) if c in "aeiouäöüy"), None)
    if i is None:
        return "a", _onset_of(s)
    pair = s[i : i + 2]
    folded = {"ei": "a", "ai": "a", "ay": "a", "au": "a", "ie": "i", "ee": "i", "ea": "i"}
    folded |= {"eu": "o", "äu": "o", "oo": "u", "ou": "u", "ue": "u"}
    if pair in folded:
        vowel = folded[pair]
    else:
        vowel = {"ä": "e", "ö": "e", "ü": "i", "y": "i"}.get(s[i], s[i])
    return vowel, _onset_of(s[:i])


def _onset_of(cluster: str) -> str:
    for sound in ("sch", "sh", "ch", "th", "tz"):
        if cluster.startswith(sound):
            return sound
    return cluster[:1]


# ---------------------------------------------------------------------------------------------
# artists (timbres) and genres (styles)


@dataclass(frozen=True)
class Singer:
    """The melody voice: register, vocal tract, glottal source, vibrato and breath."""

    center: int  # MIDI pitch the melody is centred on
    formant_scale: float  # >1 = shorter vocal tract, all formants higher
    tilt: float  # glottal source roll-off: harmonic k has amplitude k ** -tilt
    vibrato_hz: float
    vibrato_depth: float  # fraction of f0 (0.01 is about 17 cents)
    breath: float  # aspiration noise relative to the voiced source
    scoop: float = 0.0  # semitones below the note the onset glides up from


@dataclass(frozen=True)
class Artist:
    """An artist is a timbre: a singer plus an accompanying instrument (see :data:`INSTRUMENTS`)."""

    name: str
    singer: Singer
    instrument: str
    description: str = ""


@dataclass(frozen=True)
class Genre:
    """A style: tempo range, metre, modes, harmony, rhythms, accompaniment and drums."""

    name: str
    tempo: tuple[int, int]  # beats per minute, inclusive range
    meter: int  # beats per bar
    modes: tuple[str, ...]
    progressions: tuple[tuple[int, ...], ...]  # chord roots as 0-based scale degrees
    rhythms: tuple[tuple[float, ...], ...]  # melody bar patterns in beats; negative = rest
    cadences: tuple[tuple[float, ...], ...]  # patterns for a phrase's last bar
    accompaniment: str  # "arpeggio" | "pad" | "oompah" | "offbeat"
    drums: tuple[tuple[float, str, float], ...]  # (beat in bar, drum, velocity)
    gate: float  # sounding fraction of a melody note's duration (legato 0.95, staccato 0.6)
    accomp_level: float = 0.5  # accompaniment RMS relative to the voice


INSTRUMENTS = ("organ", "fm_piano", "pluck", "chip", "brass")

ARTISTS: dict[str, Artist] = {
    a.name: a
    for a in (
        Artist(
            "Moss Choir",
            Singer(center=55, formant_scale=0.9, tilt=2.0, vibrato_hz=4.8, vibrato_depth=0.012,
                   breath=0.04),
            "organ",
            "a low, dark male voice over a soft drawbar organ",
        ),
        Artist(
            "Aster Vale",
            Singer(center=69, formant_scale=1.17, tilt=1.3, vibrato_hz=5.6, vibrato_depth=0.009,
                   breath=0.08, scoop=0.5),
            "fm_piano",
            "a bright female voice over an FM electric piano",
        ),
        Artist(
            "Cobalt Strings",
            Singer(center=62, formant_scale=1.05, tilt=1.5, vibrato_hz=5.2, vibrato_depth=0.006,
                   breath=0.05),
            "pluck",
            "a light tenor over a plucked string",
        ),
        Artist(
            "Pixel Kid",
            Singer(center=67, formant_scale=1.12, tilt=0.5, vibrato_hz=0.0, vibrato_depth=0.0,
                   breath=0.0),
            "chip",
            "a buzzy robotic voice without vibrato over chiptune pulse waves",
        ),
        Artist(
            "Ember Brass",
            Singer(center=58, formant_scale=0.98, tilt=1.0, vibrato_hz=6.2, vibrato_depth=0.02,
                   breath=0.03, scoop=1.0),
            "brass",
            "a baritone with wide vibrato over a brass section",
        ),
    )
}  # fmt: skip

_MAJOR_PROGS = ((0, 4, 5, 3), (0, 3, 4, 0), (0, 5, 3, 4), (0, 3, 0, 4))
_MINOR_PROGS = ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2))

GENRES: dict[str, Genre] = {
    g.name: g
    for g in (
        Genre(
            "lullaby", tempo=(60, 72), meter=3, modes=("ionian", "lydian"),
            progressions=_MAJOR_PROGS,
            rhythms=((1, 1, 1), (2, 1), (1.5, 0.5, 1), (1, 2)),
            cadences=((3,), (2, -1)),
            accompaniment="arpeggio",
            drums=((0, "shaker", 0.8), (1, "shaker", 0.6), (2, "shaker", 0.6), (0, "kick", 0.4)),
            gate=0.95, accomp_level=0.55,
        ),
        Genre(
            "ballad", tempo=(76, 92), meter=4, modes=("aeolian", "dorian"),
            progressions=_MINOR_PROGS,
            rhythms=((1, 1, 1, 1), (1.5, 0.5, 2), (2, 1, 1), (1, 1, 2), (0.5, 0.5, 1, 2)),
            cadences=((4,), (2, 1, -1), (3, -1)),
            accompaniment="pad",
            drums=((0, "kick", 0.75), (2, "kick", 0.6), (2.5, "kick", 0.3), (1, "snare", 0.4),
                   (3, "snare", 0.45))
            + tuple((k / 2, "hat", 0.3 - 0.1 * (k % 2)) for k in range(8)),  # eighth hats
            gate=0.92, accomp_level=0.45,
        ),
        Genre(
            "march", tempo=(104, 120), meter=4, modes=("ionian", "mixolydian"),
            progressions=_MAJOR_PROGS,
            rhythms=((0.75, 0.25, 0.75, 0.25, 1, 1), (1, 1, 1, 1), (0.75, 0.25, 1, 2),
                     (1, 0.5, 0.5, 1, 1)),
            cadences=((1, 1, 2), (2, 1, -1)),
            accompaniment="oompah",
            drums=((0, "kick", 0.9), (1, "snare", 0.6), (2, "kick", 0.75), (3, "snare", 0.6),
                   (3.5, "snare", 0.35)),
            gate=0.7, accomp_level=0.55,
        ),
        Genre(
            "dance", tempo=(124, 140), meter=4, modes=("dorian", "mixolydian", "aeolian"),
            progressions=_MINOR_PROGS,
            rhythms=((0.5,) * 8, (0.5, 0.5, 1, 0.5, 0.5, 1), (1, 0.5, 0.5, 0.5, 0.5, 1),
                     (0.5, 1, 0.5, 1, 1)),
            cadences=((0.5, 0.5, 1, 2), (1, 1, 1, -1)),
            accompaniment="offbeat",
            drums=((0, "kick", 1.0), (1, "kick", 0.9), (2, "kick", 0.95), (3, "kick", 0.9),
                   (1, "snare", 0.6), (3, "snare", 0.6), (0.5, "hat", 0.5), (1.5, "hat", 0.45),
                   (2.5, "hat", 0.5), (3.5, "hat", 0.45)),
            gate=0.8, accomp_level=0.6,
        ),
    )
}  # fmt: skip

_FORMS = ("ABAC", "ABAB", "ABCB")
_DYNAMICS = ("crescendo", "decrescendo", "swell", "steady")


# ---------------------------------------------------------------------------------------------
# config, score and summary


@dataclass(frozen=True)
class SynthConfig:
    """What :func:`write_synth_dataset` makes. Song ``i`` depends only on ``(seed, i)`` and the
    fields other than ``n_songs``."""

    n_songs: int = 20
    seconds: float = 10.0
    sample_rate: int = 22050
    seed: int = 0
    artists: tuple[str, ...] = tuple(ARTISTS)
    genres: tuple[str, ...] = tuple(GENRES)
    peak: float = 0.9  # peak amplitude after normalisation
    subtype: str = "PCM_16"  # soundfile subtype of the wav files

    def __post_init__(self) -> None:
        if self.n_songs < 0:
            raise ConfigError(f"n_songs must be >= 0, got {self.n_songs}")
        if self.seconds < 2.0:
            raise ConfigError(f"seconds must be >= 2 (room for a phrase), got {self.seconds}")
        if self.sample_rate < 4000:
            raise ConfigError(f"sample_rate must be >= 4000, got {self.sample_rate}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if not 0.0 < self.peak < 1.0:
            raise ConfigError(f"peak must be in (0, 1), got {self.peak}")
        for kind, names, known in (
            ("artist", self.artists, ARTISTS),
            ("genre", self.genres, GENRES),
        ):
            if not names:
                raise ConfigError(f"at least one {kind} is needed")
            bad = [n for n in names if n not in known]
            if bad:
                raise ConfigError(f"unknown {kind}s {bad}; known: {sorted(known)}")


@dataclass(frozen=True)
class Note:
    """One pitched note: onset and release in seconds, MIDI pitch, velocity in (0, 1]."""

    start: float
    end: float
    pitch: float
    velocity: float


@dataclass(frozen=True)
class SungNote:
    """A melody note that sings one word (or syllable) on ``vowel`` after ``onset``."""

    start: float
    end: float
    pitch: float
    velocity: float
    text: str
    vowel: str
    onset: str


@dataclass(frozen=True)
class Hit:
    """A percussion hit: time in seconds, drum name, velocity."""

    time: float
    drum: str
    velocity: float


@dataclass
class Song:
    """A composed song (the score) before rendering."""

    index: int
    seed: int
    seconds: float
    artist: str
    genre: str
    tempo: int
    meter: int
    tonic: int  # pitch class 0..11
    mode: str
    form: str
    dynamics: str
    title: str
    chords: list[tuple[float, str]]
    melody: list[SungNote]
    lyrics: str
    accompaniment: list[Note]
    bass: list[Note]
    drums: list[Hit]
    noise_seed: int

    @property
    def key(self) -> str:
        """E.g. ``"D dorian"``."""
        return f"{PITCH_NAMES[self.tonic]} {self.mode}"

    def words(self) -> list[dict[str, Any]]:
        """``[{"word", "start", "end"}]`` in seconds, one per melody note, in time order."""
        return [
            {"word": n.text, "start": round(n.start, 4), "end": round(n.end, 4)}
            for n in self.melody
        ]


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`write_synth_dataset` wrote."""

    out_dir: str
    metadata: str
    n_songs: int
    audio_seconds: float
    wall_seconds: float
    artists: tuple[str, ...]
    genres: tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# composition


def assign_labels(cfg: SynthConfig, index: int) -> tuple[str, str]:
    """The ``(artist, genre)`` of song ``index``: each pair once per ``len(a) * len(g)`` songs.

    Artist ``p mod A``, genre ``(p mod G + p div lcm(A, G)) mod G`` with ``p = index mod A·G``:
    by the Chinese remainder theorem the first ``lcm`` songs cover the pairs ``a ≡ g (mod
    gcd)``, and each later block shifts the genre to the next residue class.
    """
    n_a, n_g = len(cfg.artists), len(cfg.genres)
    p = index % (n_a * n_g)
    lcm = n_a * n_g // math.gcd(n_a, n_g)
    return cfg.artists[p % n_a], cfg.genres[(p % n_g + p // lcm) % n_g]


def _degree_pitch(tonic_midi: int, scale: Sequence[int], degree: int) -> int:
    octave, step = divmod(degree, len(scale))
    return tonic_midi + 12 * octave + scale[step]


def _chord_symbol(tonic: int, scale: Sequence[int], root: int) -> str:
    pcs = [(tonic + _degree_pitch(0, scale, root + k)) % 12 for k in (0, 2, 4)]
    third, fifth = (pcs[1] - pcs[0]) % 12, (pcs[2] - pcs[0]) % 12
    quality = {(4, 7): "", (3, 7): "m", (3, 6): "dim", (4, 8): "aug"}.get((third, fifth), "?")
    return PITCH_NAMES[pcs[0]] + quality


def _dynamic(shape: str, u: float) -> float:
    """Loudness contour in (0, 1] at song position ``u`` in [0, 1]."""
    if shape == "crescendo":
        return 0.5 + 0.5 * u
    if shape == "decrescendo":
        return 1.0 - 0.45 * u
    if shape == "swell":
        return 0.55 + 0.45 * math.sin(math.pi * u)
    return 0.85


def compose_song(
    cfg: SynthConfig, index: int, artist: str | None = None, genre: str | None = None
) -> Song:
    """Compose song ``index`` of the dataset ``cfg`` (optionally forcing artist or genre)."""
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    default_artist, default_genre = assign_labels(cfg, index)
    artist = artist or default_artist
    genre = genre or default_genre
    if artist not in ARTISTS or genre not in GENRES:
        raise ValueError(f"unknown artist {artist!r} or genre {genre!r}")
    a, g = ARTISTS[artist], GENRES[genre]
    # one stream per (seed, song, genre): song i never depends on n_songs, and forcing another
    # artist changes only the timbre and the melody's register, not the composition
    rng = np.random.default_rng([cfg.seed, index, list(GENRES).index(genre)])

    tempo = int(rng.integers(g.tempo[0], g.tempo[1] + 1))
    beat = 60.0 / tempo
    bar = g.meter * beat
    mode = str(rng.choice(g.modes))
    scale = MODES[mode]
    tonic = int(rng.integers(12))
    prog = g.progressions[int(rng.integers(len(g.progressions)))]
    form = str(rng.choice(_FORMS))
    dynamics = str(rng.choice(_DYNAMICS))
    n_bars = math.ceil(cfg.seconds / bar)
    end_limit = cfg.seconds - 0.05

    # melody tonic: the tonic pitch a few semitones below the singer's centre
    tonic_midi = a.singer.center - 3 - ((a.singer.center - 3 - tonic) % 12)

    # a small per-song vocabulary with every vowel, so a song repeats words like a song does
    by_vowel = {v: [w for w in LEXICON if w.vowel == v] for v in VOWELS}
    vocab = [
        by_vowel[v][int(j)]
        for v in VOWELS
        for j in rng.choice(len(by_vowel[v]), size=2, replace=False)
    ]

    # phrases: two bars each; a repeated label repeats rhythm, pitches and words
    phrases: dict[str, list[tuple[float, float, int, Word]]] = {}
    degree = 2
    melody: list[SungNote] = []
    for p in range(math.ceil(n_bars / 2)):
        label = form[p % len(form)]
        if label not in phrases:
            phrases[label], degree = _compose_phrase(rng, g, prog, p, degree, vocab)
        for offset_beats, dur_beats, deg, word in phrases[label]:
            start = (2 * p * g.meter + offset_beats) * beat
            end = start + dur_beats * beat * g.gate
            if end > end_limit:
                break
            u = start / cfg.seconds
            accent = 1.0 if offset_beats % g.meter == 0 else 0.9
            vel = _dynamic(dynamics, u) * accent * float(rng.uniform(0.93, 1.0))
            melody.append(
                SungNote(
                    start=start,
                    end=end,
                    pitch=float(_degree_pitch(tonic_midi, scale, deg)),
                    velocity=vel,
                    text=word.text,
                    vowel=word.vowel,
                    onset=word.onset,
                )
            )

    chords: list[tuple[float, str]] = []
    accompaniment: list[Note] = []
    bass: list[Note] = []
    drums: list[Hit] = []
    for b in range(n_bars):
        t0 = b * bar
        root = prog[b % len(prog)]
        chords.append((round(t0, 4), _chord_symbol(tonic, scale, root)))
        triad = [(tonic + _degree_pitch(0, scale, root + k)) % 12 for k in (0, 2, 4)]
        voiced = sorted(53 + (pc - 53) % 12 for pc in triad)  # close position in F3..E4
        bass_root = 36 + (triad[0] - 36) % 12
        bass_fifth = 36 + (triad[2] - 36) % 12
        dyn = _dynamic(dynamics, t0 / cfg.seconds)
        accompaniment += _accompany(g, voiced, t0, beat, dyn)
        bass += _bass_line(g, bass_root, bass_fifth, t0, beat, dyn)
        for pos, drum, vel in g.drums:
            drums.append(Hit(t0 + pos * beat, drum, vel * (0.6 + 0.4 * dyn)))

    accompaniment = _clip_notes(accompaniment, cfg.seconds)
    bass = _clip_notes(bass, cfg.seconds)
    drums = [h for h in drums if h.time < cfg.seconds - 0.02]

    lyrics_lines: list[str] = []
    for p in range(math.ceil(n_bars / 2)):
        lo, hi = 2 * p * bar, 2 * (p + 1) * bar
        line = [n.text for n in melody if lo <= n.start < hi]
        if line:
            lyrics_lines.append(" ".join(line))
    title_words = [n.text for n in melody[:2]] or ["untitled"]
    return Song(
        index=index,
        seed=cfg.seed,
        seconds=cfg.seconds,
        artist=artist,
        genre=genre,
        tempo=tempo,
        meter=g.meter,
        tonic=tonic,
        mode=mode,
        form=form,
        dynamics=dynamics,
        title=" ".join(w.capitalize() for w in title_words),
        chords=chords,
        melody=melody,
        lyrics="\n".join(lyrics_lines),
        accompaniment=accompaniment,
        bass=bass,
        drums=drums,
        noise_seed=int(rng.integers(2**31)),
    )


def _compose_phrase(
    rng: np.random.Generator,
    g: Genre,
    prog: Sequence[int],
    phrase_index: int,
    degree: int,
    vocab: Sequence[Word],
) -> tuple[list[tuple[float, float, int, Word]], int]:
    """Two bars of melody: ``[(offset_beats, duration_beats, scale_degree, word)]``.

    Strong beats take a chord tone near the previous note, other notes move by step, the last
    note cadences (dominant on even phrases, tonic on odd ones). Returns the last degree too.
    """
    notes: list[tuple[float, float, int, Word]] = []
    strong_every = 3 if g.meter == 3 else 2
    lo, hi = -3, 9
    for bar_in_phrase in range(2):
        last_bar = bar_in_phrase == 1
        patterns = g.cadences if last_bar else g.rhythms
        pattern = patterns[int(rng.integers(len(patterns)))]
        root = prog[(2 * phrase_index + bar_in_phrase) % len(prog)]
        tones = [d for d in range(lo, hi + 1) if (d - root) % 7 in (0, 2, 4)]
        pos = 0.0
        sounding = [i for i, x in enumerate(pattern) if x > 0]
        for i, dur in enumerate(pattern):
            if dur < 0:
                pos += -dur
                continue
            if last_bar and i == sounding[-1]:
                target = 4 if phrase_index % 2 == 0 else 0
                degree = min((target, target + 7), key=lambda d: abs(d - degree))
            elif pos % strong_every == 0:
                near = sorted(tones, key=lambda d: (abs(d - degree), d))[:2]
                degree = int(near[int(rng.integers(len(near)))])
            else:
                step = int(rng.choice((-2, -1, -1, 0, 1, 1, 2)))
                if degree >= 7:  # lean back towards the middle of the range
                    step = -abs(step)
                elif degree <= 0:
                    step = abs(step)
                degree = int(np.clip(degree + step, lo, hi))
            # a random word of the song's vocabulary, never the previous one twice in a row
            j = int(rng.integers(len(vocab) - 1))
            word = vocab[j + (j >= vocab.index(notes[-1][3]))] if notes else vocab[j]
            notes.append((bar_in_phrase * g.meter + pos, dur, degree, word))
            pos += dur
    return notes, degree


def _accompany(g: Genre, voiced: list[int], t0: float, beat: float, dyn: float) -> list[Note]:
    out: list[Note] = []
    if g.accompaniment == "arpeggio":  # broken chord in eighths
        order = (0, 1, 2, 1, 2, 1, 0, 1)[: 2 * g.meter]
        for k, idx in enumerate(order):
            s = t0 + 0.5 * k * beat
            out.append(Note(s, s + beat, voiced[idx] + 12 * (k % 3 == 2), 0.55 * dyn))
    elif g.accompaniment == "pad":  # the chord held for the bar
        out += [Note(t0, t0 + g.meter * beat * 0.98, p, 0.5 * dyn) for p in voiced]
    elif g.accompaniment == "oompah":  # chord stabs on the off-beats 2 and 4
        for pos in range(1, g.meter, 2):
            s = t0 + pos * beat
            out += [Note(s, s + 0.45 * beat, p, 0.6 * dyn) for p in voiced]
    elif g.accompaniment == "offbeat":  # syncopated stabs on every "and"
        for pos in range(g.meter):
            s = t0 + (pos + 0.5) * beat
            out += [Note(s, s + 0.3 * beat, p, 0.6 * dyn) for p in voiced]
    else:
        raise ValueError(f"unknown accompaniment {g.accompaniment!r}")
    return out


def _bass_line(g: Genre, root: int, fifth: int, t0: float, beat: float, dyn: float) -> list[Note]:
    if g.accompaniment == "arpeggio":
        return [Note(t0, t0 + g.meter * beat * 0.95, root, 0.6 * dyn)]
    if g.accompaniment == "pad":
        half = g.meter * beat / 2
        return [
            Note(t0, t0 + half * 0.95, root, 0.6 * dyn),
            Note(
                t0 + half,
                t0 + 2 * half * 0.97,
                fifth if fifth < root + 12 else fifth - 12,
                0.5 * dyn,
            ),
        ]
    if g.accompaniment == "oompah":  # root on 1, fifth on 3
        return [
            Note(t0 + k * beat, t0 + (k + 0.8) * beat, (root, fifth)[(k // 2) % 2], 0.7 * dyn)
            for k in range(0, g.meter, 2)
        ]
    # offbeat: driving eighths jumping between root and octave
    return [Note(t0 + 0.5 * k * beat, t0 + 0.5 * (k + 0.7) * beat, root + 12 * (k % 2),
                 (0.7 if k % 2 == 0 else 0.5) * dyn) for k in range(2 * g.meter)]  # fmt: skip


def _clip_notes(notes: Iterable[Note], seconds: float) -> list[Note]:
    return [
        Note(n.start, min(n.end, seconds - 0.02), n.pitch, n.velocity)
        for n in notes
        if n.start < seconds - 0.1
    ]


# ---------------------------------------------------------------------------------------------
# sound: band-limited wavetable oscillators, envelopes, instruments, voice, drums

_TABLE = 2048
_MAX_HARMONICS = 64


@lru_cache(maxsize=1)
def _sines() -> np.ndarray:
    """``sin(2π k n / N)`` for harmonics k = 1..64 over one table period: (K, N)."""
    k = np.arange(1, _MAX_HARMONICS + 1)[:, None]
    return np.sin(2 * np.pi * k * np.arange(_TABLE)[None, :] / _TABLE)


def harmonic_table(amps: np.ndarray, f0_max: float, sample_rate: int) -> np.ndarray:
    """One period of ``Σ_k amps[k-1] sin(kθ)`` keeping harmonics below 0.45·sr (no aliasing)."""
    k_max = int(min(len(amps), _MAX_HARMONICS, max(1, 0.45 * sample_rate // max(f0_max, 1.0))))
    return amps[:k_max] @ _sines()[:k_max]


def _lookup(table: np.ndarray, cycles: np.ndarray) -> np.ndarray:
    """Read a one-period table at phase ``cycles`` (in periods) with linear interpolation."""
    pos = (cycles % 1.0) * _TABLE
    i0 = pos.astype(np.int64)
    frac = pos - i0
    i0 %= _TABLE
    return table[i0] * (1.0 - frac) + table[(i0 + 1) % _TABLE] * frac


def _harmonics(kind: str) -> np.ndarray:
    k = np.arange(1, _MAX_HARMONICS + 1, dtype=np.float64)
    if kind == "organ":  # drawbars 8', 4', 2 2/3', 2' and a little 1'
        amps = np.zeros(_MAX_HARMONICS)
        amps[[0, 1, 2, 3, 7]] = (1.0, 0.45, 0.2, 0.12, 0.04)
        return amps
    if kind == "pulse":  # 25% duty cycle
        return np.abs(np.sin(np.pi * k * 0.25)) / k
    if kind == "saw":
        return 1.0 / k
    if kind == "dark":
        return k**-2.5
    if kind == "pluck":
        return k**-0.9 * np.abs(np.sin(np.pi * k * 0.18))  # plucked at 18% of the string
    raise ValueError(kind)


def _gate(n: int, gate_n: int, release_n: int) -> np.ndarray:
    """1 until ``gate_n``, then a linear release to 0 over ``release_n`` samples."""
    env = np.ones(n)
    tail = np.arange(n - gate_n) / max(release_n, 1)
    env[gate_n:] = np.clip(1.0 - tail, 0.0, 1.0)
    return env


def _attack(t: np.ndarray, seconds: float) -> np.ndarray:
    return np.minimum(1.0, t / seconds)


def render_instrument(kind: str, notes: Sequence[Note], n_samples: int, sr: int) -> np.ndarray:
    """Render notes on one of :data:`INSTRUMENTS` into a float64 array of ``n_samples``."""
    out = np.zeros(n_samples)
    release = 0.08
    rel_n = int(release * sr)
    tables: dict[tuple[str, int], np.ndarray] = {}

    def table(name: str, f0: float) -> np.ndarray:
        key = (name, int(0.45 * sr // max(f0, 1.0)))  # same harmonic count → same table
        if key not in tables:
            tables[key] = harmonic_table(_harmonics(name), f0, sr)
        return tables[key]

    for note in notes:
        s = int(round(note.start * sr))
        if s >= n_samples:
            continue
        gate_n = max(1, int(round((note.end - note.start) * sr)))
        n = min(gate_n + rel_n, n_samples - s)
        if n <= 0:
            continue
        t = np.arange(n) / sr
        f0 = 440.0 * 2.0 ** ((note.pitch - 69.0) / 12.0)
        cycles = f0 * t
        if kind == "organ":
            x = _lookup(table("organ", f0), cycles) * (1 + 0.06 * np.sin(2 * np.pi * 5.7 * t))
            env = _attack(t, 0.015)
        elif kind == "fm_piano":  # 1:1 FM, index decaying (Chowning 1973)
            index = 2.4 * np.exp(-t / 0.25) + 0.25
            x = np.sin(2 * np.pi * cycles + index * np.sin(2 * np.pi * cycles))
            env = _attack(t, 0.003) * np.exp(-t / 0.9)
        elif kind == "pluck":  # bright attack fading to a dark tail
            w = np.exp(-t / 0.09)
            bright, dark = table("pluck", f0), table("dark", f0)
            x = w * _lookup(bright, cycles) + (1 - w) * 1.5 * _lookup(dark, cycles)
            env = _attack(t, 0.002) * np.exp(-t / 0.5)
        elif kind == "chip":
            x = _lookup(table("pulse", f0), cycles)
            env = _attack(t, 0.003) * (0.75 + 0.25 * np.exp(-t / 0.06))
        elif kind == "brass":  # brightness opens with the attack
            w = 0.85 * np.clip(t / 0.09, 0.0, 1.0)
            x = w * _lookup(table("saw", f0), cycles) + (1 - w) * _lookup(table("dark", f0), cycles)
            env = _attack(t, 0.045) * (0.85 + 0.15 * np.exp(-t / 0.15))
        else:
            raise ValueError(f"unknown instrument {kind!r}; known: {INSTRUMENTS}")
        out[s : s + n] += note.velocity * env * _gate(n, gate_n, rel_n) * x
    return out


def _resonate(x: np.ndarray, freq: float, bw: float, sr: int) -> np.ndarray:
    """A two-pole resonator with unity gain at DC (Klatt 1980, eq. 2)."""
    c = -math.exp(-2 * math.pi * bw / sr)
    b = 2 * math.exp(-math.pi * bw / sr) * math.cos(2 * math.pi * freq / sr)
    return lfilter([1.0 - b - c], [1.0, -b, -c], x)


def vowel_formants(vowel: str, scale: float = 1.0, sample_rate: int = 22050) -> list[tuple]:
    """``[(freq, bandwidth)]`` of the three formants of ``vowel``, scaled and kept below 0.45·sr."""
    freqs, bws = VOWEL_FORMANTS[vowel]
    top = 0.45 * sample_rate
    return [(min(f * scale, top * (0.8 + 0.1 * i)), b * scale) for i, (f, b) in enumerate(zip(freqs, bws))]  # fmt: skip


def formant_filter(x: np.ndarray, vowel: str, sample_rate: int, scale: float = 1.0) -> np.ndarray:
    """Cascade of the vowel's three formant resonators (a Klatt cascade vocal tract)."""
    for freq, bw in vowel_formants(vowel, scale, sample_rate):
        x = _resonate(x, freq, bw, sample_rate)
    return x


def formant_response(
    freqs: np.ndarray, vowel: str, sample_rate: int = 22050, scale: float = 1.0
) -> np.ndarray:
    """Magnitude response of :func:`formant_filter` at ``freqs`` (Hz)."""
    z = np.exp(-2j * np.pi * np.asarray(freqs, dtype=np.float64) / sample_rate)
    h = np.ones_like(z)
    for freq, bw in vowel_formants(vowel, scale, sample_rate):
        c = -math.exp(-2 * math.pi * bw / sample_rate)
        b = 2 * math.exp(-math.pi * bw / sample_rate) * math.cos(2 * math.pi * freq / sample_rate)
        h *= (1.0 - b - c) / (1.0 - b * z - c * z * z)
    return np.abs(h)


def band_energy(audio: np.ndarray, sample_rate: int, lo: float, hi: float) -> float:
    """Fraction of the (Hann-windowed) power spectrum of ``audio`` in ``[lo, hi)`` Hz."""
    x = np.asarray(audio, dtype=np.float64)
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    f = np.fft.rfftfreq(len(x), 1.0 / sample_rate)
    total = power.sum()
    return float(power[(f >= lo) & (f < hi)].sum() / total) if total > 0 else 0.0


def spectral_centroid(audio: np.ndarray, sample_rate: int) -> float:
    """Power-weighted mean frequency (Hz) of ``audio``."""
    x = np.asarray(audio, dtype=np.float64)
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    f = np.fft.rfftfreq(len(x), 1.0 / sample_rate)
    return float((f * power).sum() / max(power.sum(), 1e-20))


def _burst(onset: str, vowel: str, n: int, sr: int, rng: np.random.Generator, scale: float):
    """The consonant noise of ``onset`` (``n`` samples or fewer), or None for vowels/sonorants."""
    cls = ONSET_CLASSES.get(onset, "plosive" if onset else "none")
    if cls in ("none", "sonorant"):
        return None
    t = np.arange(n) / sr
    noise = rng.standard_normal(n)
    top = 0.42 * sr
    if cls == "plosive":  # a short release burst
        y = _resonate(noise, min(_PLOSIVE_BURST.get(onset, 2500.0), top), 1500.0, sr)
        env, level = np.exp(-t / 0.006), 0.5
    elif cls == "sibilant":  # "s"/"sh" hiss
        y = _resonate(noise, min(6200.0 if onset in ("s", "z") else 3400.0, top), 2500.0, sr)
        env, level = np.sin(np.pi * np.arange(n) / n) ** 0.5, 0.35
    elif cls == "aspirate":  # "h": breath through the vowel's own formants
        y = formant_filter(noise, vowel, sr, scale)
        env, level = np.sin(np.pi * np.arange(n) / n), 0.25
    else:  # "f", "th", "v", "w": soft broadband friction
        y = _resonate(noise, min(4500.0, top), 4000.0, sr)
        env, level = np.sin(np.pi * np.arange(n) / n), 0.18
    y = y * env
    rms = math.sqrt(float(np.mean(y**2))) + 1e-12
    return level * y / rms


# consonant duration and voice-onset delay in seconds, by onset class
_CONSONANT_TIMING = {
    "plosive": (0.02, 0.018),
    "sibilant": (0.08, 0.06),
    "fricative": (0.05, 0.04),
    "aspirate": (0.05, 0.035),
    "sonorant": (0.0, 0.0),
    "none": (0.0, 0.0),
}


def sing(notes: Sequence[SungNote], n_samples: int, sr: int, singer: Singer, seed: int = 0):
    """Render sung notes: consonant burst, then a glottal source through the vowel's formants.

    Each note is filtered on its own (a syllable), with a 50 ms release overlapping the next;
    its voiced part is scaled to RMS ``0.3·velocity`` so vowels are equally loud.
    """
    out = np.zeros(n_samples)
    rng = np.random.default_rng(seed)
    release_n = int(0.05 * sr)
    src_amps = np.arange(1, _MAX_HARMONICS + 1, dtype=np.float64) ** -singer.tilt
    for note in notes:
        s = int(round(note.start * sr))
        if s >= n_samples:
            continue
        dur = note.end - note.start
        cls = ONSET_CLASSES.get(note.onset, "plosive" if note.onset else "none")
        burst_s, delay_s = _CONSONANT_TIMING[cls]
        squeeze = min(1.0, 0.35 * dur / max(delay_s, 1e-9)) if delay_s else 1.0
        burst_n, delay_n = int(burst_s * squeeze * sr), int(delay_s * squeeze * sr)
        burst = _burst(note.onset, note.vowel, burst_n, sr, rng, singer.formant_scale)
        if burst is not None and burst_n > 0:
            m = min(burst_n, n_samples - s)
            out[s : s + m] += note.velocity * burst[:m]

        v0 = s + delay_n
        gate_n = max(1, int(round(dur * sr)) - delay_n)
        n = min(gate_n + release_n, n_samples - v0)
        if n <= 0:
            continue
        t = np.arange(n) / sr
        f0 = 440.0 * 2.0 ** ((note.pitch - 69.0) / 12.0)
        semis = -singer.scoop * np.exp(-t / 0.03) if singer.scoop else 0.0
        vib = singer.vibrato_depth * np.sin(2 * np.pi * singer.vibrato_hz * t + rng.uniform(0, 6.3))
        vib = vib * np.clip((t - 0.12) / 0.2, 0.0, 1.0)  # vibrato fades in after the onset
        freq = f0 * 2.0 ** (semis / 12.0) * (1.0 + vib)
        cycles = np.cumsum(freq) / sr
        src = _lookup(harmonic_table(src_amps, f0 * (1 + singer.vibrato_depth), sr), cycles)
        if singer.breath:
            src = src + singer.breath * rng.standard_normal(n)
        attack = 0.05 if cls == "sonorant" else 0.02
        env = _attack(t, attack) * _gate(n, gate_n, release_n)
        voiced = formant_filter(src * env, note.vowel, sr, singer.formant_scale)
        rms = math.sqrt(float(np.mean(voiced[:gate_n] ** 2))) + 1e-12
        out[v0 : v0 + n] += 0.3 * note.velocity * voiced / rms
    return out


def _drum_kit(sr: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One sample per drum, peak 1; the noise comes from ``rng`` so songs are reproducible."""

    def t_of(seconds: float) -> np.ndarray:
        return np.arange(int(seconds * sr)) / sr

    t = t_of(0.3)
    freq = 45.0 + 110.0 * np.exp(-t / 0.03)
    kick = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / 0.11)
    t = t_of(0.25)
    snare = _resonate(rng.standard_normal(len(t)), min(3000.0, 0.4 * sr), 3000.0, sr)
    snare = snare / np.abs(snare).max() * np.exp(-t / 0.06)
    snare += 0.6 * np.sin(2 * np.pi * 185.0 * t) * np.exp(-t / 0.04)
    t = t_of(0.08)
    hat = np.diff(rng.standard_normal(len(t) + 1)) * np.exp(-t / 0.015)
    t = t_of(0.12)
    shaker = np.diff(rng.standard_normal(len(t) + 1)) * np.minimum(1, t / 0.02) * np.exp(-t / 0.03)
    kit = {"kick": kick, "snare": snare, "hat": 0.5 * hat, "shaker": 0.4 * shaker}
    return {k: v / np.abs(v).max() for k, v in kit.items()}


def render_drums(hits: Sequence[Hit], n_samples: int, sr: int, seed: int = 0) -> np.ndarray:
    """Place the drum samples of :func:`_drum_kit` at each hit."""
    out = np.zeros(n_samples)
    kit = _drum_kit(sr, np.random.default_rng(seed))
    level = {"kick": 1.0, "snare": 0.7, "hat": 0.35, "shaker": 0.45}
    for h in hits:
        s = int(round(h.time * sr))
        x = kit[h.drum]
        m = min(len(x), n_samples - s)
        if m > 0:
            out[s : s + m] += h.velocity * level[h.drum] * x[:m]
    return out


def render_stems(song: Song, sample_rate: int) -> dict[str, np.ndarray]:
    """The song's stems as float64 arrays: ``vocals``, ``chords``, ``bass``, ``drums``.

    Levels are set here (RMS relative to the vocals); the mix is their sum.
    """
    n = int(round(song.seconds * sample_rate))
    a, g = ARTISTS[song.artist], GENRES[song.genre]
    vocals = sing(song.melody, n, sample_rate, a.singer, seed=song.noise_seed)
    chords = render_instrument(a.instrument, song.accompaniment, n, sample_rate)
    bass = render_instrument(a.instrument, song.bass, n, sample_rate)
    drums = render_drums(song.drums, n, sample_rate, seed=song.noise_seed + 1)

    def rms(x: np.ndarray) -> float:
        return math.sqrt(float(np.mean(x**2))) + 1e-12

    ref = rms(vocals) if np.any(vocals) else 0.05  # a song too short for a word still plays
    return {
        "vocals": vocals,
        "chords": chords * (g.accomp_level * ref / rms(chords)),
        "bass": bass * (0.5 * ref / rms(bass)),
        "drums": drums * (0.45 * ref / rms(drums)),
    }


def mix(stems: dict[str, np.ndarray], sample_rate: int, peak: float = 0.9) -> np.ndarray:
    """Sum stems, fade the edges (5 ms in, 30 ms out) and normalise to ``peak``: float32."""
    x = sum(stems.values())
    fade_in, fade_out = int(0.005 * sample_rate), int(0.03 * sample_rate)
    x[:fade_in] *= np.linspace(0.0, 1.0, fade_in)
    x[len(x) - fade_out :] *= np.linspace(1.0, 0.0, fade_out)
    top = float(np.abs(x).max())
    if not np.isfinite(top):
        raise FloatingPointError("non-finite sample in the synth mix")
    if top > 0:
        x = x * (peak / top)
    return x.astype(np.float32)


def song_metadata(song: Song, file: str, sample_rate: int) -> dict[str, Any]:
    """The ``metadata.jsonl`` row of a song."""
    return {
        "file": file,
        "artist": song.artist,
        "genre": song.genre,
        "lyrics": song.lyrics,
        "words": song.words(),
        "title": song.title,
        "seed": song.seed,
        "index": song.index,
        "seconds": song.seconds,
        "sample_rate": sample_rate,
        "tempo": song.tempo,
        "meter": song.meter,
        "key": song.key,
        "form": song.form,
        "dynamics": song.dynamics,
        "chords": [[t, c] for t, c in song.chords],
        "melody": [[round(n.start, 4), round(n.end, 4), n.pitch] for n in song.melody],
    }


def render_song(
    cfg: SynthConfig, index: int, artist: str | None = None, genre: str | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Compose and render song ``index``: ``(audio float32[T] in [-peak, peak], metadata)``.

    ``T = round(cfg.seconds * cfg.sample_rate)``. ``artist``/``genre`` override the dataset's
    assignment (used by tests to compare timbres and styles on otherwise equal songs). The
    metadata's ``file`` is the path :func:`write_synth_dataset` gives the song.
    """
    song = compose_song(cfg, index, artist, genre)
    audio = mix(render_stems(song, cfg.sample_rate), cfg.sample_rate, cfg.peak)
    return audio, song_metadata(song, song_file(index), cfg.sample_rate)


def song_file(index: int) -> str:
    """Relative path of song ``index`` inside a dataset folder."""
    return f"audio/synth_{index:05d}.wav"


# ---------------------------------------------------------------------------------------------
# writing a dataset


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write one JSON object per line, atomically (a temporary file renamed into place)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def progress_bar(enabled: bool):
    """A rich progress bar (disabled: no output)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def write_synth_dataset(
    out_dir: str | os.PathLike, cfg: SynthConfig | None = None, progress: bool = True
) -> SynthSummary:
    """Render ``cfg.n_songs`` songs to ``out_dir/audio/*.wav`` and ``out_dir/metadata.jsonl``.

    The config is saved beside them as ``synth_config.json`` (rebuild it with
    ``teacher.config.load_config(SynthConfig, path)``).

    Deterministic: the same config writes the same files, replacing earlier ones; stale
    ``synth_*.wav`` files from a bigger earlier run are removed.
    """
    cfg = cfg or SynthConfig()
    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with progress_bar(progress) as bar:
        task = bar.add_task("synth songs", total=cfg.n_songs)
        for i in range(cfg.n_songs):
            audio, meta = render_song(cfg, i)
            sf.write(out / meta["file"], audio, cfg.sample_rate, subtype=cfg.subtype)
            rows.append(meta)
            bar.advance(task)
    keep = {out / r["file"] for r in rows}
    for stale in (out / "audio").glob("synth_*.wav"):
        if stale not in keep:
            stale.unlink()
    write_jsonl(out / "metadata.jsonl", rows)
    save_config(cfg, str(out / "synth_config.json"))
    wall = time.perf_counter() - t0
    summary = SynthSummary(
        out_dir=str(out),
        metadata=str(out / "metadata.jsonl"),
        n_songs=cfg.n_songs,
        audio_seconds=cfg.n_songs * cfg.seconds,
        wall_seconds=wall,
        artists=tuple(sorted({r["artist"] for r in rows})),
        genres=tuple(sorted({r["genre"] for r in rows})),
    )
    logger.info(
        "wrote %d synth songs (%.0f s of audio) to %s in %.1f s",
        cfg.n_songs,
        summary.audio_seconds,
        out,
        wall,
    )
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m teacher.synth OUT_DIR [--n-songs N] [--seconds S] [--sample-rate SR]``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    defaults = SynthConfig()
    p.add_argument("--n-songs", type=int, default=defaults.n_songs)
    p.add_argument("--seconds", type=float, default=defaults.seconds)
    p.add_argument("--sample-rate", type=int, default=defaults.sample_rate)
    p.add_argument("--seed", type=int, default=defaults.seed)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = SynthConfig(
        n_songs=args.n_songs, seconds=args.seconds, sample_rate=args.sample_rate, seed=args.seed
    )
    summary = write_synth_dataset(args.out_dir, cfg)
    logger.info("%s", json.dumps(asdict(summary)))


if __name__ == "__main__":
    main()
