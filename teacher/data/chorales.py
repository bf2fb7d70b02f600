"""Real compositions with real lyrics, offline: the Bach chorales bundled with music21.

``write_chorales(out_dir)`` parses each chorale of music21's corpus (371 Riemenschneider
numbers, 350 distinct files; about 330 carry soprano lyrics), expands its repeats, builds a
:class:`pretty_midi.PrettyMIDI` of its parts, renders it to audio and writes
``audio/<bwv>.wav``, ``midi/<bwv>.mid`` and ``metadata.jsonl``.

Choices, so the data is useful for training a lyrics-conditioned model:

* Lyrics are verse 1 of the soprano, sung in order. Repeats are expanded (``expandRepeats``);
  on the k-th pass through a repeated passage the k-th lyric line is sung, which is how the
  corpus encodes a stanza whose first two lines share music ("Aus meines Herzens Grunde ...
  in dieser Morgenstunde ..."). Without repeats the lowest-numbered lyric line is sung.
  Syllables are joined into words by their ``syllabic`` (begin/middle/end/single).
* ``words`` hold the real timing: a word starts at the onset of its first syllable's note and
  ends when its last syllable's note (with ties and melisma notes) ends, converted from quarter
  lengths to seconds at the score's tempo marks, or ``qpm`` (default 100) when there are none
  (the corpus has none). Fermatas are not lengthened, so audio and timings agree exactly.
* The lyrics are audible: with ``sing=True`` (default) the soprano line is sung by the
  source-filter voice of :mod:`teacher.data.synth` (formants from each syllable's vowel, a noise
  burst from its onset consonant); the other parts are played by the chorale's ensemble.
* Artists are ensembles (the composer is always Bach): chorale ``i`` in Riemenschneider order
  gets ``ENSEMBLES[i % 5]`` (organ, brass, harpsichord, electric piano, chiptune), so a model
  sees several timbres; ``composer`` holds "J.S. Bach". The genre is "chorale".
* Renderer: ``"fluidsynth"`` plays the parts with the General MIDI soundfont bundled with
  pretty_midi (needs the ``pyfluidsynth`` package and the libfluidsynth3 system library);
  ``"additive"`` uses the band-limited instruments of :mod:`teacher.data.synth` (pure numpy, no
  clicks or aliasing); ``"pretty_midi"`` is ``Instrument.synthesize`` with a per-ensemble
  waveform. ``"auto"`` picks fluidsynth when it works, else additive.

A chorale that fails to parse or render is skipped with one warning and counted.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from teacher.data import synth

logger = logging.getLogger(__name__)

RENDERERS = ("auto", "fluidsynth", "additive", "pretty_midi")


def _harmonic_wave(amps: Sequence[float]) -> Callable[[np.ndarray], np.ndarray]:
    def wave(phase: np.ndarray) -> np.ndarray:
        return sum(a * np.sin((k + 1) * phase) for k, a in enumerate(amps))

    return wave


@dataclass(frozen=True)
class Ensemble:
    """How the non-sung parts are played: a General MIDI program (fluidsynth), an instrument of
    :data:`teacher.data.synth.INSTRUMENTS` (additive) and harmonic amplitudes (pretty_midi)."""

    artist: str
    program: int
    instrument: str
    harmonics: tuple[float, ...]


ENSEMBLES: tuple[Ensemble, ...] = (
    Ensemble("Bach Organ", 19, "organ", (1.0, 0.45, 0.2, 0.12)),  # GM Church Organ
    Ensemble("Bach Brass", 61, "brass", (1.0, 0.5, 0.33, 0.25, 0.2, 0.16)),  # GM Brass Section
    Ensemble("Bach Harpsichord", 6, "pluck", (1.0, 0.6, 0.4, 0.3, 0.2)),  # GM Harpsichord
    Ensemble("Bach E-Piano", 4, "fm_piano", (1.0, 0.3, 0.1)),  # GM Electric Piano 1
    Ensemble("Bach Chiptune", 80, "chip", (1.0, 0.0, 0.33, 0.0, 0.2)),  # GM Lead 1 (square)
)

COMPOSER = "J.S. Bach"
GENRE = "chorale"
SOPRANO = synth.Singer(
    center=67, formant_scale=1.15, tilt=1.3, vibrato_hz=5.3, vibrato_depth=0.008, breath=0.05
)

_VERSE_NUMBER = re.compile(r"^\d+\.\s*")  # "1. An Wasserflüssen" → "An"
_PUNCT = ',.;:!?"()«»„“”‚‘’'


@dataclass(frozen=True)
class ChoraleSummary:
    """What :func:`write_chorales` wrote."""

    out_dir: str
    metadata: str
    n_written: int
    n_skipped: int  # failed to parse or render (one warning each)
    n_without_lyrics: int  # left out because the soprano has no lyrics (require_lyrics)
    audio_seconds: float
    wall_seconds: float
    renderer: str
    artists: tuple[str, ...]


@dataclass(frozen=True)
class ChoraleEntry:
    """One chorale of the corpus: its Riemenschneider number, corpus path and title."""

    number: int
    path: str  # e.g. "bach/bwv269"
    title: str

    @property
    def name(self) -> str:
        """File stem, e.g. ``"bwv269"``."""
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Syllable:
    """A sung syllable: its text, how it joins (begin/middle/end/single) and its span (s)."""

    text: str
    syllabic: str
    start: float
    end: float
    fermata: bool = False


@dataclass
class Chorale:
    """A parsed chorale ready to render."""

    entry: ChoraleEntry
    pm: Any  # pretty_midi.PrettyMIDI of every part except a sung soprano
    sung: list[synth.SungNote]  # empty when the soprano is played (sing=False)
    syllables: list[Syllable]
    seconds: float  # score length in seconds
    qpm: float
    key: str | None
    expanded: bool


def chorale_entries() -> list[ChoraleEntry]:
    """The corpus's chorales in Riemenschneider order, each distinct file once (350)."""
    from music21 import corpus

    table = corpus.chorales.ChoraleListRKBWV().byRiemenschneider
    seen: dict[str, ChoraleEntry] = {}
    for number in sorted(table):
        row = table[number]
        path = f"bach/bwv{row['bwv']}"
        seen.setdefault(path, ChoraleEntry(number, path, str(row["title"])))
    return list(seen.values())


