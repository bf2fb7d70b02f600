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

The code is split by concern: :mod:`~teacher.data.synth.phonetics` (vowels, onsets, the
lexicon), :mod:`~teacher.data.synth.styles` (artists and genres),
:mod:`~teacher.data.synth.compose` (the score), :mod:`~teacher.data.synth.render` (instruments,
voice, drums, mix) and :mod:`~teacher.data.synth.dataset` (the config, a song end to end and
the dataset folder). This package re-exports their public names.

``python -m teacher.data.synth OUT_DIR --n-songs 20`` writes a dataset.
"""

from teacher.data.synth.compose import (
    MODES,
    PITCH_NAMES,
    Hit,
    Note,
    Song,
    SungNote,
    assign_labels,
    compose_song,
)
from teacher.data.synth.dataset import (
    SynthConfig,
    SynthSummary,
    main,
    progress_bar,
    render_song,
    song_file,
    song_metadata,
    write_jsonl,
    write_synth_dataset,
)
from teacher.data.synth.phonetics import (
    LEXICON,
    ONSET_CLASSES,
    VOWEL_FORMANTS,
    VOWELS,
    Word,
    syllable_phonetics,
    word_vowel,
)
from teacher.data.synth.render import (
    band_energy,
    formant_filter,
    formant_response,
    harmonic_table,
    mix,
    render_drums,
    render_instrument,
    render_stems,
    sing,
    spectral_centroid,
    vowel_formants,
)
from teacher.data.synth.styles import (
    ARTISTS,
    GENRES,
    INSTRUMENTS,
    Artist,
    Genre,
    Singer,
)

__all__ = [
    "ARTISTS",
    "Artist",
    "GENRES",
    "Genre",
    "Hit",
    "INSTRUMENTS",
    "LEXICON",
    "MODES",
    "Note",
    "ONSET_CLASSES",
    "PITCH_NAMES",
    "Singer",
    "Song",
    "SungNote",
    "SynthConfig",
    "SynthSummary",
    "VOWELS",
    "VOWEL_FORMANTS",
    "Word",
    "assign_labels",
    "band_energy",
    "compose_song",
    "formant_filter",
    "formant_response",
    "harmonic_table",
    "main",
    "mix",
    "progress_bar",
    "render_drums",
    "render_instrument",
    "render_song",
    "render_stems",
    "sing",
    "song_file",
    "song_metadata",
    "spectral_centroid",
    "syllable_phonetics",
    "vowel_formants",
    "word_vowel",
    "write_jsonl",
    "write_synth_dataset",
]
