"""The synth's artists (timbres: a singer plus an accompanying instrument) and genres (styles:
tempo range, metre, modes, progressions, rhythms, accompaniment and drum patterns)."""

from __future__ import annotations

from dataclasses import dataclass

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

# one row per artist: name, Singer(center, formant_scale, tilt, vibrato_hz, vibrato_depth,
# breath[, scoop]), instrument, description
ARTISTS: dict[str, Artist] = {
    a.name: a
    for a in (
        Artist("Moss Choir", Singer(55, 0.9, 2.0, 4.8, 0.012, 0.04), "organ",
               "a low, dark male voice over a soft drawbar organ"),
        Artist("Aster Vale", Singer(69, 1.17, 1.3, 5.6, 0.009, 0.08, 0.5), "fm_piano",
               "a bright female voice over an FM electric piano"),
        Artist("Cobalt Strings", Singer(62, 1.05, 1.5, 5.2, 0.006, 0.05), "pluck",
               "a light tenor over a plucked string"),
        Artist("Pixel Kid", Singer(67, 1.12, 0.5, 0.0, 0.0, 0.0), "chip",
               "a buzzy robotic voice without vibrato over chiptune pulse waves"),
        Artist("Ember Brass", Singer(58, 0.98, 1.0, 6.2, 0.02, 0.03, 1.0), "brass",
               "a baritone with wide vibrato over a brass section"),
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