# ---------------------------------------------------------------------------------------------
# score → timing, lyrics, notes


def _tempo_map(score: Any, default_qpm: float) -> tuple[Callable[[float], float], float]:
    """``(quarter lengths → seconds, first tempo)`` from the score's metronome marks.

    music21 reports 120 qpm for a score without marks; we use ``default_qpm`` instead.
    """
    from music21 import tempo

    if not list(score.recurse().getElementsByClass(tempo.MetronomeMark)):
        return (lambda ql: ql * 60.0 / default_qpm), default_qpm
    knots_ql, knots_s, qpms = [0.0], [0.0], []
    for start, end, mark in score.metronomeMarkBoundaries():
        qpm = float(mark.getQuarterBPM() or default_qpm)
        qpms.append(qpm)
        knots_ql.append(float(end))
        knots_s.append(knots_s[-1] + (float(end) - float(start)) * 60.0 / qpm)
    last_qpm = qpms[-1]
    ql_arr, s_arr = np.array(knots_ql), np.array(knots_s)

    def seconds(ql: float) -> float:
        if ql <= ql_arr[-1]:
            return float(np.interp(ql, ql_arr, s_arr))
        return float(s_arr[-1] + (ql - ql_arr[-1]) * 60.0 / last_qpm)

    return seconds, qpms[0]


def _soprano_index(score: Any) -> int:
    """The part named Soprano (first one), else the first part with lyrics, else 0."""
    for i, part in enumerate(score.parts):
        if (part.partName or "").lower().startswith("soprano"):
            return i
    for i, part in enumerate(score.parts):
        if any(n.lyrics for n in part.recurse().notes):
            return i
    return 0


