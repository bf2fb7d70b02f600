"""Composing a synth song: the score before rendering.

Keys and modes, the artist/genre of each song index, a chord progression per bar, two-bar
melody phrases in a song form with one lexicon word per note, the accompaniment, the bass line,
percussion hits and a dynamics contour, all drawn from one seeded random stream per song.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from teacher.data.synth.phonetics import LEXICON, VOWELS, Word
from teacher.data.synth.styles import ARTISTS, GENRES, Genre

if TYPE_CHECKING:
    from teacher.data.synth.dataset import SynthConfig

PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")

MODES: dict[str, tuple[int, ...]] = {
    "ionian": (0, 2, 4, 5, 7, 9, 11),
    "lydian": (0, 2, 4, 6, 7, 9, 11),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "aeolian": (0, 2, 3, 5, 7, 8, 10),
}

_FORMS = ("ABAC", "ABAB", "ABCB")
_DYNAMICS = ("crescendo", "decrescendo", "swell", "steady")


# ---------------------------------------------------------------------------------------------
# the score


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