def _measure_origins(part: Any, originals: dict[int, Any]) -> list[tuple[Any, int]]:
    """``[(measure, id of the original measure)]`` of an expanded part (via derivations)."""
    from music21 import stream

    out = []
    for m in part.getElementsByClass(stream.Measure):
        o = m
        while o is not None and id(o) not in originals:
            o = o.derivation.origin
        out.append((m, id(o) if o is not None else id(m)))
    return out


def _soprano_events(
    part: Any, original_part: Any, to_seconds: Callable[[float], float]
) -> list[tuple[float, float, float, Any, bool, bool]]:
    """Soprano notes and rests in time order with the lyric to sing on each.

    Returns ``[(start_s, end_s, midi or nan for a rest, lyric or None, tied, fermata)]``; the
    lyric is chosen per pass through repeated measures (see the module docstring).
    """
    from music21 import expressions, stream

    originals = {id(m): m for m in original_part.getElementsByClass(stream.Measure)}
    placed = _measure_origins(part, originals)
    total = Counter(origin for _, origin in placed)
    # lyric line numbers used inside repeated passages, lowest first: line k is pass k
    repeated_lines = sorted(
        {
            ly.number
            for origin, m in originals.items()
            if total[origin] > 1
            for n in m.recurse().notes
            for ly in n.lyrics
        }
    )
    lines_in = {
        origin: {ly.number for n in m.recurse().notes for ly in n.lyrics}
        for origin, m in originals.items()
    }
    passes: Counter = Counter()
    events = []
    for m, origin in placed:
        passes[origin] += 1
        k = passes[origin]
        m_off = float(m.offset)
        for n in m.flatten().notesAndRests:
            start_ql = m_off + float(n.offset)
            end_ql = start_ql + float(n.quarterLength)
            if end_ql <= start_ql:  # grace notes
                continue
            start, end = to_seconds(start_ql), to_seconds(end_ql)
            if n.isRest:
                events.append((start, end, math.nan, None, False, False))
                continue
            pitch = float(n.pitches[-1].midi)  # the top note of a chord
            lyrics = sorted(n.lyrics, key=lambda ly: ly.number)
            lyric = None
            if lyrics:
                if total[origin] == 1:
                    lyric = lyrics[0]
                else:
                    target = repeated_lines[min(k, len(repeated_lines)) - 1]
                    match = [ly for ly in lyrics if ly.number == target]
                    if match:
                        lyric = match[0]
                    elif target not in lines_in[origin]:  # the passage repeats its words
                        lyric = lyrics[0]
            tied = n.tie is not None and n.tie.type in ("stop", "continue")
            fermata = any(isinstance(e, expressions.Fermata) for e in n.expressions)
            events.append((start, end, pitch, lyric, tied, fermata))
    return events


def _sung_line(events: Sequence[tuple]) -> tuple[list[synth.SungNote], list[Syllable]]:
    """Sung notes (one per articulated note; ties extend) and the syllables they carry."""
    notes: list[synth.SungNote] = []
    syllables: list[Syllable] = []
    vowel = "a"
    open_syllable = False  # whether the last sung note continues the current syllable
    for start, end, pitch, lyric, tied, fermata in events:
        if math.isnan(pitch):
            open_syllable = False
            continue
        if lyric is not None and (lyric.text or "").strip():
            text = _VERSE_NUMBER.sub("", lyric.text.strip()) or lyric.text.strip()
            vowel, onset = synth.syllable_phonetics(text)
            syllables.append(Syllable(text, lyric.syllabic or "single", start, end, fermata))
            notes.append(synth.SungNote(start, end, pitch, 0.9, text, vowel, onset))
            open_syllable = True
            continue
        if tied and notes and notes[-1].pitch == pitch and notes[-1].end >= start - 1e-6:
            last = notes[-1]
            notes[-1] = synth.SungNote(last.start, end, pitch, last.velocity, last.text,
                                       last.vowel, last.onset)  # fmt: skip
        else:  # melisma: a new note on the same vowel, no consonant
            notes.append(synth.SungNote(start, end, pitch, 0.85, "", vowel, ""))
        if open_syllable and syllables:
            s = syllables[-1]
            syllables[-1] = Syllable(s.text, s.syllabic, s.start, end, s.fermata or fermata)
    return notes, syllables


def join_words(syllables: Sequence[Syllable]) -> tuple[str, list[dict[str, Any]]]:
    """Join syllables into words by their ``syllabic``; returns ``(lyrics, words)``.

    ``lyrics`` keeps punctuation and breaks lines after fermatas (the chorale's phrase ends);
    each ``words`` entry is ``{"word", "start", "end"}`` with the word stripped of punctuation.
    A "single" while a word is open (a corpus slip, e.g. "Eh-" "ren") ends that word.
    """
    words: list[tuple[str, float, float, bool]] = []
    current: list[Syllable] = []

    def close() -> None:
        if current:
            text = "".join(s.text for s in current)
            words.append((text, current[0].start, current[-1].end, current[-1].fermata))
            current.clear()

    for s in syllables:
        syllabic = s.syllabic
        if syllabic == "single" and current:  # a "begin" promised more: repair to "end"
            syllabic = "end"
        if syllabic == "begin":
            close()
        current.append(s)
        if syllabic in ("end", "single"):
            close()
    close()
    lines: list[str] = []
    line: list[str] = []
    rows = []
    for text, start, end, fermata in words:
        line.append(text)
        if fermata:
            lines.append(" ".join(line))
            line = []
        clean = text.strip(_PUNCT)
        if clean:
            rows.append({"word": clean, "start": round(start, 4), "end": round(end, 4)})
    if line:
        lines.append(" ".join(line))
    return "\n".join(lines), rows


def load_chorale(entry: ChoraleEntry, ensemble: Ensemble, sing: bool, qpm: float) -> Chorale:
    """Parse a chorale, expand its repeats and build its MIDI and sung line."""
    import pretty_midi
    from music21 import corpus, key

    score = corpus.parse(entry.path)
    sop_i = _soprano_index(score)
    try:
        expanded, did_expand = score.expandRepeats(), True
    except Exception as err:  # music21 raises ExpanderException and others on odd repeats
        logger.debug("%s: repeats not expanded (%s)", entry.path, err)
        expanded, did_expand = score, False
    to_seconds, first_qpm = _tempo_map(expanded, qpm)
    events = _soprano_events(expanded.parts[sop_i], score.parts[sop_i], to_seconds)
    sung, syllables = _sung_line(events)
    if not sing:
        sung = []  # the soprano is played with the other parts instead

    pm = pretty_midi.PrettyMIDI(initial_tempo=first_qpm)
    tied = expanded.stripTies()
    for i, part in enumerate(tied.parts):
        if sing and i == sop_i:
            continue
        inst = pretty_midi.Instrument(program=ensemble.program, name=part.partName or f"part{i}")
        velocity = 90 if i == sop_i else 72
        flat = part.flatten()
        for n in flat.notes:
            start_ql = float(flat.elementOffset(n))
            end_ql = start_ql + float(n.quarterLength)
            if end_ql <= start_ql:
                continue
            start, end = to_seconds(start_ql), to_seconds(end_ql)
            for p in n.pitches:
                inst.notes.append(pretty_midi.Note(velocity, int(p.midi), start, end))
        if inst.notes:
            pm.instruments.append(inst)
    seconds = max(
        [to_seconds(float(expanded.highestTime))]
        + [n.end for n in sung]
        + [n.end for inst in pm.instruments for n in inst.notes]
    )
    keys = list(score.recurse().getElementsByClass(key.Key))
    key_name = f"{keys[0].tonic.name} {keys[0].mode}" if keys else None
    return Chorale(entry, pm, sung, syllables, seconds, first_qpm, key_name, did_expand)


# ---------------------------------------------------------------------------------------------
# rendering


@lru_cache(maxsize=1)
def fluidsynth_available() -> bool:
    """Whether pretty_midi can render through FluidSynth here (pyfluidsynth + libfluidsynth)."""
    try:
        import pretty_midi

        pm = pretty_midi.PrettyMIDI()
        inst = pretty_midi.Instrument(program=0)
        inst.notes.append(pretty_midi.Note(80, 60, 0.0, 0.1))
        pm.instruments.append(inst)
        return pm.fluidsynth(fs=8000).size > 0
    except Exception as err:  # ImportError, OSError from ctypes, ...
        logger.debug("fluidsynth unavailable: %s", err)
        return False


def resolve_renderer(renderer: str) -> str:
    """Map ``"auto"`` to ``"fluidsynth"`` when it works, else ``"additive"``."""
    if renderer not in RENDERERS:
        raise ValueError(f"renderer must be one of {RENDERERS}, got {renderer!r}")
    if renderer == "auto":
        return "fluidsynth" if fluidsynth_available() else "additive"
    if renderer == "fluidsynth" and not fluidsynth_available():
        raise RuntimeError(
            "renderer='fluidsynth' needs `pip install pyfluidsynth` and the libfluidsynth3 "
            "system library; use renderer='additive' or 'auto'"
        )
    return renderer


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[:n] if len(x) >= n else np.pad(x, (0, n - len(x)))


def render_chorale(
    chorale: Chorale, ensemble: Ensemble, sample_rate: int, renderer: str, peak: float = 0.9
) -> np.ndarray:
    """Audio float32[T] of a loaded chorale: the parts plus the sung soprano, peak ``peak``.

    ``T`` covers the score and one second of release tail.
    """
    n = int(math.ceil((chorale.seconds + 1.0) * sample_rate))
    parts = np.zeros(n)
    if chorale.pm.instruments:
        if renderer == "fluidsynth":
            parts = _fit(chorale.pm.fluidsynth(fs=sample_rate), n)
        elif renderer == "pretty_midi":
            wave = _harmonic_wave(ensemble.harmonics)
            parts = _fit(
                sum(
                    _fit(i.synthesize(fs=sample_rate, wave=wave), n) for i in chorale.pm.instruments
                ),
                n,
            )
        else:
            notes = [
                synth.Note(x.start, x.end, float(x.pitch), x.velocity / 127.0)
                for inst in chorale.pm.instruments
                for x in inst.notes
            ]
            parts = synth.render_instrument(ensemble.instrument, notes, n, sample_rate)
    if chorale.sung:
        seed = zlib.crc32(chorale.entry.path.encode())
        voice = synth.sing(chorale.sung, n, sample_rate, SOPRANO, seed=seed)
        voice_rms = math.sqrt(float(np.mean(voice**2))) + 1e-12
        parts_rms = math.sqrt(float(np.mean(parts**2)))
        if parts_rms > 0:
            parts = parts * (0.6 * voice_rms / parts_rms)
        x = voice + parts
    else:
        x = parts
    return synth.mix({"all": x}, sample_rate, peak)


# ---------------------------------------------------------------------------------------------
# writing the dataset


def write_chorales(
    out_dir: str | os.PathLike,
    sample_rate: int = 22050,
    limit: int | None = None,
    progress: bool = True,
    *,
    renderer: str = "auto",
    sing: bool = True,
    qpm: float = 100.0,
    require_lyrics: bool = True,
) -> ChoraleSummary:
    """Render the Bach chorales to ``out_dir/audio/*.wav`` + ``midi/*.mid`` + ``metadata.jsonl``.

    Args:
        out_dir: dataset folder (created; earlier ``bwv*`` files not written now are removed).
        sample_rate: of the wav files.
        limit: stop after this many chorales written (for tests); ``None`` for all.
        progress: show a rich progress bar.
        renderer: one of :data:`RENDERERS` (see the module docstring).
        sing: sing the soprano's lyrics with the formant voice instead of playing it.
        qpm: tempo (quarter notes per minute) for scores without metronome marks.
        require_lyrics: leave out chorales whose soprano has no lyrics.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    if qpm <= 0:
        raise ValueError(f"qpm must be positive, got {qpm}")
    renderer = resolve_renderer(renderer)
    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    (out / "midi").mkdir(parents=True, exist_ok=True)
    entries = chorale_entries()
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    skipped = no_lyrics = 0
    total = len(entries) if limit is None else min(limit, len(entries))
    with synth.progress_bar(progress) as bar:
        task = bar.add_task("chorales", total=total)
        for i, entry in enumerate(entries):
            if limit is not None and len(rows) >= limit:
                break
            ensemble = ENSEMBLES[i % len(ENSEMBLES)]
            try:
                chorale = load_chorale(entry, ensemble, sing, qpm)
                if require_lyrics and not chorale.syllables:
                    no_lyrics += 1
                    continue
                audio = render_chorale(chorale, ensemble, sample_rate, renderer)
            except Exception as err:  # a bad score must not end a 5-minute run
                logger.warning("skipping %s (%s): %s", entry.path, entry.title, err)
                skipped += 1
                continue
            rows.append(_write_one(out, chorale, ensemble, audio, sample_rate, renderer, sing))
            bar.advance(task)
    written = {r["file"] for r in rows} | {r["midi"] for r in rows}
    for sub, pattern in (("audio", "bwv*.wav"), ("midi", "bwv*.mid")):
        for stale in (out / sub).glob(pattern):
            if f"{sub}/{stale.name}" not in written:
                stale.unlink()
    synth.write_jsonl(out / "metadata.jsonl", rows)
    wall = time.perf_counter() - t0
    summary = ChoraleSummary(
        out_dir=str(out),
        metadata=str(out / "metadata.jsonl"),
        n_written=len(rows),
        n_skipped=skipped,
        n_without_lyrics=no_lyrics,
        audio_seconds=float(sum(r["seconds"] for r in rows)),
        wall_seconds=wall,
        renderer=renderer,
        artists=tuple(sorted({r["artist"] for r in rows})),
    )
    logger.info(
        "wrote %d chorales (%.1f min of audio, %s) to %s in %.1f s; %d skipped, %d without lyrics",
        summary.n_written,
        summary.audio_seconds / 60,
        renderer,
        out,
        wall,
        skipped,
        no_lyrics,
    )
    return summary


def _write_one(
    out: Path,
    chorale: Chorale,
    ensemble: Ensemble,
    audio: np.ndarray,
    sample_rate: int,
    renderer: str,
    sing: bool,
) -> dict[str, Any]:
    entry = chorale.entry
    file, midi = f"audio/{entry.name}.wav", f"midi/{entry.name}.mid"
    sf.write(out / file, audio, sample_rate, subtype="PCM_16")
    chorale.pm.write(str(out / midi))
    lyrics, words = join_words(chorale.syllables)
    bwv = re.sub(r"^bwv", "", entry.name)
    return {
        "file": file,
        "artist": ensemble.artist,
        "genre": GENRE,
        "lyrics": lyrics,
        "words": words,
        "title": entry.title,
        "composer": COMPOSER,
        "bwv": bwv,
        "riemenschneider": entry.number,
        "source": f"music21:{entry.path}",
        "language": "de",
        "key": chorale.key,
        "tempo": chorale.qpm,
        "seconds": round(len(audio) / sample_rate, 4),
        "sample_rate": sample_rate,
        "renderer": renderer,
        "sung": sing,
        "repeats_expanded": chorale.expanded,
        "midi": midi,
    }


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m teacher.data.chorales OUT_DIR [--limit N] [--sample-rate SR] [--renderer R]``."""
    import argparse
    import json
    from dataclasses import asdict

    p = argparse.ArgumentParser(description="Render music21's Bach chorales with lyrics.")
    p.add_argument("out_dir")
    p.add_argument("--sample-rate", type=int, default=22050)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--renderer", choices=RENDERERS, default="auto")
    p.add_argument("--no-sing", action="store_true", help="play the soprano instead of singing")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = write_chorales(
        args.out_dir, args.sample_rate, args.limit, renderer=args.renderer, sing=not args.no_sing
    )
    logger.info("%s", json.dumps(asdict(summary)))


if __name__ == "__main__":
    main()
